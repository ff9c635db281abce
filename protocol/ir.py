"""The canonical tensor IR (docs/protocol.md §3): opcodes, op descriptors, programs.

What both sides of a dispute share, and what the on-chain executor mirrors:

- :class:`Opcode` and the arity / class of every opcode;
- :class:`OpDescriptor`, its fixed 128-byte encoding (:meth:`OpDescriptor.encode`,
  :func:`decode_descriptor`) and ``program_root = MTH(encoded descriptors)``;
- :func:`operand_index`: the flat input index one output element (and the ``r``-th partial
  term of a reduction) reads, by the integer arithmetic the contract does;
- :class:`Program` (slot table + ops) and :func:`validate_program`, which rejects a malformed
  program with a :class:`ProgramError` naming the op and the problem.

Element semantics (what each opcode computes on float32 values) live in
``replay/execute/semantics.py``; this module only knows shapes, indices and bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import IntEnum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.errors import TrainproofError
from protocol.merkle import merkle_root

#: Highest tensor rank an op can address.
MAX_RANK = 4
#: Bytes of one encoded op descriptor (4 words of 32 bytes).
DESCRIPTOR_BYTES = 128
#: Operand slots per descriptor.
MAX_OPERANDS = 3
#: Slot field value of an unused operand.
NO_SLOT = 0xFFFF
#: Largest slot index (0xFFFF is reserved for "no operand").
MAX_SLOT = NO_SLOT - 1
U32_MAX = 2**32 - 1
#: The one NaN every computed result uses.
CANONICAL_NAN_BITS = 0x7FC00000
#: LOAD_BATCH immediates: which half of the step's dataset leaf.
BATCH_X, BATCH_Y = 0, 1


class ProgramError(TrainproofError):
    """A descriptor or program is malformed; the message names the op index and the problem."""


class Opcode(IntEnum):
    """Opcodes of the canonical IR. The numbering is part of the protocol."""

    # binary elementwise
    ADD = 0x01
    SUB = 0x02
    MUL = 0x03
    DIV = 0x04
    MAX = 0x05
    MIN = 0x06
    GT = 0x07
    GE = 0x08
    EQ = 0x09
    LDEXP = 0x0A
    # unary elementwise
    NEG = 0x10
    ABS = 0x11
    SQRT = 0x12
    ROUND = 0x13
    FREXP_EXP = 0x14
    FREXP_MANT = 0x15
    COPY = 0x16
    # ternary elementwise
    SELECT = 0x20
    FMA = 0x21
    # sequential reductions
    REDUCE_SUM = 0x30
    REDUCE_MAX = 0x31
    MATMUL = 0x32
    INDEX_ADD = 0x33
    # data-dependent indexing
    GATHER = 0x50
    # whole-slot ops
    FILL = 0x40
    LOAD_BATCH = 0x41
    FREE = 0x42


BINARY_OPS = frozenset(
    {Opcode.ADD, Opcode.SUB, Opcode.MUL, Opcode.DIV, Opcode.MAX, Opcode.MIN}
    | {Opcode.GT, Opcode.GE, Opcode.EQ, Opcode.LDEXP}
)
UNARY_OPS = frozenset(
    {Opcode.NEG, Opcode.ABS, Opcode.SQRT, Opcode.ROUND}
    | {Opcode.FREXP_EXP, Opcode.FREXP_MANT, Opcode.COPY}
)
TERNARY_OPS = frozenset({Opcode.SELECT, Opcode.FMA})
ELEMENTWISE_OPS = BINARY_OPS | UNARY_OPS | TERNARY_OPS
REDUCTION_OPS = frozenset({Opcode.REDUCE_SUM, Opcode.REDUCE_MAX, Opcode.MATMUL, Opcode.INDEX_ADD})
#: Ops whose element reads an operand at a row chosen by another operand's value.
INDEXED_OPS = frozenset({Opcode.GATHER})
#: Ops that use ``reduce_len`` (R) and ``reduce_stride`` (rho): the reductions' term count,
#: GATHER's row count (operand 1's rho is its row stride).
RANGED_OPS = REDUCTION_OPS | INDEXED_OPS
#: Ops decided at dispute level 3 (the whole slot value), never element by element.
ROOT_LEVEL_OPS = frozenset({Opcode.LOAD_BATCH, Opcode.FREE})


def arity(opcode: Opcode) -> int:
    """Number of operands ``opcode`` reads."""
    if opcode in TERNARY_OPS:
        return 3
    if opcode in BINARY_OPS or opcode in (Opcode.MATMUL, Opcode.INDEX_ADD, Opcode.GATHER):
        return 2
    if opcode in UNARY_OPS or opcode in (Opcode.REDUCE_SUM, Opcode.REDUCE_MAX):
        return 1
    return 0


def numel(shape: Sequence[int]) -> int:
    """Element count of a shape (1 for rank 0)."""
    return math.prod(shape)


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-order element strides of ``shape``."""
    strides: list[int] = []
    acc = 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def float32_bits(value: float) -> int:
    """The binary32 bit pattern of ``value`` rounded to float32 (NaN becomes canonical)."""
    if math.isnan(value):
        return CANONICAL_NAN_BITS
    return int.from_bytes(struct.pack(">f", value), "big")


def bits_to_float(bits: int) -> float:
    """The float32 value of a bit pattern (as a Python float)."""
    return float(struct.unpack(">f", bits.to_bytes(4, "big"))[0])


def is_nan_bits(bits: int) -> bool:
    return (bits & 0x7F800000) == 0x7F800000 and (bits & 0x007FFFFF) != 0


class Operand(BaseModel):
    """An operand's affine index map: element ``offset + Σ i_k·strides[k] + r·reduce_stride``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slot: int = Field(ge=0, le=MAX_SLOT)
    offset: int = Field(default=0, ge=0, le=U32_MAX)
    strides: tuple[int, ...] = Field(default=(), max_length=MAX_RANK)
    reduce_stride: int = Field(default=0, ge=0, le=U32_MAX)

    @model_validator(mode="after")
    def _strides_fit_u32(self) -> Operand:
        for k, s in enumerate(self.strides):
            if not 0 <= s <= U32_MAX:
                raise ValueError(f"stride[{k}] = {s} does not fit a uint32")
        return self


class OpDescriptor(BaseModel):
    """One op: writes slot ``out`` (whole) with a tensor of ``shape``.

    ``reduce_len`` is ``R`` of REDUCE_SUM / REDUCE_MAX / MATMUL (0 otherwise); ``imm`` is the
    float32 bit pattern of FILL or the batch half (0 = x, 1 = y) of LOAD_BATCH (0 otherwise).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    opcode: Opcode
    out: int = Field(ge=0, le=MAX_SLOT)
    shape: tuple[int, ...] = Field(max_length=MAX_RANK)
    operands: tuple[Operand, ...] = Field(default=(), max_length=MAX_OPERANDS)
    reduce_len: int = Field(default=0, ge=0, le=U32_MAX)
    imm: int = Field(default=0, ge=0, le=U32_MAX)

    @model_validator(mode="after")
    def _well_formed(self) -> OpDescriptor:
        problem = descriptor_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return numel(self.shape)

    def encode(self) -> bytes:
        """The fixed 128-byte encoding (docs/protocol.md §3.5)."""
        return encode_descriptor(self)

    def label(self, index: int) -> str:
        return f"op {index} ({self.opcode.name})"


def descriptor_problem(op: OpDescriptor) -> str | None:
    """What is wrong with a descriptor on its own (no slot table needed), or None."""
    for k, d in enumerate(op.shape):
        if not 0 <= d <= U32_MAX:
            return f"shape[{k}] = {d} does not fit a uint32"
    if numel(op.shape) > U32_MAX:
        return f"shape {list(op.shape)} has {numel(op.shape)} elements; at most 2**32-1"
    want = arity(op.opcode)
    if len(op.operands) != want:
        return f"{op.opcode.name} takes {want} operand(s), got {len(op.operands)}"
    for k, operand in enumerate(op.operands):
        if len(operand.strides) != op.rank:
            return (
                f"operand {k} has {len(operand.strides)} strides but the output has rank "
                f"{op.rank}: one stride per output dimension"
            )
        uses_rho = op.opcode in REDUCTION_OPS or (op.opcode in INDEXED_OPS and k == 1)
        if not uses_rho and operand.reduce_stride != 0:
            return (
                f"operand {k} has reduce_stride {operand.reduce_stride}; only reductions and "
                "GATHER's table operand use it"
            )
    if op.opcode not in RANGED_OPS and op.reduce_len != 0:
        return f"reduce_len is {op.reduce_len}; only reductions and GATHER use it"
    if op.opcode == Opcode.FILL:
        if is_nan_bits(op.imm) and op.imm != CANONICAL_NAN_BITS:
            return f"FILL value 0x{op.imm:08x} is a non-canonical NaN; use 0x7fc00000"
    elif op.opcode == Opcode.LOAD_BATCH:
        if op.imm not in (BATCH_X, BATCH_Y):
            return f"LOAD_BATCH imm is {op.imm}; 0 loads the batch's x, 1 its y"
    elif op.imm != 0:
        return f"imm is {op.imm}; only FILL and LOAD_BATCH use it"
    return None


# --------------------------------------------------------------------------- encoding

_M32 = U32_MAX
_M16 = 0xFFFF


def encode_descriptor(op: OpDescriptor) -> bytes:
    """Word 0: header; words 1..3: operands 0..2 (see docs/protocol.md §3.5)."""
    dims = list(op.shape) + [1] * (MAX_RANK - op.rank)
    header = (
        (int(op.opcode) << 248)
        | (op.rank << 240)
        | (op.out << 224)
        | (op.imm << 192)
        | (op.reduce_len << 160)
        | (dims[0] << 128)
        | (dims[1] << 96)
        | (dims[2] << 64)
        | (dims[3] << 32)
    )
    words = [header]
    for k in range(MAX_OPERANDS):
        if k < len(op.operands):
            o = op.operands[k]
            s = list(o.strides) + [0] * (MAX_RANK - len(o.strides))
            words.append(
                (o.slot << 240)
                | (o.offset << 208)
                | (s[0] << 176)
                | (s[1] << 144)
                | (s[2] << 112)
                | (s[3] << 80)
                | (o.reduce_stride << 48)
            )
        else:
            words.append(NO_SLOT << 240)
    return b"".join(w.to_bytes(32, "big") for w in words)


def decode_descriptor(data: bytes, index: int = 0) -> OpDescriptor:
    """Parse a 128-byte descriptor, rejecting anything :func:`encode_descriptor` cannot produce."""
    where = f"descriptor {index}"
    if len(data) != DESCRIPTOR_BYTES:
        raise ProgramError(f"{where}: {len(data)} bytes, a descriptor is {DESCRIPTOR_BYTES}")
    w = [int.from_bytes(data[32 * i : 32 * (i + 1)], "big") for i in range(4)]
    code = w[0] >> 248
    try:
        opcode = Opcode(code)
    except ValueError:
        raise ProgramError(f"{where}: unknown opcode 0x{code:02x}") from None
    rank = (w[0] >> 240) & 0xFF
    if rank > MAX_RANK:
        raise ProgramError(f"{where}: rank {rank} exceeds {MAX_RANK}")
    if w[0] & _M32:
        raise ProgramError(f"{where}: reserved header bytes 28..31 are not zero")
    dims = [(w[0] >> shift) & _M32 for shift in (128, 96, 64, 32)]
    if any(d != 1 for d in dims[rank:]):
        raise ProgramError(f"{where}: dims beyond rank {rank} must be 1, got {dims}")
    operands: list[Operand] = []
    for k in range(MAX_OPERANDS):
        word = w[1 + k]
        slot = word >> 240
        if slot == NO_SLOT:
            if word != NO_SLOT << 240:
                raise ProgramError(f"{where}: unused operand {k} has non-zero fields")
            continue
        if len(operands) != k:
            raise ProgramError(f"{where}: operand {k} is used but an earlier one is not")
        if word & ((1 << 48) - 1):
            raise ProgramError(f"{where}: reserved bytes 26..31 of operand {k} are not zero")
        strides = [(word >> shift) & _M32 for shift in (176, 144, 112, 80)]
        if any(s != 0 for s in strides[rank:]):
            raise ProgramError(f"{where}: operand {k} strides beyond rank {rank} must be 0")
        operands.append(
            Operand(
                slot=slot,
                offset=(word >> 208) & _M32,
                strides=tuple(strides[:rank]),
                reduce_stride=(word >> 48) & _M32,
            )
        )
    try:
        return OpDescriptor(
            opcode=opcode,
            out=(w[0] >> 224) & _M16,
            shape=tuple(dims[:rank]),
            operands=tuple(operands),
            reduce_len=(w[0] >> 160) & _M32,
            imm=(w[0] >> 192) & _M32,
        )
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        raise ProgramError(f"{where} ({opcode.name}): {_first_error(exc)}") from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(exc)


# --------------------------------------------------------------------------- index maps


def unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """C-order multi-index of ``flat`` in ``shape`` (what the contract does with div/mod)."""
    idx = []
    for d in reversed(shape):
        idx.append(flat % d)
        flat //= d
    return tuple(reversed(idx))


def operand_index(op: OpDescriptor, k: int, flat: int, r: int = 0) -> int:
    """Flat element index that operand ``k`` reads for output element ``flat`` and term ``r``."""
    o = op.operands[k]
    idx = o.offset + r * o.reduce_stride
    for i, s in zip(unravel(flat, op.shape), o.strides, strict=True):
        idx += i * s
    return idx


def max_operand_index(op: OpDescriptor, k: int) -> int | None:
    """Largest flat index operand ``k`` reads, or None when it reads nothing.

    GATHER's table operand (k = 1) is bounded over every row ``0 .. R-1`` it may select.
    """
    ranged = op.opcode in REDUCTION_OPS or (op.opcode in INDEXED_OPS and k == 1)
    if op.numel == 0 or (ranged and op.reduce_len == 0):
        return None
    o = op.operands[k]
    top = o.offset + sum((d - 1) * s for d, s in zip(op.shape, o.strides, strict=True))
    if ranged:
        top += (op.reduce_len - 1) * o.reduce_stride
    return top


def index_value(value: float) -> int | None:
    """The row a float32 index operand selects: its value if it is an integral, finite,
    non-negative number (``-0`` is row 0), else None (NaN, ±inf, fractional, negative).

    GATHER reads row ``index_value(x)`` when it is ``< R``; INDEX_ADD adds a term to output
    row ``i_0`` iff ``index_value(x) == i_0``. Both define every other index as "no row".
    """
    if not math.isfinite(value) or value < 0 or value != math.floor(value):
        return None
    return int(value)


# --------------------------------------------------------------------------- programs


class Slot(BaseModel):
    """A slot of the state: persistent slots survive step boundaries, ephemeral ones are empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shape: tuple[int, ...] = Field(max_length=MAX_RANK)
    kind: Literal["persistent", "ephemeral"]

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def persistent(self) -> bool:
        return self.kind == "persistent"


class Program(BaseModel):
    """A one-step program: the slot table and the ops, executed in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slots: tuple[Slot, ...]
    ops: tuple[OpDescriptor, ...]

    def encoded(self) -> list[bytes]:
        return [op.encode() for op in self.ops]

    def root(self) -> bytes:
        """``program_root = MTH(encoded descriptors)``."""
        return merkle_root(self.encoded())

    def slot_index(self, name: str) -> int:
        for i, s in enumerate(self.slots):
            if s.name == name:
                return i
        raise KeyError(f"the program has no slot named {name!r}")

    @cached_property
    def persistent_slots(self) -> tuple[int, ...]:
        """Indices of the persistent slots, in slot order (computed once: programs are
        frozen, and executors and traces ask for it at every step)."""
        return tuple(i for i, s in enumerate(self.slots) if s.persistent)


def validate_program(program: Program) -> None:
    """Raise ProgramError naming the first malformed op (or slot) and what is wrong with it.

    Rules: slot names unique, shapes fit uint32 with numel < 2**32; each op's shape equals its
    output slot's shape; every operand index stays inside its slot; an op never reads an empty
    slot; a slot is written at most once per step unless FREEd in between (persistent slots are
    never FREEd, so at most once); LOAD_BATCH writes an ephemeral slot; at the end of the program
    every ephemeral slot is empty again.
    """
    slots = program.slots
    if len(slots) > MAX_SLOT + 1:
        raise ProgramError(f"{len(slots)} slots; at most {MAX_SLOT + 1}")
    seen: dict[str, int] = {}
    for i, s in enumerate(slots):
        if s.name in seen:
            raise ProgramError(f"slot {i}: name {s.name!r} is already used by slot {seen[s.name]}")
        seen[s.name] = i
        if any(d > U32_MAX for d in s.shape) or s.numel > U32_MAX:
            raise ProgramError(f"slot {i} ({s.name}): shape {list(s.shape)} is too large")
    full = [s.persistent for s in slots]
    written = [False] * len(slots)
    for j, op in enumerate(program.ops):
        where = op.label(j)
        if op.out >= len(slots):
            raise ProgramError(f"{where}: writes slot {op.out}, the table has {len(slots)} slots")
        out = slots[op.out]
        if tuple(op.shape) != out.shape:
            raise ProgramError(
                f"{where}: shape mismatch: output shape {list(op.shape)} but slot {op.out} "
                f"({out.name}) has shape {list(out.shape)}"
            )
        for k, operand in enumerate(op.operands):
            if operand.slot >= len(slots):
                raise ProgramError(
                    f"{where}: operand {k} reads slot {operand.slot}, the table has "
                    f"{len(slots)} slots"
                )
            src = slots[operand.slot]
            if not full[operand.slot]:
                raise ProgramError(
                    f"{where}: operand {k} reads slot {operand.slot} ({src.name}), which is empty "
                    "at this point"
                )
            top = max_operand_index(op, k)
            if top is not None and top >= src.numel:
                raise ProgramError(
                    f"{where}: operand {k} index map is out of range: it reaches element {top} "
                    f"of slot {operand.slot} ({src.name}), which has {src.numel} elements"
                )
        if op.opcode == Opcode.FREE:
            if out.persistent:
                raise ProgramError(f"{where}: frees persistent slot {op.out} ({out.name})")
            if not full[op.out]:
                raise ProgramError(f"{where}: frees slot {op.out} ({out.name}), already empty")
            full[op.out] = False
            continue
        if op.opcode == Opcode.LOAD_BATCH and out.persistent:
            raise ProgramError(
                f"{where}: writes persistent slot {op.out} ({out.name}); "
                "batches go to ephemeral slots"
            )
        if out.persistent and written[op.out]:
            raise ProgramError(
                f"{where}: writes persistent slot {op.out} ({out.name}) a second time in one step"
            )
        if not out.persistent and full[op.out]:
            raise ProgramError(
                f"{where}: writes ephemeral slot {op.out} ({out.name}) which already holds a "
                "value; FREE it first"
            )
        written[op.out] = True
        full[op.out] = True
    left = [
        f"{i} ({slots[i].name})" for i in range(len(slots)) if full[i] and not slots[i].persistent
    ]
    if left:
        raise ProgramError(
            f"end of program (after op {len(program.ops) - 1}): ephemeral slots still hold values: "
            + ", ".join(left[:10])
            + (" ..." if len(left) > 10 else "")
        )


def program_root(descriptors: Sequence[bytes]) -> bytes:
    """``MTH`` over encoded descriptors, each exactly DESCRIPTOR_BYTES long."""
    for j, d in enumerate(descriptors):
        if len(d) != DESCRIPTOR_BYTES:
            raise ProgramError(
                f"descriptor {j}: {len(d)} bytes, a descriptor is {DESCRIPTOR_BYTES}"
            )
    return merkle_root(list(descriptors))
