"""The numpy reference interpreter: simple and obviously correct.

State is a list of slot values (a C-contiguous float32 array of the slot's shape, or None
when empty). Each op gathers its operands through their affine index maps and applies the
element semantics of ``replay/execute/semantics.py``; reductions and MATMUL are explicit sequential
loops over ``r`` (``acc_{r+1} = acc_r op term_r``), vectorised across output elements.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from protocol.ir import (
    BATCH_X,
    ELEMENTWISE_OPS,
    REDUCTION_OPS,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
)
from replay.errors import ExecutionError
from replay.execute import semantics

SlotValues = list[np.ndarray | None]


#: output elements per block: execution gathers, computes and stores one block at a time, so
#: its temporaries (int64 indices, gathered operands) stay small whatever the op's size
BLOCK = 1 << 14


def index_grid(op: OpDescriptor, operand: Operand) -> np.ndarray:
    """Flat input indices (int64, output-shaped) operand reads for term r = 0."""
    idx = np.full(op.shape, operand.offset, dtype=np.int64)
    for k, (d, s) in enumerate(zip(op.shape, operand.strides, strict=True)):
        axis = [1] * op.rank
        axis[k] = d
        idx = idx + np.arange(d, dtype=np.int64).reshape(axis) * s
    return idx


def index_range(op: OpDescriptor, operand: Operand, lo: int, hi: int) -> np.ndarray:
    """Flat input indices (int64, 1-d) operand reads for term r = 0 of output elements
    ``lo .. hi-1`` (C order)."""
    rest = np.arange(lo, hi, dtype=np.int64)
    idx = np.full(hi - lo, operand.offset, dtype=np.int64)
    for d, s in zip(reversed(op.shape), reversed(operand.strides), strict=True):
        rest, i = np.divmod(rest, d)
        idx += i * s
    return idx


def gather(state: SlotValues, op: OpDescriptor, k: int, grid: np.ndarray, r: int = 0) -> np.ndarray:
    operand = op.operands[k]
    src = state[operand.slot]
    if src is None:
        raise ExecutionError(f"op reads empty slot {operand.slot}")
    return src.reshape(-1)[grid + r * operand.reduce_stride]


def row_range(op: OpDescriptor, lo: int, hi: int) -> np.ndarray:
    """Each output element's first index ``i_0`` for elements ``lo .. hi-1`` (1-d; INDEX_ADD's
    row; 0 for rank 0)."""
    if op.rank == 0 or op.numel == 0:
        return np.zeros(hi - lo, dtype=np.int64)
    return np.arange(lo, hi, dtype=np.int64) // (op.numel // op.shape[0])


def accumulate(
    op: OpDescriptor, state: SlotValues, grids: Sequence[np.ndarray], row: np.ndarray | None
) -> Iterator[np.ndarray]:
    """``acc_0, acc_1, ..., acc_R`` of a reduction over the elements ``grids`` index, one at a
    time (a caller keeps what it needs: all of them for one element, the last for a block)."""
    acc = np.full(grids[0].shape, semantics.REDUCE_INIT[op.opcode], dtype=np.float32)
    yield acc
    for r in range(op.reduce_len):
        terms = [gather(state, op, k, grids[k], r) for k in range(len(op.operands))]
        acc = semantics.reduce_step(op.opcode, acc, terms, row)
        yield acc


def reduce_partials(
    op: OpDescriptor, state: SlotValues, flat: int | None = None
) -> list[np.ndarray]:
    """``[acc_0, acc_1, ..., acc_R]`` of a reduction (each output-shaped, or one element).

    With ``flat`` (what a dispute asks for) this is ``R + 1`` floats computed from that
    element's own operand indices; without, ``(R + 1)·numel`` (tests only: execution keeps the
    last, :func:`reduce_block`)."""
    if flat is None:
        grids = [index_grid(op, o) for o in op.operands]
        row = row_range(op, 0, op.numel).reshape(op.shape)
    else:  # one element: its own indices only, never the whole output's grid
        grids = [index_range(op, o, flat, flat + 1) for o in op.operands]
        row = row_range(op, flat, flat + 1)
    return list(accumulate(op, state, grids, row if op.opcode == Opcode.INDEX_ADD else None))


def reduce_block(op: OpDescriptor, state: SlotValues, lo: int, hi: int) -> np.ndarray:
    """``acc_R`` of output elements ``lo .. hi-1`` of a reduction (1-d)."""
    grids = [index_range(op, o, lo, hi) for o in op.operands]
    row = row_range(op, lo, hi) if op.opcode == Opcode.INDEX_ADD else None
    return deque(accumulate(op, state, grids, row), maxlen=1)[0]


def gather_rows(op: OpDescriptor, state: SlotValues, grids: list[np.ndarray]) -> np.ndarray:
    """GATHER over output elements whose operand-0 indices are ``grids[0]`` (any shape)."""
    valid, rows = semantics.index_rows(gather(state, op, 0, grids[0]), op.reduce_len)
    table = op.operands[1]
    src = state[table.slot]
    if src is None:
        raise ExecutionError(f"op reads empty slot {table.slot}")
    flat_src = src.reshape(-1)
    picked = (
        flat_src[np.where(valid, grids[1] + rows * table.reduce_stride, 0)]
        if src.size
        else (np.zeros(grids[1].shape, np.float32))
    )
    return semantics.gather_value(valid, picked)


def execute_op(
    op: OpDescriptor, state: SlotValues, batch: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray | None:
    """The new value of slot ``op.out`` after ``op`` (None for FREE)."""
    code = op.opcode
    if code in ELEMENTWISE_OPS or code in REDUCTION_OPS or code == Opcode.GATHER:
        out = np.empty(op.numel, dtype=np.float32)
        for lo in range(0, op.numel, BLOCK):  # blocks of output elements: the same bits
            hi = min(op.numel, lo + BLOCK)
            if code in REDUCTION_OPS:
                out[lo:hi] = semantics.canon(reduce_block(op, state, lo, hi))
                continue
            grids = [index_range(op, o, lo, hi) for o in op.operands]
            if code == Opcode.GATHER:
                out[lo:hi] = gather_rows(op, state, grids)
                continue
            args = [gather(state, op, k, grids[k]) for k in range(len(op.operands))]
            out[lo:hi] = semantics.ELEMENTWISE[code](*args)
        return out.reshape(op.shape)
    if code == Opcode.FILL:
        value = np.array([op.imm], dtype=np.uint32).view(np.float32)[0]
        return np.full(op.shape, value, dtype=np.float32)
    if code == Opcode.LOAD_BATCH:
        if batch is None:
            raise ExecutionError("LOAD_BATCH needs a batch but none was given")
        data = batch[0] if op.imm == BATCH_X else batch[1]
        if tuple(data.shape) != tuple(op.shape):
            raise ExecutionError(
                f"batch tensor has shape {list(data.shape)}, the program expects {list(op.shape)}"
            )
        return np.array(data, dtype=np.float32, order="C", copy=True)
    if code == Opcode.FREE:
        return None
    raise ExecutionError(f"unknown opcode {code!r}")  # pragma: no cover - Opcode is closed


class NumpyExecutor:
    """Runs a validated program step by step (or op by op) on numpy arrays."""

    name = "numpy"

    def __init__(self, program: Program) -> None:
        self.program = program
        self.state: SlotValues = [None] * len(program.slots)

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        """Load persistent slots (by name); ephemeral slots become empty."""
        self.state = slots_from_named(self.program, values)

    def get_state(self) -> dict[str, np.ndarray]:
        return named_from_slots(self.program, self.state)

    def slot_array(self, i: int, copy: bool = True) -> np.ndarray | None:
        """Slot ``i``'s value (already canonical), or None when empty; never written in place,
        so ``copy`` changes nothing here."""
        return self.state[i]

    def set_slot(self, i: int, value: np.ndarray | None) -> None:
        """Replace slot ``i``'s value (fault injection: replay.dispute.trace's ``tamper`` hook)."""
        self.state[i] = None if value is None else np.ascontiguousarray(value, dtype=np.float32)

    def run_op(self, j: int, batch: tuple[np.ndarray, np.ndarray] | None) -> None:
        op = self.program.ops[j]
        self.state[op.out] = execute_op(op, self.state, batch)

    def run_step(self, batch: tuple[np.ndarray, np.ndarray] | None) -> None:
        with np.errstate(all="ignore"):
            for j in range(len(self.program.ops)):
                self.run_op(j, batch)


def slots_from_named(program: Program, values: dict[str, np.ndarray]) -> SlotValues:
    """Persistent slot values by name → a full slot list (ephemerals empty), shape-checked."""
    check_named(program, values)
    state: SlotValues = [None] * len(program.slots)
    for i in program.persistent_slots:
        state[i] = np.array(values[program.slots[i].name], dtype=np.float32, order="C", copy=True)
    return state


def check_named(program: Program, values: Mapping[str, np.ndarray]) -> None:
    """Raise ExecutionError unless ``values`` are exactly the persistent slots, float32 and of
    the slots' shapes."""
    want = {program.slots[i].name for i in program.persistent_slots}
    missing = sorted(want - set(values))
    extra = sorted(set(values) - want)
    if missing or extra:
        raise ExecutionError(
            f"state does not match the slot table: missing {missing}, extra {extra}"
        )
    for i in program.persistent_slots:
        slot = program.slots[i]
        arr = values[slot.name]
        if arr.dtype != np.float32 or tuple(arr.shape) != slot.shape:
            raise ExecutionError(
                f"slot {slot.name}: got {arr.dtype} {list(arr.shape)}, expected float32 "
                f"{list(slot.shape)}"
            )


def named_from_slots(program: Program, state: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i in program.persistent_slots:
        value = state[i]
        if value is None:
            raise ExecutionError(f"persistent slot {program.slots[i].name} is empty")
        out[program.slots[i].name] = np.array(value, dtype=np.float32, order="C")
    return out
