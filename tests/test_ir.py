"""protocol/ir.py: descriptor encoding, index maps, program root, validator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.ir import (
    DESCRIPTOR_BYTES,
    NO_SLOT,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    ProgramError,
    Slot,
    arity,
    decode_descriptor,
    max_operand_index,
    operand_index,
    program_root,
    unravel,
    validate_program,
)
from protocol.merkle import merkle_root

u32 = st.integers(0, 2**32 - 1)


@st.composite
def descriptors(draw: st.DrawFn) -> OpDescriptor:
    opcode = draw(st.sampled_from(list(Opcode)))
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 2**8), min_size=rank, max_size=rank)))
    reduction = opcode in (Opcode.REDUCE_SUM, Opcode.REDUCE_MAX, Opcode.MATMUL)
    operands = tuple(
        Operand(
            slot=draw(st.integers(0, NO_SLOT - 1)),
            offset=draw(u32),
            strides=tuple(draw(st.lists(u32, min_size=rank, max_size=rank))),
            reduce_stride=draw(u32) if reduction else 0,
        )
        for _ in range(arity(opcode))
    )
    imm = 0
    if opcode == Opcode.FILL:
        imm = draw(u32.filter(lambda b: (b & 0x7F800000) != 0x7F800000 or not b & 0x7FFFFF))
    elif opcode == Opcode.LOAD_BATCH:
        imm = draw(st.integers(0, 1))
    return OpDescriptor(
        opcode=opcode,
        out=draw(st.integers(0, NO_SLOT - 1)),
        shape=shape,
        operands=operands,
        reduce_len=draw(u32) if reduction else 0,
        imm=imm,
    )


@settings(max_examples=300, deadline=None)
@given(descriptors())
def test_encoding_round_trips(op: OpDescriptor) -> None:
    data = op.encode()
    assert len(data) == DESCRIPTOR_BYTES
    assert decode_descriptor(data) == op
    assert decode_descriptor(data).encode() == data


def test_encoding_layout_is_exact() -> None:
    """The byte layout of docs/protocol.md §3.5, field by field."""
    op = OpDescriptor(
        opcode=Opcode.MATMUL,
        out=0x0102,
        shape=(3, 5),
        operands=(
            Operand(slot=7, offset=0x0A0B0C0D, strides=(4, 0), reduce_stride=1),
            Operand(slot=9, offset=0, strides=(0, 1), reduce_stride=5),
        ),
        reduce_len=4,
    )
    data = op.encode()
    header = data[:32]
    assert header[0] == 0x32  # opcode
    assert header[1] == 2  # rank
    assert header[2:4] == b"\x01\x02"  # out slot
    assert header[4:8] == b"\x00" * 4  # imm
    assert header[8:12] == (4).to_bytes(4, "big")  # reduce_len
    assert [int.from_bytes(header[12 + 4 * i : 16 + 4 * i], "big") for i in range(4)] == [
        3,
        5,
        1,
        1,
    ]
    assert header[28:32] == b"\x00" * 4
    a = data[32:64]
    assert a[0:2] == (7).to_bytes(2, "big")
    assert a[2:6] == bytes.fromhex("0a0b0c0d")
    assert [int.from_bytes(a[6 + 4 * i : 10 + 4 * i], "big") for i in range(4)] == [4, 0, 0, 0]
    assert a[22:26] == (1).to_bytes(4, "big")
    assert a[26:32] == b"\x00" * 6
    assert data[64:66] == (9).to_bytes(2, "big")
    assert data[96:128] == b"\xff\xff" + b"\x00" * 30  # unused third operand


def test_encoding_golden_hex() -> None:
    op = OpDescriptor(opcode=Opcode.FILL, out=3, shape=(2,), imm=0x3F800000)
    header = (
        "40"  # opcode FILL
        "01"  # rank
        "0003"  # out slot
        "3f800000"  # imm = 1.0f
        "00000000"  # reduce_len
        "00000002"
        "00000001"
        "00000001"
        "00000001"  # dims, padded with 1
        "00000000"  # reserved
    )
    unused = "ffff" + "00" * 30
    assert op.encode().hex() == header + unused * 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"\x99" + d[1:], "unknown opcode"),
        (lambda d: d[:1] + b"\x05" + d[2:], "rank 5"),
        (lambda d: d[:31] + b"\x01" + d[32:], "reserved header"),
        (lambda d: d[:20] + (7).to_bytes(4, "big") + d[24:], "beyond rank"),
        (lambda d: d[:63] + b"\x01" + d[64:], "reserved bytes"),
        (lambda d: d[:127] + b"\x01", "unused operand 2"),
        (lambda d: d[:100], "100 bytes"),
    ],
)
def test_decode_rejects_malformed(mutate, message: str) -> None:
    op = OpDescriptor(
        opcode=Opcode.ADD,
        out=1,
        shape=(2, 3),
        operands=(Operand(slot=0, strides=(3, 1)), Operand(slot=0, strides=(0, 1))),
    )
    with pytest.raises(ProgramError, match=message):
        decode_descriptor(mutate(op.encode()), 5)


def test_decode_rejects_wrong_operand_count() -> None:
    good = OpDescriptor(
        opcode=Opcode.NEG, out=1, shape=(2,), operands=(Operand(slot=0, strides=(1,)),)
    )
    data = bytearray(good.encode())
    data[0] = int(Opcode.ADD)
    with pytest.raises(ProgramError, match="takes 2 operand"):
        decode_descriptor(bytes(data))


def test_descriptor_model_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="only reductions"):
        OpDescriptor(
            opcode=Opcode.ADD,
            out=0,
            shape=(2,),
            operands=(
                Operand(slot=0, strides=(1,), reduce_stride=1),
                Operand(slot=0, strides=(1,)),
            ),
        )
    with pytest.raises(ValueError, match="non-canonical NaN"):
        OpDescriptor(opcode=Opcode.FILL, out=0, shape=(2,), imm=0x7FC00001)
    with pytest.raises(ValueError, match="one stride per output dimension"):
        OpDescriptor(
            opcode=Opcode.NEG, out=0, shape=(2, 2), operands=(Operand(slot=0, strides=(1,)),)
        )


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=4),
    data=st.data(),
)
def test_operand_index_matches_numpy_strided_view(shape: list[int], data: st.DataObject) -> None:
    strides = [data.draw(st.integers(0, 7)) for _ in shape]
    offset = data.draw(st.integers(0, 9))
    r_stride = data.draw(st.integers(0, 3))
    op = OpDescriptor(
        opcode=Opcode.REDUCE_SUM,
        out=1,
        shape=tuple(shape),
        operands=(Operand(slot=0, offset=offset, strides=tuple(strides), reduce_stride=r_stride),),
        reduce_len=3,
    )
    src = np.arange(10_000)
    view = np.lib.stride_tricks.as_strided(
        src[offset:], shape=(3, *shape), strides=[8 * s for s in (r_stride, *strides)]
    )
    n = int(np.prod(shape))
    for flat in range(n):
        idx = unravel(flat, shape)
        for r in range(3):
            assert operand_index(op, 0, flat, r) == view[(r, *idx)]
    top = max_operand_index(op, 0)
    assert top == view.max()


def _slots(*specs: tuple[str, tuple[int, ...], str]) -> tuple[Slot, ...]:
    return tuple(Slot(name=n, shape=s, kind=k) for n, s, k in specs)  # type: ignore[arg-type]


def _unary(code: Opcode, out: int, src: int, shape: tuple[int, ...], **kw) -> OpDescriptor:
    strides = kw.pop("strides", None)
    if strides is None:
        strides = tuple(int(s) for s in np.cumprod((1, *shape[::-1]))[:-1][::-1]) if shape else ()
    return OpDescriptor(
        opcode=code, out=out, shape=shape, operands=(Operand(slot=src, strides=strides, **kw),)
    )


SLOTS = _slots(("w", (2, 3), "persistent"), ("t", (2, 3), "ephemeral"), ("u", (3,), "ephemeral"))


def test_valid_program_passes_and_root_is_mth_of_encodings() -> None:
    ops = (
        _unary(Opcode.NEG, 1, 0, (2, 3)),
        _unary(Opcode.SQRT, 0, 1, (2, 3)),
        OpDescriptor(opcode=Opcode.FREE, out=1, shape=(2, 3)),
    )
    program = Program(slots=SLOTS, ops=ops)
    validate_program(program)
    assert program.root() == merkle_root([op.encode() for op in ops])
    assert program_root(program.encoded()) == program.root()


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (
            (_unary(Opcode.NEG, 2, 0, (3,), strides=(3,)),),
            r"op 0 \(NEG\): operand 0 index map is out of range",
        ),
        (
            (_unary(Opcode.NEG, 1, 0, (3, 2), strides=(1, 3)),),
            r"op 0 \(NEG\): shape mismatch: output shape \[3, 2\]",
        ),
        (
            (_unary(Opcode.NEG, 2, 1, (3,), strides=(1,)),),
            r"op 0 \(NEG\): operand 0 reads slot 1 \(t\), which is empty",
        ),
        (
            (_unary(Opcode.NEG, 0, 0, (2, 3)), _unary(Opcode.ABS, 0, 0, (2, 3))),
            r"op 1 \(ABS\): writes persistent slot 0 \(w\) a second time",
        ),
        ((_unary(Opcode.NEG, 1, 0, (2, 3)),), r"ephemeral slots still hold values: 1 \(t\)"),
        (
            (OpDescriptor(opcode=Opcode.FREE, out=0, shape=(2, 3)),),
            r"op 0 \(FREE\): frees persistent slot 0",
        ),
        (
            (_unary(Opcode.NEG, 1, 0, (2, 3)), _unary(Opcode.ABS, 1, 0, (2, 3))),
            r"op 1 \(ABS\): writes ephemeral slot 1 \(t\) which already holds a value",
        ),
        (
            (OpDescriptor(opcode=Opcode.LOAD_BATCH, out=0, shape=(2, 3)),),
            r"op 0 \(LOAD_BATCH\): writes persistent slot 0",
        ),
        ((_unary(Opcode.NEG, 9, 0, (3,)),), r"op 0 \(NEG\): writes slot 9, the table has 3"),
        (
            (_unary(Opcode.NEG, 2, 0, (3,), offset=4, strides=(1,)),),
            r"reaches element 6 of slot 0 \(w\), which has 6 elements",
        ),
    ],
)
def test_validator_names_op_and_problem(ops: tuple[OpDescriptor, ...], message: str) -> None:
    with pytest.raises(ProgramError, match=message):
        validate_program(Program(slots=SLOTS, ops=ops))


def test_validator_rejects_duplicate_slot_names() -> None:
    slots = _slots(("a", (1,), "persistent"), ("a", (2,), "ephemeral"))
    with pytest.raises(ProgramError, match="slot 1: name 'a' is already used by slot 0"):
        validate_program(Program(slots=slots, ops=()))


def test_reduction_reading_nothing_is_in_range() -> None:
    """R = 0 reads no element, whatever the strides: the result is the identity."""
    op = OpDescriptor(
        opcode=Opcode.REDUCE_SUM,
        out=2,
        shape=(3,),
        operands=(Operand(slot=0, offset=100, strides=(100,), reduce_stride=100),),
        reduce_len=0,
    )
    validate_program(
        Program(slots=SLOTS, ops=(op, OpDescriptor(opcode=Opcode.FREE, out=2, shape=(3,))))
    )
