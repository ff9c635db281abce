"""The one-step executor (contracts/Executor.vy) against the Python reference, under titanoboa.

- Decoding and index maps: ``opcode``/``out_slot``/``numel``/``reduce_len``/``operand_slot``/
  ``imm`` and ``operand_index`` equal protocol/ir.py's on random valid descriptors (every
  opcode, rank 0..4, dims and strides up to 2**32 - 1, offsets, reduce_len / reduce_stride).
- Semantics: on random descriptors of every op kind over random slot values rich in special
  values (±0, subnormals, ±inf, NaNs with random payloads and signs, ties, integral and
  fractional exponents), ``element`` equals the numpy backend (replay/execute/numpy_backend.py,
  whose element semantics are replay/execute/semantics.py) on every output element, with the
  operands the op does not read filled with junk; ``initial_acc`` and ``partial_step`` reproduce the
  reference partials ``acc_0 .. acc_R`` (``reduce_partials``) one step at a time.
- Special values exhaustively: every element op on the cross product of 17 special values,
  through a broadcasting descriptor; every reduction's partial step on all (acc, x) pairs.
- End to end: every element of every element op and every partial of every reduction of a
  compiled training step (a small GELU MLP with AdamW), read through replay.dispute.trace.StepTrace
  (``operand_reads``, ``partials``), exactly what an honest party submits in a dispute.
- Reverts: wrong op class, unknown opcode, wrong descriptor length, operand out of range.
"""

from __future__ import annotations

import struct

import boa
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol.ir import (
    CANONICAL_NAN_BITS,
    ELEMENTWISE_OPS,
    INDEXED_OPS,
    MAX_SLOT,
    NO_SLOT,
    RANGED_OPS,
    REDUCTION_OPS,
    U32_MAX,
    Opcode,
    OpDescriptor,
    Operand,
    arity,
    decode_descriptor,
    encode_descriptor,
    index_value,
    is_nan_bits,
    operand_index,
)
from replay.compile.compiler import compile_train, initial_state
from replay.compile.spec import GELU, AdamW, Linear, MLPSpec
from replay.dispute.trace import StepTrace
from replay.execute import semantics
from replay.execute.numpy_backend import execute_op, reduce_partials

CONTRACT = "contracts/Executor.vy"

SIGN = 0x80000000
POS_INF, NEG_INF = 0x7F800000, 0xFF800000
MIN_SUB, MAX_SUB, MIN_NORMAL, MAX_FINITE = 0x1, 0x7FFFFF, 0x800000, 0x7F7FFFFF

# No shrinking: a failure message already names the descriptor, the element and its inputs.
PROPERTY = settings(
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ELEMENT_OPS = [*sorted(ELEMENTWISE_OPS), Opcode.FILL, Opcode.GATHER]
REDUCE_OPS = sorted(REDUCTION_OPS)
u32 = st.integers(0, U32_MAX)


def fbits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def as_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)


def as_f32(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


SPECIALS = [
    0,
    SIGN,  # -0
    MIN_SUB,
    MAX_SUB | SIGN,
    MIN_NORMAL,
    fbits(1.0),
    fbits(-1.5),
    fbits(2.5),  # a tie for ROUND, fractional for LDEXP
    fbits(3.0),
    fbits(-150.0),  # LDEXP to below the smallest subnormal
    fbits(128.0),
    MAX_FINITE,
    MAX_FINITE | SIGN,
    POS_INF,
    NEG_INF,
    0xFFC00001,  # negative quiet NaN with a payload
    0x7F800001,  # signalling NaN
]


@pytest.fixture(scope="module")
def ex():
    return boa.load(CONTRACT)


# --------------------------------------------------------------------------- values


def random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float32 bit patterns, a mix of every special class and random values."""
    kind = rng.integers(0, 8, n)
    sign = rng.integers(0, 2, n, dtype=np.uint64) << 31
    frac = rng.integers(0, 1 << 23, n, dtype=np.uint64)
    out = rng.integers(0, 1 << 32, n, dtype=np.uint64)  # kind 0: any bit pattern
    special = np.array(SPECIALS, dtype=np.uint64)[rng.integers(0, len(SPECIALS), n)]
    near_one = (rng.integers(125, 130, n, dtype=np.uint64) << 23) | frac | sign
    subnormal = frac | sign
    nan = (0xFF << 23) | np.maximum(frac, 1) | sign
    ints = rng.integers(-160, 161, n).astype(np.float32)
    ints = ints + np.where(rng.integers(0, 4, n) == 0, np.float32(0.5), np.float32(0))
    integral = ints.view(np.uint32).astype(np.uint64)
    huge = (rng.integers(250, 255, n, dtype=np.uint64) << 23) | frac | sign
    zero = sign
    for k, values in enumerate([special, near_one, subnormal, nan, integral, huge, zero], 1):
        out = np.where(kind == k, values, out)
    return out.astype(np.uint32)


# --------------------------------------------------------------------------- descriptors


def _dims(draw: st.DrawFn, rank: int, allow_zero: bool) -> tuple[int, ...]:
    lo = 0 if allow_zero else 1
    dims: list[int] = []
    budget = U32_MAX
    for _ in range(rank):
        d = draw(st.one_of(st.integers(lo, min(8, budget)), st.integers(lo, budget)))
        dims.append(d)
        budget = budget // max(d, 1)
    return tuple(dims)


@st.composite
def descriptors(draw: st.DrawFn, allow_zero: bool = True) -> OpDescriptor:
    """Any valid descriptor: every opcode, rank 0..4, fields anywhere in their uint32 range."""
    opcode = draw(st.sampled_from(list(Opcode)))
    rank = draw(st.integers(0, 4))
    shape = _dims(draw, rank, allow_zero)
    reduction = opcode in REDUCTION_OPS
    small = st.integers(0, 16)
    operands = tuple(
        Operand(
            slot=draw(st.integers(0, MAX_SLOT)),
            offset=draw(st.one_of(small, u32)),
            strides=tuple(draw(st.one_of(small, u32)) for _ in range(rank)),
            reduce_stride=draw(st.one_of(small, u32))
            if reduction or (opcode in INDEXED_OPS and k == 1)
            else 0,
        )
        for k in range(arity(opcode))
    )
    imm = 0
    if opcode == Opcode.FILL:
        imm = draw(st.one_of(u32, st.sampled_from(SPECIALS)))
        imm = CANONICAL_NAN_BITS if is_nan_bits(imm) else imm
    elif opcode == Opcode.LOAD_BATCH:
        imm = draw(st.integers(0, 1))
    return OpDescriptor(
        opcode=opcode,
        out=draw(st.integers(0, MAX_SLOT)),
        shape=shape,
        operands=operands,
        reduce_len=draw(st.one_of(small, u32)) if opcode in RANGED_OPS else 0,
        imm=imm,
    )


@settings(PROPERTY, max_examples=300)
@given(op=descriptors(), data=st.data())
def test_decoding_and_operand_index_match_protocol_ir(ex, op: OpDescriptor, data) -> None:
    d = encode_descriptor(op)
    assert decode_descriptor(d) == op
    assert ex.opcode(d) == int(op.opcode)
    assert ex.out_slot(d) == op.out
    assert ex.numel(d) == op.numel
    assert ex.reduce_len(d) == op.reduce_len
    assert ex.imm(d) == op.imm
    for a in range(3):
        want = op.operands[a].slot if a < len(op.operands) else NO_SLOT
        assert ex.operand_slot(d, a) == want, a
    if op.numel == 0:
        return
    flats = {0, op.numel - 1, data.draw(st.integers(0, op.numel - 1), label="flat")}
    for a in range(len(op.operands)):
        for f in sorted(flats):
            r = 0
            if op.reduce_len:
                r = data.draw(st.sampled_from([0, op.reduce_len - 1, op.reduce_len // 2]))
            assert ex.operand_index(d, a, f, r) == operand_index(op, a, f, r), (a, f, r)


# --------------------------------------------------------------------------- random ops


#: ops that read a float32 index from operand 0 (small_ops keeps it in slot 0)
INDEX_READERS = frozenset({Opcode.GATHER, Opcode.INDEX_ADD})


def _operand_slot(draw: st.DrawFn, opcode: Opcode, k: int) -> int:
    if opcode in INDEX_READERS:
        return 0 if k == 0 else draw(st.integers(1, 2))
    return draw(st.integers(0, 2))


@st.composite
def small_ops(draw: st.DrawFn, opcode: Opcode) -> tuple[OpDescriptor, list[np.ndarray]]:
    """A small op of ``opcode`` over slots 0..2 (output slot 3) and slot values covering it."""
    rank = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    reduction = opcode in REDUCTION_OPS
    reduce_len = draw(st.integers(0, 6)) if opcode in RANGED_OPS else 0
    operands = []
    for k in range(arity(opcode)):
        ranged = reduction or (opcode in INDEXED_OPS and k == 1)
        operands.append(
            Operand(
                slot=_operand_slot(draw, opcode, k),
                offset=draw(st.integers(0, 5)),
                strides=tuple(draw(st.integers(0, 4)) for _ in range(rank)),
                reduce_stride=draw(st.integers(0, 4)) if ranged else 0,
            )
        )
    imm = 0
    if opcode == Opcode.FILL:
        imm = draw(st.one_of(u32, st.sampled_from(SPECIALS)))
        imm = CANONICAL_NAN_BITS if is_nan_bits(imm) else imm
    op = OpDescriptor(
        opcode=opcode,
        out=3,
        shape=shape,
        operands=tuple(operands),
        reduce_len=reduce_len,
        imm=imm,
    )
    sizes = [1, 1, 1]
    for o in operands:
        top = o.offset + sum((d - 1) * s for d, s in zip(shape, o.strides, strict=True))
        top += max(reduce_len - 1, 0) * o.reduce_stride
        sizes[o.slot] = max(sizes[o.slot], top + 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**64 - 1), label="seed"))
    slots = [as_f32(random_bits(rng, n)) for n in sizes]
    if opcode in INDEX_READERS:  # mostly rows that exist, some that don't, every special
        picks = np.array([*range(-1, 8), 2.5, -0.0], dtype=np.float32).view(np.uint32)
        keep = rng.random(sizes[0]) < 0.7
        slots[0] = as_f32(np.where(keep, rng.choice(picks, sizes[0]), slots[0].view(np.uint32)))
    return op, slots


def operand_bits(op: OpDescriptor, slots: list[np.ndarray], f: int, r: int, junk) -> list[int]:
    """The values operands 0..2 read for element ``f`` / term ``r``; junk where unused
    (GATHER: the table at the row the index selects, junk when it selects none)."""
    vals = [int(j) for j in junk]
    for a, o in enumerate(op.operands):
        if a == 1 and op.opcode == Opcode.GATHER:
            row = index_value(float(as_f32(np.array([vals[0]]))[0]))
            if row is None or row >= op.reduce_len:
                break
            r = row
        vals[a] = int(as_bits(slots[o.slot])[operand_index(op, a, f, r)])
    return vals


@pytest.mark.parametrize("opcode", ELEMENT_OPS, ids=lambda o: o.name)
@settings(PROPERTY, max_examples=25)
@given(data=st.data())
def test_element_equals_numpy_backend(ex, opcode: Opcode, data) -> None:
    op, slots = data.draw(small_ops(opcode), label="op")
    d = op.encode()
    with np.errstate(all="ignore"):
        out = as_bits(execute_op(op, [*slots, None], None))
    junk = np.random.default_rng(op.numel).integers(0, 1 << 32, 3 * op.numel)
    for f in range(op.numel):
        x, y, c = operand_bits(op, slots, f, 0, junk[3 * f : 3 * f + 3])
        got = ex.element(d, x, y, c)
        assert got == out[f], (
            f"{opcode.name} element {f}: inputs 0x{x:08x} 0x{y:08x} 0x{c:08x}: "
            f"executor 0x{got:08x}, reference 0x{int(out[f]):08x}"
        )


@pytest.mark.parametrize("opcode", REDUCE_OPS, ids=lambda o: o.name)
@settings(PROPERTY, max_examples=30)
@given(data=st.data())
def test_partial_steps_equal_numpy_backend(ex, opcode: Opcode, data) -> None:
    op, slots = data.draw(small_ops(opcode), label="op")
    d = op.encode()
    state = [*slots, None]
    with np.errstate(all="ignore"):
        out = as_bits(execute_op(op, state, None))
    acc0 = ex.initial_acc(d)
    junk = np.random.default_rng(op.numel).integers(0, 1 << 32, 3 * max(op.reduce_len, 1))
    for f in range(op.numel):
        with np.errstate(all="ignore"):
            partials = [int(as_bits(p)[0]) for p in reduce_partials(op, state, f)]
        assert len(partials) == op.reduce_len + 1
        assert acc0 == partials[0]
        for r in range(op.reduce_len):
            x, y, _ = operand_bits(op, slots, f, r, junk[3 * r : 3 * r + 3])
            got = ex.partial_step(d, f, partials[r], x, y)
            assert got == partials[r + 1], (
                f"{opcode.name} element {f} term {r}: acc 0x{partials[r]:08x}, "
                f"x 0x{x:08x}, y 0x{y:08x}: executor 0x{got:08x}, "
                f"reference 0x{partials[r + 1]:08x}"
            )
        assert partials[-1] == out[f]


# --------------------------------------------------------------------------- special values


def _cross_op(opcode: Opcode) -> OpDescriptor:
    """Output [S, S] (binary, SELECT) or [S, 1]: x reads slot 0 along rows, y slot 0 along
    columns, c slot 1 (the specials reversed) along columns."""
    s = len(SPECIALS)
    operands = [Operand(slot=0, strides=(1, 0)), Operand(slot=0, strides=(0, 1))]
    operands += [Operand(slot=1, strides=(0, 1))]
    return OpDescriptor(
        opcode=opcode,
        out=3,
        shape=(s, s if arity(opcode) >= 2 else 1),
        operands=tuple(operands[: arity(opcode)]),
        imm=fbits(-2.5) if opcode == Opcode.FILL else 0,
    )


@pytest.mark.parametrize("opcode", ELEMENT_OPS, ids=lambda o: o.name)
def test_element_on_all_special_pairs(ex, opcode: Opcode) -> None:
    op = _cross_op(opcode)
    slots = [as_f32(np.array(SPECIALS)), as_f32(np.array(SPECIALS[::-1]))]
    with np.errstate(all="ignore"):
        out = as_bits(execute_op(op, [*slots, None, None], None))
    d = op.encode()
    for f in range(op.numel):
        x, y, c = operand_bits(op, slots, f, 0, [0x12345678, 0x7F800001, 0xFFFFFFFF])
        assert ex.element(d, x, y, c) == out[f], (opcode.name, hex(x), hex(y), hex(c))


@pytest.mark.parametrize("opcode", REDUCE_OPS, ids=lambda o: o.name)
def test_partial_step_on_all_special_pairs(ex, opcode: Opcode) -> None:
    op = OpDescriptor(
        opcode=opcode,
        out=1,
        shape=(),
        operands=tuple(Operand(slot=0) for _ in range(arity(opcode))),
        reduce_len=1,
    )
    d = op.encode()
    s = len(SPECIALS)
    for i, acc in enumerate(SPECIALS):
        for j, x in enumerate(SPECIALS):
            y = SPECIALS[(i + j) % s]
            terms = [as_f32(np.array([x])), as_f32(np.array([y]))][: arity(opcode)]
            with np.errstate(all="ignore"):
                step = semantics.reduce_step(opcode, as_f32(np.array([acc])), terms, np.zeros(1))
            want = int(as_bits(step)[0])
            got = ex.partial_step(d, 0, acc, x, y)
            assert got == want, (opcode.name, hex(acc), hex(x), hex(y))


def test_initial_acc(ex) -> None:
    for opcode in REDUCE_OPS:
        op = OpDescriptor(
            opcode=opcode,
            out=1,
            shape=(2,),
            operands=tuple(Operand(slot=0, strides=(1,)) for _ in range(arity(opcode))),
        )
        want = int(np.float32(semantics.REDUCE_INIT[opcode]).view(np.uint32))
        assert want == (NEG_INF if opcode == Opcode.REDUCE_MAX else 0)
        assert ex.initial_acc(op.encode()) == want


def test_matmul_rounds_once(ex) -> None:
    """fma(x, y, acc): x = y = 1 + 2**-23, x*y = 1 + 2**-22 + 2**-46 exactly, so with
    acc = -(1 + 2**-22) the fused result is 2**-46 (two roundings would give +0.0)."""
    x = fbits(1.0 + 2.0**-23)
    acc = fbits(-(1.0 + 2.0**-22))
    op = OpDescriptor(
        opcode=Opcode.MATMUL,
        out=1,
        shape=(),
        operands=(Operand(slot=0), Operand(slot=0)),
        reduce_len=1,
    )
    assert ex.partial_step(op.encode(), 0, acc, x, x) == fbits(2.0**-46)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_step():
    spec = MLPSpec(
        input_dim=3,
        num_classes=2,
        layers=(Linear(out_features=3), GELU(), Linear(out_features=2)),
        optimizer=AdamW(lr=1e-2),
        batch_size=2,
        init_seed=7,
    )
    program = compile_train(spec)
    start = initial_state(spec, program)
    rng = np.random.default_rng(1)
    batch = (rng.normal(size=(2, 3)).astype(np.float32), np.array([0, 1], dtype=np.float32))
    return program, StepTrace(program, start, batch)


def test_every_element_and_partial_of_a_compiled_step(ex, tiny_step) -> None:
    program, trace = tiny_step
    seen: set[Opcode] = set()
    for j, op in enumerate(program.ops):
        d = op.encode()
        if op.opcode in (Opcode.LOAD_BATCH, Opcode.FREE):
            continue
        seen.add(op.opcode)
        if op.opcode in REDUCTION_OPS:
            acc0 = ex.initial_acc(d)
            for f in range(op.numel):
                partials = [int(v) for v in trace.partials(j, f).view(np.uint32)]
                assert acc0 == partials[0]
                for r in range(op.reduce_len):
                    reads = trace.operand_reads(j, f, r)
                    x = int(reads[0].value.view(np.uint32))
                    y = int(reads[1].value.view(np.uint32)) if len(reads) > 1 else 0
                    assert ex.partial_step(d, f, partials[r], x, y) == partials[r + 1], (j, f, r)
            continue
        out = as_bits(trace.slot_value(j + 1, op.out))
        for f in range(op.numel):
            vals = [int(rd.value.view(np.uint32)) for rd in trace.operand_reads(j, f)]
            vals += [0] * (3 - len(vals))
            assert ex.element(d, *vals) == out[f], (j, op.opcode.name, f)
    assert {Opcode.MATMUL, Opcode.REDUCE_SUM, Opcode.REDUCE_MAX, Opcode.SELECT} <= seen
    assert {Opcode.LDEXP, Opcode.FREXP_MANT, Opcode.SQRT, Opcode.FILL} <= seen


# --------------------------------------------------------------------------- reverts


def _op(opcode: Opcode) -> bytes:
    imm = 1 if opcode == Opcode.LOAD_BATCH else 0
    n = arity(opcode)
    reduce = opcode in RANGED_OPS
    return OpDescriptor(
        opcode=opcode,
        out=0,
        shape=(2,),
        operands=tuple(
            Operand(slot=1, strides=(1,), reduce_stride=int(reduce and (k == 1 or n == 1)))
            for k in range(n)
        ),
        reduce_len=3 if reduce else 0,
        imm=imm,
    ).encode()


@pytest.mark.parametrize("opcode", sorted(REDUCTION_OPS | {Opcode.LOAD_BATCH, Opcode.FREE}))
def test_element_reverts_for_non_element_ops(ex, opcode: Opcode) -> None:
    with boa.reverts("executor: not an element op"):
        ex.element(_op(opcode), 1, 2, 3)


@pytest.mark.parametrize("opcode", sorted(set(Opcode) - REDUCTION_OPS))
def test_partial_step_and_initial_acc_revert_for_non_reductions(ex, opcode: Opcode) -> None:
    with boa.reverts("executor: not a reduction"):
        ex.partial_step(_op(opcode), 0, 1, 2, 3)
    with boa.reverts("executor: not a reduction"):
        ex.initial_acc(_op(opcode))


@pytest.mark.parametrize("code", [0x00, 0x0B, 0x17, 0x22, 0x34, 0x43, 0x51, 0xFF])
def test_unknown_opcodes_revert(ex, code: int) -> None:
    d = bytes([code]) + _op(Opcode.ADD)[1:]
    with boa.reverts("executor: not an element op"):
        ex.element(d, 1, 2, 3)
    with boa.reverts("executor: not a reduction"):
        ex.partial_step(d, 0, 1, 2, 3)


@pytest.mark.parametrize("length", [0, 32, 127])
def test_short_descriptors_revert(ex, length: int) -> None:
    d = _op(Opcode.MATMUL)[:length]
    for call in (
        lambda: ex.element(d, 1, 2, 3),
        lambda: ex.partial_step(d, 0, 1, 2, 3),
        lambda: ex.initial_acc(d),
        lambda: ex.operand_index(d, 0, 0, 0),
        lambda: ex.numel(d),
    ):
        with boa.reverts("executor: descriptor is not 128 bytes"):
            call()


def test_operand_out_of_range_reverts(ex) -> None:
    d = _op(Opcode.SELECT)
    assert ex.operand_index(d, 2, 1, 0) == 1
    with boa.reverts("executor: operand out of range"):
        ex.operand_index(d, 3, 0, 0)
    with boa.reverts("executor: operand out of range"):
        ex.operand_slot(d, 3)


# --------------------------------------------------------------------------- indexed ops

INDEX_CASES = [
    (0.0, 1), (-0.0, 1), (1.0, 2), (5.0, 6), (6.0, 0), (7.0, 0), (-1.0, 0), (0.5, 0),
    (2.5, 0), (float("nan"), 0), (float("inf"), 0), (float("-inf"), 0), (1e30, 0),
    (2.0**23 + 1, 0), (2.0**-149, 0), (-(2.0**-149), 0),
]  # fmt: skip


@pytest.mark.parametrize(("value", "want"), INDEX_CASES)
def test_gather_row_selects_integral_in_range_indices_only(ex, value: float, want: int) -> None:
    op = OpDescriptor(
        opcode=Opcode.GATHER, out=2, shape=(3,), reduce_len=6,
        operands=(Operand(slot=0, strides=(1,)), Operand(slot=1, strides=(1,), reduce_stride=3)),
    )  # fmt: skip
    assert ex.gather_row(op.encode(), fbits(value)) == want
    row = index_value(value)
    assert want == (row + 1 if row is not None and row < 6 else 0)


def test_index_add_adds_exactly_the_rows_own_index(ex) -> None:
    """INDEX_ADD adds y iff the index equals the element's first output index."""
    op = OpDescriptor(
        opcode=Opcode.INDEX_ADD, out=2, shape=(4, 3), reduce_len=5,
        operands=(
            Operand(slot=0, strides=(0, 0), reduce_stride=1),
            Operand(slot=1, strides=(0, 1), reduce_stride=3),
        ),
    )  # fmt: skip
    d = op.encode()
    acc, y, summed = fbits(1.5), fbits(0.25), fbits(1.75)
    for f in range(op.numel):
        row = f // 3
        assert ex.partial_step(d, f, acc, fbits(float(row)), y) == summed
        assert ex.partial_step(d, f, acc, fbits(row + 0.5), y) == acc
        assert ex.partial_step(d, f, acc, fbits(float(row + 1)), y) == acc
        assert ex.partial_step(d, f, acc, fbits(-float(row) - 1), y) == acc
        assert ex.partial_step(d, f, acc, CANONICAL_NAN_BITS, y) == acc
    assert ex.partial_step(d, 0, acc, fbits(-0.0), y) == summed
    with boa.reverts("executor: not a GATHER"):
        ex.gather_row(d, 0)


def _index_patterns(rng: np.random.Generator, n: int) -> np.ndarray:
    """Index bit patterns: rows 0..9 (and -0), negatives, fractions, NaNs, infinities, huge
    integers, subnormals and any bit pattern."""
    ints = rng.integers(-3, 10, n).astype(np.float32)
    halves = ints + np.float32(0.5)
    pick = rng.integers(0, 4, n)
    values = np.where(pick == 0, ints, np.where(pick == 1, halves, ints)).astype(np.float32)
    bits_ = values.view(np.uint32)
    other = random_bits(rng, n)
    return np.where(rng.random(n) < 0.6, bits_, other).astype(np.uint32)


def test_gather_and_index_add_on_random_indices(ex) -> None:
    """gather_row, GATHER's element and INDEX_ADD's partial step against the numpy reference
    on 10,240 random index patterns each (the index classes themselves: INDEX_CASES above)."""
    rng = np.random.default_rng(11)
    n = 10_240
    rows = 6
    gather = OpDescriptor(
        opcode=Opcode.GATHER, out=2, shape=(3,), reduce_len=rows,
        operands=(Operand(slot=0, strides=(1,)), Operand(slot=1, strides=(1,), reduce_stride=3)),
    ).encode()  # fmt: skip
    index_add = OpDescriptor(
        opcode=Opcode.INDEX_ADD, out=2, shape=(4, 2), reduce_len=9,
        operands=(
            Operand(slot=0, strides=(0, 0), reduce_stride=1),
            Operand(slot=1, strides=(0, 1), reduce_stride=2),
        ),
    ).encode()  # fmt: skip
    idx, table, acc = _index_patterns(rng, n), random_bits(rng, n), random_bits(rng, n)
    valid, _ = semantics.index_rows(as_f32(idx), rows)
    want_gather = as_bits(semantics.gather_value(valid, as_f32(table)))
    flats = rng.integers(0, 8, n)
    with np.errstate(all="ignore"):
        want_add = as_bits(
            semantics.reduce_step(
                Opcode.INDEX_ADD, as_f32(acc), [as_f32(idx), as_f32(table)], flats // 2
            )
        )
    for k in range(n):
        x, y = int(idx[k]), int(table[k])
        row = ex.gather_row(gather, x)
        assert row == (
            int(semantics.index_rows(as_f32(idx[k : k + 1]), rows)[1][0]) + 1 if valid[k] else 0
        )
        assert ex.element(gather, x, y, 0) == want_gather[k], (hex(x), hex(y))
        got = ex.partial_step(index_add, int(flats[k]), int(acc[k]), x, y)
        assert got == want_add[k], (int(flats[k]), hex(int(acc[k])), hex(x), hex(y))
