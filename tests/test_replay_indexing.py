"""GATHER, INDEX_ADD and the FMA MATMUL: both backends against direct loops over the
definitions of docs/protocol.md §3.3/§3.7 (every index class: valid, -0, negative, fractional,
NaN, ±inf, past the last row)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.ir import Opcode, OpDescriptor, Operand, Program, Slot, index_value, validate_program
from replay.execute import semantics
from replay.execute.numpy_backend import NumpyExecutor
from replay.execute.torch_backend import TorchExecutor

V, D, P = 7, 5, 23
SPECIAL_INDICES = [0.0, -0.0, 1.0, 6.0, 7.0, 8.0, -1.0, 2.5, np.nan, np.inf, -np.inf, 3.0, 1e30]


def _indices(rng: np.random.Generator, n: int) -> np.ndarray:
    picks = rng.integers(0, V, n).astype(np.float32)
    special = rng.random(n) < 0.4
    picks[special] = rng.choice(np.array(SPECIAL_INDICES, np.float32), int(special.sum()))
    return picks


def _run(program: Program, state: dict[str, np.ndarray], backend: str, **kw) -> np.ndarray:
    ex = NumpyExecutor(program) if backend == "numpy" else TorchExecutor(program, **kw)
    ex.set_state(state)
    with np.errstate(all="ignore"):
        ex.run_step(None)
    return ex.get_state()["out"]


BACKENDS = [
    ("numpy", {}),
    ("torch", {"sum_strategy": "embedding_bag"}),
    ("torch", {"sum_strategy": "loop"}),
]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize(("backend", "kw"), BACKENDS)
@pytest.mark.parametrize("seed", range(5))
def test_gather_is_a_row_lookup_with_zero_for_no_row(backend, kw, seed) -> None:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, D)).astype(np.float32)
    table[2, 1] = np.float32(np.nan)
    idx = _indices(rng, P)
    slots = (
        Slot(name="table", shape=(V, D), kind="persistent"),
        Slot(name="idx", shape=(P,), kind="persistent"),
        Slot(name="out", shape=(P, D), kind="persistent"),
    )
    op = OpDescriptor(
        opcode=Opcode.GATHER, out=2, shape=(P, D), reduce_len=V,
        operands=(
            Operand(slot=1, strides=(1, 0)),
            Operand(slot=0, strides=(0, 1), reduce_stride=D),
        ),
    )  # fmt: skip
    program = Program(slots=slots, ops=(op,))
    validate_program(program)
    got = _run(
        program, {"table": table, "idx": idx, "out": np.zeros((P, D), np.float32)}, backend, **kw
    )
    want = np.zeros((P, D), np.float32)
    for p in range(P):
        row = index_value(float(idx[p]))
        if row is not None and row < V:
            want[p] = semantics.canon(table[row])
    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize(("backend", "kw"), BACKENDS)
@pytest.mark.parametrize("seed", range(5))
def test_index_add_sums_matching_positions_in_order(backend, kw, seed) -> None:
    rng = np.random.default_rng(100 + seed)
    grad = (rng.standard_normal((P, D)) * 10.0 ** rng.integers(-8, 8, (P, D))).astype(np.float32)
    idx = _indices(rng, P)
    slots = (
        Slot(name="idx", shape=(P,), kind="persistent"),
        Slot(name="grad", shape=(P, D), kind="persistent"),
        Slot(name="out", shape=(V, D), kind="persistent"),
    )
    op = OpDescriptor(
        opcode=Opcode.INDEX_ADD, out=2, shape=(V, D), reduce_len=P,
        operands=(
            Operand(slot=0, strides=(0, 0), reduce_stride=1),
            Operand(slot=1, strides=(0, 1), reduce_stride=D),
        ),
    )  # fmt: skip
    program = Program(slots=slots, ops=(op,))
    validate_program(program)
    got = _run(
        program, {"idx": idx, "grad": grad, "out": np.zeros((V, D), np.float32)}, backend, **kw
    )
    want = np.zeros((V, D), np.float32)
    for v in range(V):
        for d in range(D):
            acc = np.float32(0.0)
            for p in range(P):
                if index_value(float(idx[p])) == v:
                    acc = np.float32(acc + grad[p, d])
            want[v, d] = acc
    assert np.array_equal(_bits(got), _bits(semantics.canon(want)))


@pytest.mark.parametrize(("backend", "kw"), BACKENDS)
def test_matmul_is_the_sequential_fma_chain(backend, kw) -> None:
    rng = np.random.default_rng(7)
    m, k, n = 6, 33, 4
    a = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 3, (m, k))).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    slots = (
        Slot(name="a", shape=(m, k), kind="persistent"),
        Slot(name="b", shape=(k, n), kind="persistent"),
        Slot(name="out", shape=(m, n), kind="persistent"),
    )
    op = OpDescriptor(
        opcode=Opcode.MATMUL, out=2, shape=(m, n), reduce_len=k,
        operands=(
            Operand(slot=0, strides=(k, 0), reduce_stride=1),
            Operand(slot=1, strides=(0, 1), reduce_stride=n),
        ),
    )  # fmt: skip
    program = Program(slots=slots, ops=(op,))
    got = _run(program, {"a": a, "b": b, "out": np.zeros((m, n), np.float32)}, backend, **kw)
    want = np.zeros((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            acc = np.zeros(1, np.float32)
            for r in range(k):
                acc = semantics.fma(a[i, r : r + 1], b[r, j : j + 1], acc)
            want[i, j] = acc[0]
    assert np.array_equal(_bits(got), _bits(want))
    # and it is not the two-rounding chain: at least one element differs from mul-then-add
    two = np.zeros((m, n), np.float32)
    for r in range(k):
        two = (two + (a[:, r : r + 1] * b[r : r + 1, :]).astype(np.float32)).astype(np.float32)
    assert not np.array_equal(_bits(two), _bits(want))
