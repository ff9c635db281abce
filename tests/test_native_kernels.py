"""The native FMA-chain GEMM (replay/execute/_kernels.c) against the numpy reference.

Every tile shape and edge, several k-blocks (R > 256) and column blocks (N > 2048), R = 0,
strided (transposed) operand maps and batches: each output element is one accumulator in r
order, so every thread count and ISA path gives the same bits. ISA paths are forced per
process (TRAINPROOF_ISA, read once), so they are compared in subprocesses here and on whole
training steps in tests/test_replay_training.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.execute import semantics as sem
from replay.execute.native import native_gemm, native_isa, native_matmul

pytestmark = pytest.mark.skipif(native_isa() is None, reason="replay.execute._kernels is not built")

SHAPES = [
    (1, 1, 1), (4, 3, 32), (37, 50, 45), (8, 0, 33), (5, 64, 16), (3, 7, 0), (0, 3, 4),
    (13, 600, 40), (7, 9, 2100), (100, 257, 33),
]  # fmt: skip


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    with np.errstate(all="ignore"):
        for r in range(a.shape[1]):
            acc = sem.fma(a[:, r : r + 1], b[r : r + 1, :], acc)
    return acc


def operands(m: int, r: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, r)) * 10.0 ** rng.integers(-20, 20, (m, r))).astype(np.float32)
    b = rng.standard_normal((r, n)).astype(np.float32)
    if a.size and b.size:  # a product whose fused and unfused chains differ
        a.flat[0], b.flat[0] = np.float32(1 + 2**-23), np.float32(1 + 2**-23)
    if a.size > 3:  # subnormals must survive (no FTZ/DAZ)
        a.flat[1], a.flat[2] = np.float32(1e-40), np.float32(-3e-39)
    return a, b


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32)


@pytest.mark.parametrize(("m", "r", "n"), SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_native_matmul_is_the_fma_chain(m: int, r: int, n: int, threads: int) -> None:
    a, b = operands(m, r, n, m * 1000 + r * 10 + n)
    out = np.full((m, n), np.nan, np.float32)
    native_matmul(a, b, out, m, n, r, threads)
    assert np.array_equal(bits(out), bits(reference(a, b)))


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40), r=st.integers(0, 300), n=st.integers(1, 70),
    batches=st.integers(1, 3), transpose_a=st.booleans(), transpose_b=st.booleans(),
    threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_gemm_reads_any_affine_map(
    m: int, r: int, n: int, batches: int, transpose_a: bool, transpose_b: bool,
    threads: int, seed: int,
) -> None:  # fmt: skip
    """Transposed operands, offsets into a larger buffer and per-batch offsets: read in place."""
    mats = [operands(m, r, n, seed + i) for i in range(batches)]
    pad = 5
    a_store = [np.ascontiguousarray(x.T if transpose_a else x) for x, _ in mats]
    b_store = [np.ascontiguousarray(y.T if transpose_b else y) for _, y in mats]
    a_flat = np.concatenate([np.zeros(pad, np.float32)] + [x.reshape(-1) for x in a_store])
    b_flat = np.concatenate([np.zeros(pad, np.float32)] + [y.reshape(-1) for y in b_store])
    a_map = (pad, 1, m) if transpose_a else (pad, r, 1)
    b_map = (pad, 1, r) if transpose_b else (pad, n, 1)
    offsets = np.array([(i * m * r, i * r * n, i * m * n) for i in range(batches)], np.int64)
    out = np.full(batches * m * n, np.nan, np.float32)
    native_gemm(a_flat, b_flat, out, (m, n, r), a_map, b_map, offsets, threads)
    want = np.concatenate([reference(x, y).reshape(-1) for x, y in mats])
    assert np.array_equal(bits(out), bits(want))


def test_gemm_checks_its_buffers() -> None:
    a, b = np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="reaches past its buffers"):
        native_matmul(a, b, np.zeros((2, 3), np.float32), 2, 4, 3)
    with pytest.raises(ValueError, match="reaches past its buffers"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (1, 3, 1), (0, 4, 1))
    with pytest.raises(ValueError, match="reaches past its buffers"):
        offsets = np.array([[0, 0, 0], [0, 0, 8]], np.int64)
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, 3, 1), (0, 4, 1), offsets)
    with pytest.raises(ValueError, match=">= 0"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, -3, 1), (0, 4, 1))
    with pytest.raises(TypeError, match="float32"):
        native_matmul(a.astype(np.float64), b, np.zeros((2, 4), np.float32), 2, 4, 3)
    with pytest.raises(TypeError, match="int64"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, 3, 1), (0, 4, 1),
                    np.zeros(3, np.int32))  # fmt: skip


_ISA_SCRIPT = """
import json, sys
import numpy as np
from replay.execute.native import native_isa, native_matmul
rng = np.random.default_rng(7)
a = rng.standard_normal((61, 700)).astype(np.float32)
b = rng.standard_normal((700, 75)).astype(np.float32)
a[0, :3] = [1e-40, -2e-39, 1 + 2**-23]
out = np.empty((61, 75), np.float32)
native_matmul(a, b, out, 61, 75, 700, int(sys.argv[1]))
import torch
from replay.execute.native import NATIVE_ELEMENT_CODES, native_element_op
torch.set_num_threads(int(sys.argv[1]))
x = torch.from_numpy(np.concatenate([a[0], a[1] * 1e30, np.round(a[2] * 200)]))
ops = {"SQRT": (x,), "MAX": (x, x.flip(0)), "MIN": (x, x.flip(0)), "LDEXP": (x, x.flip(0)),
       "FMA": (x, x.flip(0), x.roll(1))}
elems = [native_element_op(k, tuple(x.shape), None)(*ops[k]).numpy() for k in NATIVE_ELEMENT_CODES]
elem_bits = np.concatenate(elems).view(np.uint32)
elem_bits[np.isnan(np.concatenate(elems))] = 0x7FC00000
print(json.dumps({"isa": native_isa(), "bits": out.view(np.uint32).tolist() + elem_bits.tolist()}))
"""


def test_every_isa_path_gives_the_same_bits() -> None:
    """Each path this CPU has (a path it lacks falls back, and says so through isa())."""
    seen: dict[str, list[int]] = {}
    for isa in ("portable", "avx2", "avx512"):
        for threads in (1, 2):
            env = {**os.environ, "TRAINPROOF_ISA": isa}
            done = subprocess.run(
                [sys.executable, "-c", _ISA_SCRIPT, str(threads)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout)
            seen[f"{got['isa']}/{threads}"] = got["bits"]
    assert "portable/1" in seen
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), sorted(seen)


# ---------------------------------------------------------------- element ops, GATHER, REDUCE_SUM

SPECIAL = np.array(
    [0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -2.5, 3.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38,
     3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan, 299.0, 300.0, 301.0, -300.0,
     -301.0, 1e9, -1e9, 8388608.0, 8388607.5, 16777216.0, 0.1, -7.0, 128.0, -149.0, -150.0],
    np.float32,
)  # fmt: skip


def _values(rng: np.random.Generator, n: int) -> np.ndarray:
    picks = rng.integers(0, 3, n)
    out = np.where(
        picks == 0,
        SPECIAL[rng.integers(0, len(SPECIAL), n)],
        (rng.standard_normal(n) * 10.0 ** rng.integers(-40, 38, n)).astype(np.float32),
    ).astype(np.float32)
    return np.where(picks == 2, np.round(out), out).astype(np.float32)


ELEMENT_REFERENCE = {
    "SQRT": sem.sqrt, "MAX": sem.maximum, "MIN": sem.minimum, "LDEXP": sem.ldexp,
    "FMA": sem.fma,
}  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(ELEMENT_REFERENCE)),
    shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 64), (70000,)]),
    broadcast=st.lists(st.sampled_from(["full", "scalar", "row"]), min_size=3, max_size=3),
    threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_native_element_ops_match_the_reference(
    name: str, shape: tuple[int, ...], broadcast: list[str], threads: int, seed: int
) -> None:
    """Special values (±0, subnormals, ±inf, NaN, huge/fractional exponents), scalar and
    trailing-row broadcasts, both thread counts: bit-identical to replay/execute/semantics.py."""
    import torch

    from replay.execute.native import native_element_op

    rng = np.random.default_rng(seed)
    arity = {"SQRT": 1, "FMA": 3}.get(name, 2)
    ins = []
    for kind in broadcast[:arity]:
        sub = {"full": shape, "scalar": (), "row": shape[-1:]}[kind]
        ins.append(_values(rng, int(np.prod(sub))).reshape(sub))

    def fallback(*xs: object) -> object:
        raise AssertionError("the native kernel declined contiguous float32 operands")

    torch.set_num_threads(threads)
    try:
        got = native_element_op(name, shape, fallback)(*(torch.from_numpy(x) for x in ins))
    finally:
        torch.set_num_threads(1)
    full = [np.broadcast_to(x, shape).astype(np.float32) for x in ins]
    with np.errstate(all="ignore"):
        want = ELEMENT_REFERENCE[name](*full)
    assert np.array_equal(sem.canon(got.numpy()).view(np.uint32), want.view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 9), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 3]))
def test_native_gather_matches_the_reference(rows: int, seed: int, threads: int) -> None:
    """Indices that select no row (negative, fractional, ≥ R, NaN, inf) give +0.0; -0 is row 0;
    a strided, offset table map."""
    from replay.execute.native import native_gather

    rng = np.random.default_rng(seed)
    shape = (3, 4, 5)
    index = rng.choice(
        np.array([0, -0.0, 1, 2, 3.5, -1, 8, 9, 100, np.nan, np.inf, 4], np.float32), 12
    ).astype(np.float32)
    width = 5
    table = _values(rng, 2 + max(rows, 1) * width * 2)
    out = np.full(60, np.nan, np.float32)
    # out[i, j, k] = table[2 + idx[i, j]*2*width + 2*k]
    native_gather(
        out, index, table, shape, (0, (4, 1, 0)), (2, (0, 0, 2), 2 * width), rows, threads
    )
    idx = index.reshape(3, 4)
    want = np.zeros((3, 4, 5), np.float32)
    for i in range(3):
        for j in range(4):
            v = float(idx[i, j])
            if np.isfinite(v) and v >= 0 and v == int(v) and v < rows:
                want[i, j] = table[2 + int(v) * 2 * width + 2 * np.arange(5)]
    assert np.array_equal(
        sem.canon(out).view(np.uint32), sem.canon(want.reshape(-1)).view(np.uint32)
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40), inner=st.integers(1, 19), contiguous_terms=st.booleans(),
    fold=st.sampled_from(["sum", "max"]), threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_native_reductions_are_sequential_folds(
    rows: int, inner: int, contiguous_terms: bool, fold: str, threads: int, seed: int
) -> None:
    """REDUCE_SUM and REDUCE_MAX with terms along the contiguous axis or across outputs; the
    order matters for sums (values span 60 decades); -0, NaN and inf terms: each output is
    the fold from its initial value (+0 / -inf) in r order, with the reference's semantics."""
    from replay.execute.native import native_reduce_max, native_reduce_sum

    rng = np.random.default_rng(seed)
    outer = 3
    x = _values(rng, outer * inner * max(rows, 1) + 1)
    if contiguous_terms:  # out[a, b] = fold_r x[1 + a*inner*rows + b*rows + r]
        x_map = (1, (inner * max(rows, 1), max(rows, 1)), 1)
    else:  # out[a, b] = fold_r x[1 + a*inner*rows + r*inner + b]
        x_map = (1, (inner * max(rows, 1), 1), inner)
    out = np.full(outer * inner, np.nan, np.float32)
    kernel = native_reduce_sum if fold == "sum" else native_reduce_max
    kernel(out, x, (outer, inner), x_map, rows, threads)
    want = np.zeros(outer * inner, np.float32)
    with np.errstate(all="ignore"):
        for a in range(outer):
            for b in range(inner):
                acc = np.full(1, 0.0 if fold == "sum" else -np.inf, np.float32)
                for r in range(rows):
                    term = x[x_map[0] + a * x_map[1][0] + b * x_map[1][1] + r * x_map[2]]
                    term = np.full(1, term, np.float32)
                    acc = sem.add(acc, term) if fold == "sum" else sem.maximum(acc, term)
                want[a * inner + b] = acc[0]
    assert np.array_equal(sem.canon(out).view(np.uint32), sem.canon(want).view(np.uint32))
