"""torch and numpy backends agree bit for bit on random programs over every op.

Hypothesis generates programs: random input tensors mixing special values (±0, ±inf,
non-canonical NaNs, subnormals, extremes, small integers, random bit patterns), then a random
sequence of ops of every opcode with random in-range affine index maps (offsets, strides,
stride-0 broadcasts, reduction strides, R = 0), FILL with special immediates, LOAD_BATCH and
FREE. Both backends run it op by op (every op output compared) and as a whole step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.ir import (
    BATCH_X,
    BATCH_Y,
    ELEMENTWISE_OPS,
    INDEXED_OPS,
    RANGED_OPS,
    REDUCTION_OPS,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    Slot,
    arity,
    contiguous_strides,
    validate_program,
)
from replay.execute.numpy_backend import NumpyExecutor
from replay.execute.torch_backend import TorchExecutor

SPECIAL = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FC00001,
    0x7F800001, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00800000, 0x7F7FFFFF,
    0xFF7FFFFF, 0x3F800000, 0xBF800000, 0x3F000000, 0x3FC00000, 0x40200000, 0x4B000000,
    0x3F3504F3, 0x42B17218, 0xC2CFF1B5,
]  # fmt: skip
COMPUTE_OPS = sorted(ELEMENTWISE_OPS | RANGED_OPS | {Opcode.FILL})

element_bits = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(0, 2**32 - 1),
    st.integers(-140, 140).map(lambda i: int(np.float32(i).view(np.uint32))),
    st.floats(-4, 4, width=32).map(lambda x: int(np.float32(x).view(np.uint32))),
)
dims = st.one_of(st.integers(1, 5), st.sampled_from([0, 17, 33]))


def shapes(max_rank: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(dims, max_size=max_rank).map(tuple).filter(lambda s: int(np.prod(s)) <= 700)


def tensor(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    bits = draw(st.lists(element_bits, min_size=n, max_size=n))
    return np.array(bits, dtype=np.uint32).view(np.float32).reshape(shape)


def index_map(draw: st.DrawFn, sizes: list[int], numel: int) -> tuple[int, list[int]]:
    """Offset and one stride per size, every index < numel (numel ≥ 1)."""
    budget = numel - 1
    offset = draw(st.integers(0, budget))
    left = budget - offset
    strides = []
    for d in sizes:
        s = draw(st.integers(0, left // (d - 1))) if d > 1 else draw(st.integers(0, 3))
        if d > 1:
            left -= s * (d - 1)
        strides.append(s)
    return offset, strides


@st.composite
def programs(
    draw: st.DrawFn,
) -> tuple[Program, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    slots: list[Slot] = []
    state: dict[str, np.ndarray] = {}
    for i in range(draw(st.integers(1, 3))):
        shape = draw(shapes())
        if int(np.prod(shape)) == 0:
            shape = (3,)
        slots.append(Slot(name=f"in{i}", shape=shape, kind="persistent"))
        state[f"in{i}"] = tensor(draw, shape)
    full = list(range(len(slots)))
    ops: list[OpDescriptor] = []
    batch = (tensor(draw, (4, 5)), tensor(draw, (4,)))
    if draw(st.booleans()):
        for which, shape in ((BATCH_X, (4, 5)), (BATCH_Y, (4,))):
            slots.append(Slot(name=f"batch{which}", shape=shape, kind="ephemeral"))
            ops.append(
                OpDescriptor(opcode=Opcode.LOAD_BATCH, out=len(slots) - 1, shape=shape, imm=which)
            )
            full.append(len(slots) - 1)
    for j in range(draw(st.integers(1, 8))):
        code = draw(st.sampled_from(COMPUTE_OPS))
        shape = draw(shapes())
        reduce_len = draw(st.sampled_from([0, 1, 2, 3, 7, 40])) if code in RANGED_OPS else 0
        operands = []
        for k in range(arity(code)):
            src = draw(st.sampled_from(full))
            ranged = code in REDUCTION_OPS or (code in INDEXED_OPS and k == 1)
            sizes = list(shape) + ([reduce_len] if ranged else [])
            offset, strides = index_map(draw, sizes, int(np.prod(slots[src].shape)))
            operands.append(
                Operand(
                    slot=src,
                    offset=offset,
                    strides=tuple(strides[: len(shape)]),
                    reduce_stride=strides[-1] if ranged else 0,
                )
            )
        imm = (
            draw(
                st.sampled_from(SPECIAL).filter(
                    lambda b: b != 0x7FC00001 and b != 0xFFC00000 and b != 0x7F800001
                )
            )
            if code == Opcode.FILL
            else 0
        )
        kind = draw(st.sampled_from(["persistent", "ephemeral"]))
        slots.append(Slot(name=f"out{j}", shape=shape, kind=kind))  # type: ignore[arg-type]
        state_out = len(slots) - 1
        if kind == "persistent":
            state[f"out{j}"] = np.zeros(shape, dtype=np.float32)
        ops.append(
            OpDescriptor(
                opcode=code,
                out=state_out,
                shape=shape,
                operands=tuple(operands),
                reduce_len=reduce_len,
                imm=imm,
            )
        )
        if int(np.prod(shape)) > 0:  # an empty tensor cannot be read from
            full.append(state_out)
    for i, slot in enumerate(slots):
        if slot.kind == "ephemeral":
            ops.append(OpDescriptor(opcode=Opcode.FREE, out=i, shape=slot.shape))
    program = Program(slots=tuple(slots), ops=tuple(ops))
    validate_program(program)
    return program, state, batch


def same_bits(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check_agreement(program: Program, state: dict[str, np.ndarray], batch, **torch_kw) -> None:
    ref, tch = NumpyExecutor(program), TorchExecutor(program, **torch_kw)
    ref.set_state(state)
    tch.set_state(state)
    for j, op in enumerate(program.ops):
        with np.errstate(all="ignore"):
            ref.run_op(j, batch)
        tch.run_op(j, batch)
        a, b = ref.slot_array(op.out), tch.slot_array(op.out)
        assert same_bits(a, b), (j, op, a, b)
    ref.set_state(state)
    tch.set_state(state)
    ref.run_step(batch)
    tch.run_step(batch)
    got_ref, got_torch = ref.get_state(), tch.get_state()
    for name in got_ref:
        assert same_bits(got_ref[name], got_torch[name]), name


FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(programs())
def test_random_programs_agree_embedding_bag(case) -> None:
    check_agreement(*case, sum_strategy="embedding_bag")


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs())
def test_random_programs_agree_loop_and_blocked(case) -> None:
    check_agreement(*case, sum_strategy="loop")
    check_agreement(*case, sum_strategy="embedding_bag", max_table_bytes=64)


@pytest.mark.parametrize("opcode", sorted(ELEMENTWISE_OPS))
def test_every_elementwise_op_on_all_special_pairs(opcode: Opcode) -> None:
    """Dense check: every pair of special values, in vectors long enough to hit SIMD paths."""
    sp = np.array([*SPECIAL, 0x3F800001, 0x00000003, 0xC1200000], dtype=np.uint32)
    n = len(sp)
    k = arity(opcode)
    grids = np.meshgrid(*([sp] * k), indexing="ij")
    cols = [g.reshape(-1).view(np.float32) for g in grids]
    shape = (cols[0].size,)
    slots = [Slot(name=f"x{i}", shape=shape, kind="persistent") for i in range(k)]
    slots.append(Slot(name="y", shape=shape, kind="persistent"))
    op = OpDescriptor(
        opcode=opcode,
        out=k,
        shape=shape,
        operands=tuple(Operand(slot=i, strides=(1,)) for i in range(k)),
    )
    program = Program(slots=tuple(slots), ops=(op,))
    state = {f"x{i}": cols[i].copy() for i in range(k)} | {"y": np.zeros(shape, np.float32)}
    assert n**k == shape[0]
    check_agreement(program, state, None)


def test_sqrt_is_correctly_rounded_on_many_inputs() -> None:
    """torch's own float32 sqrt is not (about 20% of inputs 1 ulp off); the backend's is."""
    x = np.random.default_rng(0).integers(0, 0x7F800000, 200_000, dtype=np.uint32).view(np.float32)
    shape = x.shape
    program = Program(
        slots=(
            Slot(name="x", shape=shape, kind="persistent"),
            Slot(name="y", shape=shape, kind="persistent"),
        ),
        ops=(
            OpDescriptor(
                opcode=Opcode.SQRT, out=1, shape=shape, operands=(Operand(slot=0, strides=(1,)),)
            ),
        ),
    )
    check_agreement(program, {"x": x, "y": np.zeros_like(x)}, None)


@pytest.mark.parametrize(
    ("m", "k", "n", "table_bytes"),
    [(5, 7, 3, 4 << 20), (3, 7, 5, 4 << 20), (6, 40, 9, 256), (9, 40, 6, 256), (4, 300, 2, 64)],
)
def test_matrix_products_with_transposed_views_and_blocking(m, k, n, table_bytes) -> None:
    """MATMUL of transposed views, wide and tall outputs, blocked over rows and over r."""
    rng = np.random.default_rng(m * 100 + k)
    bits = rng.integers(0, 2**32, (k, m), dtype=np.uint64).astype(np.uint32)
    a_t = np.where(rng.random((k, m)) < 0.7, rng.standard_normal((k, m)), bits.view(np.float32))
    b = rng.standard_normal((k, n)).astype(np.float32)
    b[rng.random((k, n)) < 0.1] = np.float32(-0.0)
    slots = (
        Slot(name="at", shape=(k, m), kind="persistent"),
        Slot(name="b", shape=(k, n), kind="persistent"),
        Slot(name="c", shape=(m, n), kind="persistent"),
    )
    op = OpDescriptor(  # c = at.T @ b
        opcode=Opcode.MATMUL,
        out=2,
        shape=(m, n),
        operands=(
            Operand(slot=0, strides=(1, 0), reduce_stride=m),
            Operand(slot=1, strides=(0, 1), reduce_stride=n),
        ),
        reduce_len=k,
    )
    program = Program(slots=slots, ops=(op,))
    state = {"at": a_t.astype(np.float32), "b": b, "c": np.zeros((m, n), np.float32)}
    check_agreement(program, state, None, max_table_bytes=table_bytes)
    check_agreement(program, state, None, sum_strategy="loop", max_table_bytes=table_bytes)


CODE_PATH_SCRIPT = """
import sys
sys.path.insert(0, "tests")
import torch
import test_replay_backends as t
capability = torch.backends.cpu.get_cpu_capability()
assert capability == sys.argv[1].upper(), capability
for opcode in sorted(t.ELEMENTWISE_OPS):
    t.test_every_elementwise_op_on_all_special_pairs(opcode)
for case in [(5, 7, 3, 4 << 20), (9, 40, 6, 256)]:
    t.test_matrix_products_with_transposed_views_and_blocking(*case)
t.test_random_programs_agree_loop_and_blocked()
print("ok")
"""


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_agreement_on_other_cpu_code_paths(capability: str) -> None:
    """torch picks kernels by ATEN_CPU_CAPABILITY (e.g. how maximum treats NaN payloads)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run(
        [sys.executable, "-c", CODE_PATH_SCRIPT, capability],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@st.composite
def chain_programs(
    draw: st.DrawFn,
) -> tuple[Program, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Runs of element ops over one output size — what the torch backend fuses into native
    chains (replay/execute/fusion.py): operands made earlier in the run or read through any
    index map (broadcasts, strided views), FREEs in the middle of the run, slots written
    twice, persistent slots read and then overwritten, and ops of the same size but another
    shape (a reshape)."""
    from replay.execute.fusion import CHAIN_OPCODES

    shape = draw(st.sampled_from([(6,), (2, 3), (3, 1, 4), (1300,), (2, 700)]))
    n = int(np.prod(shape))
    other = {6: (3, 2), 12: (2, 6), 1300: (26, 50), 1400: (7, 200)}[n]
    slots: list[Slot] = []
    state: dict[str, np.ndarray] = {}
    for i in range(draw(st.integers(1, 3))):
        in_shape = draw(st.sampled_from([shape, shape[-1:], (1,), (n + 5,)]))
        slots.append(Slot(name=f"in{i}", shape=in_shape, kind="persistent"))
        state[f"in{i}"] = tensor(draw, in_shape)
    live = list(range(len(slots)))
    written: set[int] = set()
    freed: list[int] = []
    ops: list[OpDescriptor] = []
    codes = sorted(CHAIN_OPCODES)
    for j in range(draw(st.integers(2, 12))):
        code = draw(st.sampled_from(codes))
        op_shape = draw(st.sampled_from([shape, shape, shape, other]))
        operands = []
        for _ in range(arity(code)):
            src = draw(st.sampled_from(live))
            numel = int(np.prod(slots[src].shape))
            if slots[src].shape == op_shape and draw(st.booleans()):
                offset, strides = 0, list(contiguous_strides(op_shape))
            else:
                offset, strides = index_map(draw, list(op_shape), numel)
            operands.append(Operand(slot=src, offset=offset, strides=tuple(strides)))
        reuse = [i for i in freed if slots[i].shape == op_shape] + [
            i
            for i in live
            if slots[i].shape == op_shape and slots[i].name.startswith("in") and i not in written
        ]
        if reuse and draw(st.booleans()):
            out = draw(st.sampled_from(reuse))  # freed and written again / an input updated
            written.add(out)
            if out in freed:
                freed.remove(out)
        else:
            kind = draw(st.sampled_from(["persistent", "ephemeral", "ephemeral"]))
            slots.append(Slot(name=f"t{j}", shape=op_shape, kind=kind))  # type: ignore[arg-type]
            out = len(slots) - 1
            if kind == "persistent":
                state[f"t{j}"] = np.zeros(op_shape, dtype=np.float32)
                written.add(out)
        ops.append(OpDescriptor(opcode=code, out=out, shape=op_shape, operands=tuple(operands)))
        if out not in live:
            live.append(out)
        ephemeral = [i for i in live if slots[i].kind == "ephemeral" and i != out]
        if ephemeral and len(live) > 1 and draw(st.booleans()):
            gone = draw(st.sampled_from(ephemeral))
            ops.append(OpDescriptor(opcode=Opcode.FREE, out=gone, shape=slots[gone].shape))
            live.remove(gone)
            freed.append(gone)
    for i in live:
        if slots[i].kind == "ephemeral":
            ops.append(OpDescriptor(opcode=Opcode.FREE, out=i, shape=slots[i].shape))
    program = Program(slots=tuple(slots), ops=tuple(ops))
    validate_program(program)
    return program, state, (np.zeros((4, 5), np.float32), np.zeros(4, np.float32))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(chain_programs())
def test_fused_element_chains_agree_with_the_reference(case) -> None:
    check_agreement(*case)


def test_a_training_step_fuses_its_element_ops() -> None:
    """digits-mlp's step on the CPU runs most element ops inside chains (AdamW's update of a
    parameter is one), and keeps the reference's bits (the agreement tests above)."""
    from replay.compile.compiler import compile_train
    from replay.compile.examples import DIGITS_MLP
    from replay.execute.native import native_available

    if not native_available(__import__("torch").device("cpu")):
        pytest.skip("the native kernels are off or not built")
    program = compile_train(DIGITS_MLP.model)
    calls = TorchExecutor(program).step_calls
    fused = sum(int(label[6:-1]) for label, _ in calls if label.startswith("chain["))
    alone = sum(1 for label, _ in calls if label in {op.name for op in ELEMENTWISE_OPS})
    assert fused > 3 * alone, (fused, alone)
