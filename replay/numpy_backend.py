"""The numpy reference interpreter: simple and obviously correct.

State is a list of slot values (a C-contiguous float32 array of the slot's shape, or None
when empty). Each op gathers its operands through their affine index maps and applies the
element semantics of ``replay/semantics.py``; reductions and MATMUL are explicit sequential
loops over ``r`` (``acc_{r+1} = acc_r op term_r``), vectorised across output elements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol.ir import (
    BATCH_X,
    ELEMENTWISE_OPS,
    REDUCTION_OPS,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    operand_index,
)
from replay import semantics
from replay.errors import ExecutionError

SlotValues = list[np.ndarray | None]


def index_grid(op: OpDescriptor, operand: Operand) -> np.ndarray:
    """Flat input indices (int64, output-shaped) operand reads for term r = 0."""
    idx = np.full(op.shape, operand.offset, dtype=np.int64)
    for k, (d, s) in enumerate(zip(op.shape, operand.strides, strict=True)):
        axis = [1] * op.rank
        axis[k] = d
        idx = idx + np.arange(d, dtype=np.int64).reshape(axis) * s
    return idx


def gather(state: SlotValues, op: OpDescriptor, k: int, grid: np.ndarray, r: int = 0) -> np.ndarray:
    operand = op.operands[k]
    src = state[operand.slot]
    if src is None:
        raise ExecutionError(f"op reads empty slot {operand.slot}")
    return src.reshape(-1)[grid + r * operand.reduce_stride]


def reduce_partials(
    op: OpDescriptor, state: SlotValues, flat: int | None = None
) -> list[np.ndarray]:
    """``[acc_0, acc_1, ..., acc_R]`` of a reduction (each output-shaped, or one element)."""
    if flat is None:
        grids = [index_grid(op, o) for o in op.operands]
    else:  # one element: its own indices only, never the whole output's grid
        grids = [np.array([operand_index(op, k, flat)]) for k in range(len(op.operands))]
    shape = grids[0].shape
    acc = np.full(shape, semantics.REDUCE_INIT[op.opcode], dtype=np.float32)
    out = [acc]
    step = semantics.REDUCE_STEP[op.opcode]
    for r in range(op.reduce_len):
        terms = [gather(state, op, k, grids[k], r) for k in range(len(op.operands))]
        acc = step(acc, semantics.reduce_term(op.opcode, terms))
        out.append(acc)
    return out


def execute_op(
    op: OpDescriptor, state: SlotValues, batch: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray | None:
    """The new value of slot ``op.out`` after ``op`` (None for FREE)."""
    code = op.opcode
    if code in ELEMENTWISE_OPS:
        grids = [index_grid(op, o) for o in op.operands]
        args = [gather(state, op, k, grids[k]) for k in range(len(op.operands))]
        return np.array(semantics.ELEMENTWISE[code](*args).reshape(op.shape), order="C")
    if code in REDUCTION_OPS:
        acc = reduce_partials(op, state)[-1]
        return np.array(semantics.canon(acc).reshape(op.shape), order="C")
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

    def slot_array(self, i: int) -> np.ndarray | None:
        """Slot ``i``'s value (already canonical), or None when empty."""
        return self.state[i]

    def set_slot(self, i: int, value: np.ndarray | None) -> None:
        """Replace slot ``i``'s value (fault injection: replay.trace's ``tamper`` hook)."""
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
