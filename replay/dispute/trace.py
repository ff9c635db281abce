"""The op-level trace of one step: what a dispute asks for (DESIGN §4.4 levels 3-6).

- ``op_roots[j]`` is the state root after ``j`` ops (``op_roots[0]`` = the step's start
  state, ``op_roots[L]`` = its end state), computed incrementally: after each op only the
  written slot is re-hashed and its path to the root updated;
- the per-op written (slot, tensor_root) pairs, so any boundary's slot roots, state tree and
  slot proofs need no execution;
- on demand, by re-executing the step from its start state up to the boundary asked about (a
  cursor kept at the last boundary reached): any slot's value and chunk tree
  (``protocol.commitments.chunk_tree``) at any op boundary, the operand indices and values one
  output element reads, and the sequential partial values ``acc_0 .. acc_R`` of one element of
  a REDUCE_SUM / REDUCE_MAX / MATMUL, from that op's operands.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protocol.commitments import chunk_tree, hash_threads, state_tree, tensor_roots
from protocol.ir import (
    CANONICAL_NAN_BITS,
    REDUCTION_OPS,
    Opcode,
    Program,
    index_value,
    operand_index,
)
from protocol.merkle import InclusionProof, MerkleTree
from replay.errors import ExecutionError
from replay.execute.backends import Batch, Executor, fresh_executor
from replay.execute.numpy_backend import (
    NumpyExecutor,
    check_named,
    reduce_partials,
)
from replay.execute.state import as_committed, state_roots_after

if TYPE_CHECKING:
    import torch

#: A fault hook (tests, demos): called after op ``j`` ran on the executor with the step's
#: batch; returns the slots to replace and their new values (the op's own output included,
#: or any other slot). They are written into the executor (numpy backend) and the trace
#: records them as if computed, so everything after the fault follows from it.
Tamper = Callable[[int, Executor, Batch | None], dict[int, np.ndarray | None]]


#: one thread that hashes op outputs while the trace runs the next ops (the native hasher
#: releases the GIL); the trace's own thread joins in once the step has run
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-hash")

#: op outputs are handed to the hashing thread in batches of about this many bytes (one
#: native call hashes a whole batch: no Python call per output)
HASH_BATCH_BYTES = 4 << 20
#: at most this many bytes of op outputs wait for the hashing thread
TRACE_HASH_BACKLOG = 256 << 20


def _batch_roots(values: list[np.ndarray], threads: int = 1) -> list[bytes]:
    """The committed tensor roots of op values computed with NaNs as they came."""
    return tensor_roots(values, threads=threads, nan_bits=CANONICAL_NAN_BITS)


@dataclass
class _Batch:
    """Op outputs handed to the hashing thread together, and their roots once known."""

    values: list[np.ndarray]
    size: int
    future: Future[list[bytes]]
    roots: list[bytes] | None = None

    def take_over(self) -> None:
        """Hash it on this thread if the hashing thread has not started it."""
        if self.roots is None and self.future.cancel():
            self.roots, self.values = _batch_roots(self.values), []

    def finish(self) -> list[bytes]:
        """Its roots: hashed here if not started yet, else waited for."""
        self.take_over()
        if self.roots is None:
            self.roots, self.values = self.future.result(), []
        return self.roots


class _OutputHasher:
    """The tensor roots of a step's op outputs, in the order they are added: hashed in
    batches on the hashing thread while the step runs; when the backlog is full, and at
    the end, the caller hashes batches not yet started itself (from the newest), so both
    cores hash. Values are never written in place after they are added."""

    def __init__(self) -> None:
        self._batches: list[_Batch] = []  # handed over, oldest first
        self._open: list[np.ndarray] = []
        self._open_bytes = 0
        self._queued = 0  # bytes of the batches from self._settled on
        self._settled = 0  # batches before this one have their roots
        self._count = 0

    def add(self, value: np.ndarray) -> int:
        """Start hashing ``value``; returns its place in :meth:`roots`."""
        self._count += 1
        self._open.append(value)
        self._open_bytes += value.nbytes
        if self._open_bytes >= HASH_BATCH_BYTES:
            self._submit()
        return self._count - 1

    def _submit(self) -> None:
        values, size = self._open, self._open_bytes
        self._open, self._open_bytes = [], 0
        self._batches.append(_Batch(values, size, _HASHER.submit(_batch_roots, values)))
        self._queued += size
        while self._queued > TRACE_HASH_BACKLOG:  # memory stays bounded: help, or wait
            oldest = self._batches[self._settled]
            oldest.finish()
            self._queued -= oldest.size
            self._settled += 1

    def roots(self) -> list[bytes]:
        """Every added value's root, in order (waits for, or does, the remaining work)."""
        if not self._batches:  # a small step: one batch, hashed here on every core
            return _batch_roots(self._open, hash_threads())
        if self._open:
            self._submit()
        for batch in reversed(self._batches):  # the hashing thread works from the front
            batch.take_over()
        return [root for batch in self._batches for root in batch.finish()]


@dataclass(frozen=True)
class OperandRead:
    """One element an op reads: operand ``k`` at flat ``index`` of ``slot``."""

    k: int
    slot: int
    index: int
    value: np.float32


class StepTrace:
    """Execute one step op by op, recording every op-level state root; answer queries about
    any boundary by re-executing the step up to it.

    Memory is the live state of one execution (like training), not the sum of all op outputs:
    the constructor runs the step once, keeping per op only the (slot, tensor_root) pairs it
    wrote and the values a ``tamper`` hook substituted. A query about boundary ``j`` moves a
    cursor (an executor holding ``S_j``) there: forward from where it is, or from ``S_0`` when
    ``j`` is earlier. A dispute asks many questions about one or two boundaries, so each costs
    at most one partial re-execution. The start state's arrays are kept by reference: do not
    modify them while the trace is in use.
    """

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
        self._batch = batch
        # a fault hook may replace any slot, and only the reference reads every operand from
        # its slot (the torch backend captures a step's FILL constants when it compiles)
        self._backend, self._device = ("numpy", "cpu") if tamper is not None else (backend, device)
        self._initial = _start_slots(program, start)
        full = [as_committed(v) for v in self._initial if v is not None]
        initial_roots = iter(tensor_roots(full))
        roots = [None if v is None else next(initial_roots) for v in self._initial]
        self._initial_roots = list(roots)
        # (op, slot, its value's place among the values hashed, or -1 when it is empty)
        pending: list[tuple[int, int, int]] = []
        updates: list[tuple[int, bytes | None]] = []  # and the root it was given
        ends: list[int] = []  # per op: how many updates precede the state after it
        # per slot: the ops that replaced it and the root it held after each (32 bytes per op)
        self._writes: dict[int, list[int]] = {}
        self._roots: dict[int, list[bytes | None]] = {}
        # op -> the slot values the tamper hook substituted after it (replayed on re-execution)
        self._tampered: dict[int, dict[int, np.ndarray | None]] = {}
        self._executor: Executor | None = None
        self._at = 0
        self._undo: dict[int, np.ndarray | None] | None = None
        executor = self._cursor(0)

        hasher = _OutputHasher()

        def record(j: int, slot: int, value: np.ndarray | None) -> None:
            pending.append((j, slot, -1 if value is None else hasher.add(as_committed(value))))

        recorded = getattr(executor, "run_step_recorded", None)
        drops: dict[int, list[int]] = {}
        if tamper is None and recorded is not None:
            # the whole step at once, element chains fused, every op's value seen once
            tb = None if batch is None else executor.batch_tensors(batch)  # type: ignore[attr-defined]
            on_cpu = self._device == "cpu"

            def on_value(j: int, slot: int, v: torch.Tensor | None) -> None:
                record(j, slot, None if v is None else (v if on_cpu else v.cpu()).numpy())

            recorded(tb, on_value)
            pending.sort(key=lambda p: p[0])  # one value per op, now in op order
            ends.extend(range(1, len(pending) + 1))
        else:
            # op by op; without a hook (which may read any slot) a persistent value is
            # dropped after its last read (queries re-execute anyway)
            drops = {} if tamper is not None else _dead_persistent(program)
            for j, op in enumerate(program.ops):
                executor.run_op(j, batch)
                changes: dict[int, np.ndarray | None] = {
                    op.out: executor.slot_array(op.out, copy=False)  # only hashed here
                }
                if tamper is not None:
                    tampered = {
                        slot: None if v is None else np.array(v, dtype=np.float32, order="C")
                        for slot, v in tamper(j, executor, batch).items()
                    }
                    for slot, value in tampered.items():
                        executor.set_slot(slot, value)  # type: ignore[attr-defined]
                    if tampered:
                        self._tampered[j] = tampered
                    changes.update(tampered)
                for slot, value in changes.items():
                    record(j, slot, value)
                ends.append(len(pending))
                for slot in drops.get(j, ()):
                    executor.set_slot(slot, None)  # type: ignore[attr-defined]
        hashed = hasher.roots()
        for j, slot, k in pending:
            root = None if k < 0 else hashed[k]
            self._writes.setdefault(slot, []).append(j)
            self._roots.setdefault(slot, []).append(root)
            updates.append((slot, root))
        after = state_roots_after(roots, updates)
        self.op_roots: list[bytes] = [after[0]] + [after[e] for e in ends]
        self._at = self.length
        if drops:  # the executor no longer holds S_L: the next query starts from S_0
            self._executor, self._at = None, 0

    @property
    def length(self) -> int:
        """L, the number of ops: state roots run from op 0 to op L."""
        return len(self.program.ops)

    def _check_boundary(self, j: int) -> None:
        if not 0 <= j <= self.length:
            raise ExecutionError(f"op boundary {j} is outside 0..{self.length}")

    def _cursor(self, j: int) -> Executor:
        """The executor holding ``S_j`` (re-executing from ``S_0`` if it is past ``j``).

        Moving forward onto ``j`` keeps the previous values of the slots that op ``j - 1``
        replaced (``_undo``), so boundary ``j - 1`` (an op's pre-state, when ``j`` is its
        post-state) is answered without re-executing.
        """
        if self._executor is None or j < self._at:
            self._executor, self._undo = None, None  # release the old state first
            executor = fresh_executor(self.program, self._backend, self._device)
            if isinstance(executor, NumpyExecutor):
                executor.state = list(self._initial)  # never written in place: no copy needed
            else:
                slots = self.program.slots
                executor.set_state(
                    {slots[i].name: self._initial[i] for i in self.program.persistent_slots}  # type: ignore[misc]
                )
            self._executor, self._at = executor, 0
        executor = self._executor
        with np.errstate(all="ignore"):
            while self._at < j:
                op, tampered = self.program.ops[self._at], self._tampered.get(self._at, {})
                self._undo = None
                if self._at == j - 1:
                    self._undo = {s: executor.slot_array(s) for s in {op.out, *tampered}}
                executor.run_op(self._at, self._batch)
                for slot, value in tampered.items():
                    executor.set_slot(slot, value)  # type: ignore[attr-defined]
                self._at += 1
        return executor

    def slot_value(self, j: int, slot: int) -> np.ndarray | None:
        """Slot ``slot`` in the state after ``j`` ops (None when empty)."""
        self._check_boundary(j)
        if j == 0:
            return self._initial[slot]
        if self._undo is not None and j == self._at - 1:
            if slot in self._undo:
                return self._undo[slot]
            return self._executor.slot_array(slot)  # type: ignore[union-attr]
        return self._cursor(j).slot_array(slot)

    def slot_roots(self, j: int) -> list[bytes | None]:
        self._check_boundary(j)
        out: list[bytes | None] = []
        for slot in range(len(self.program.slots)):
            writes = self._writes.get(slot, [])
            pos = bisect.bisect_left(writes, j)  # writes by ops before boundary j
            out.append(self._roots[slot][pos - 1] if pos else self._initial_roots[slot])
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
        state: list[np.ndarray | None] = [None] * len(self.program.slots)
        for o in op.operands:
            state[o.slot] = self.slot_value(j, o.slot)
        with np.errstate(all="ignore"):
            accs = reduce_partials(op, state, flat)
        return np.array([a.reshape(-1)[0] for a in accs], dtype=np.float32)


def _start_slots(program: Program, start: Mapping[str, np.ndarray]) -> list[np.ndarray | None]:
    """The start state as a slot list, checked like ``slots_from_named`` but holding read-only
    views of the given arrays (no copy of S_0 when they are C-contiguous float32)."""
    check_named(program, start)
    out: list[np.ndarray | None] = [None] * len(program.slots)
    for i in program.persistent_slots:
        view = np.asarray(start[program.slots[i].name], order="C").view()
        view.flags.writeable = False
        out[i] = view
    return out


def _dead_persistent(program: Program) -> dict[int, list[int]]:
    """op -> the persistent slots (written in the step) that no op after it reads."""
    last: dict[int, int] = {}
    for j, op in enumerate(program.ops):
        for o in op.operands:
            if o.slot in last:
                last[o.slot] = j
        if program.slots[op.out].persistent:
            last[op.out] = j
    out: dict[int, list[int]] = {}
    for slot, j in last.items():
        out.setdefault(j, []).append(slot)
    return out
