"""The op-level trace of one step: what a dispute asks for (DESIGN §4.4 levels 3-6).

- ``op_roots[j]`` is the state root after ``j`` ops (``op_roots[0]`` = the step's start
  state, ``op_roots[L]`` = its end state), computed incrementally: after each op only the
  written slot is re-hashed and its path to the root updated;
- on demand: any slot's value and chunk tree (``protocol.commitments.chunk_tree``) at any op
  boundary, a slot's inclusion proof in the state tree, the operand indices and values one
  output element reads, and the sequential partial values ``acc_0 .. acc_R`` of one element of
  a REDUCE_SUM / REDUCE_MAX / MATMUL.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from protocol.commitments import chunk_tree, state_tree, tensor_root
from protocol.ir import REDUCTION_OPS, Opcode, Program, index_value, operand_index
from protocol.merkle import InclusionProof, MerkleTree
from replay.backends import Batch, Executor, make_executor
from replay.errors import ExecutionError
from replay.numpy_backend import reduce_partials, slots_from_named
from replay.state import IncrementalStateTree, as_committed

#: A fault hook (tests, demos): called after op ``j`` ran on the executor with the step's
#: batch; returns the slots to replace and their new values (the op's own output included,
#: or any other slot). They are written into the executor (numpy backend) and the trace
#: records them as if computed, so everything after the fault follows from it.
Tamper = Callable[[int, Executor, Batch | None], dict[int, np.ndarray | None]]


@dataclass(frozen=True)
class OperandRead:
    """One element an op reads: operand ``k`` at flat ``index`` of ``slot``."""

    k: int
    slot: int
    index: int
    value: np.float32


class StepTrace:
    """Execute one step op by op, recording every op-level state root."""

    def __init__(
        self,
        program: Program,
        start: Mapping[str, np.ndarray],
        batch: Batch | None,
        backend: str = "numpy",
        device: str = "cpu",
        tamper: Tamper | None = None,
    ) -> None:
        self.program = program
        executor = make_executor(program, backend, device)
        executor.set_state(dict(start))
        self._initial = slots_from_named(program, dict(start))
        roots = [None if v is None else tensor_root(as_committed(v)) for v in self._initial]
        self._initial_roots = list(roots)
        tree = IncrementalStateTree(roots)
        self.op_roots: list[bytes] = [tree.root]
        # per slot: the ops that replaced it, with the value and root it held after each
        self._writes: dict[int, list[int]] = {}
        self._written: dict[tuple[int, int], tuple[np.ndarray | None, bytes | None]] = {}
        for j, op in enumerate(program.ops):
            executor.run_op(j, batch)
            changes: dict[int, np.ndarray | None] = {op.out: executor.slot_array(op.out)}
            if tamper is not None:
                tampered = tamper(j, executor, batch)
                for slot, value in tampered.items():
                    executor.set_slot(slot, value)  # type: ignore[attr-defined]
                changes.update(tampered)
            for slot, value in changes.items():
                value = None if value is None else np.array(value, dtype=np.float32, order="C")
                root = None if value is None else tensor_root(as_committed(value))
                self._writes.setdefault(slot, []).append(j)
                self._written[j, slot] = (value, root)
                tree.update(slot, root)
            self.op_roots.append(tree.root)

    @property
    def length(self) -> int:
        """L, the number of ops: state roots run from op 0 to op L."""
        return len(self.program.ops)

    def _check_boundary(self, j: int) -> None:
        if not 0 <= j <= self.length:
            raise ExecutionError(f"op boundary {j} is outside 0..{self.length}")

    def _last_write(self, slot: int, j: int) -> int | None:
        """Index of the last op before boundary ``j`` that wrote ``slot`` (None: none did)."""
        writes = self._writes.get(slot, [])
        pos = bisect.bisect_left(writes, j)
        return writes[pos - 1] if pos else None

    def slot_value(self, j: int, slot: int) -> np.ndarray | None:
        """Slot ``slot`` in the state after ``j`` ops (None when empty)."""
        self._check_boundary(j)
        w = self._last_write(slot, j)
        return self._initial[slot] if w is None else self._written[w, slot][0]

    def slot_roots(self, j: int) -> list[bytes | None]:
        self._check_boundary(j)
        out: list[bytes | None] = []
        for slot in range(len(self.program.slots)):
            w = self._last_write(slot, j)
            out.append(self._initial_roots[slot] if w is None else self._written[w, slot][1])
        return out

    def state_tree(self, j: int) -> MerkleTree:
        """The full state tree after ``j`` ops (its root is ``op_roots[j]``)."""
        return state_tree(self.slot_roots(j))

    def slot_proof(self, j: int, slot: int) -> InclusionProof:
        return self.state_tree(j).prove(slot)

    def chunk_tree(self, j: int, slot: int) -> MerkleTree:
        """Chunk tree of ``slot`` after ``j`` ops (its root is the slot's data_root)."""
        value = self.slot_value(j, slot)
        if value is None:
            raise ExecutionError(f"slot {slot} is empty after {j} ops")
        return chunk_tree(as_committed(value).reshape(-1))

    def operand_reads(self, j: int, flat: int, r: int = 0) -> list[OperandRead]:
        """What op ``j`` reads for output element ``flat`` (and reduction term ``r``).

        GATHER reads its index (operand 0), then the table (operand 1) at the row that
        index selects — or nothing more when it selects none (the element is +0.0)."""
        op = self.program.ops[j]
        if not 0 <= flat < op.numel:
            raise ExecutionError(f"element {flat} is outside op {j}'s {op.numel} outputs")
        reads: list[OperandRead] = []
        for k, o in enumerate(op.operands):
            if k == 1 and op.opcode == Opcode.GATHER:
                # the table is read at the row the index selects; no row, no read
                row = index_value(float(reads[0].value))
                if row is None or row >= op.reduce_len:
                    break
                r = row
            idx = operand_index(op, k, flat, r)
            value = self.slot_value(j, o.slot)
            assert value is not None  # the validator guarantees reads of full slots
            reads.append(OperandRead(k, o.slot, idx, np.float32(value.reshape(-1)[idx])))
        return reads

    def partials(self, j: int, flat: int) -> np.ndarray:
        """``[acc_0, ..., acc_R]`` of output element ``flat`` of reduction op ``j`` (float32)."""
        op = self.program.ops[j]
        if op.opcode not in REDUCTION_OPS:
            raise ExecutionError(f"op {j} ({op.opcode.name}) is not a reduction")
        if not 0 <= flat < op.numel:
            raise ExecutionError(f"element {flat} is outside op {j}'s {op.numel} outputs")
        state = [self.slot_value(j, s) for s in range(len(self.program.slots))]
        with np.errstate(all="ignore"):
            accs = reduce_partials(op, state, flat)
        return np.array([a.reshape(-1)[0] for a in accs], dtype=np.float32)
