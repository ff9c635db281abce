"""Data-parallel steps: the micro-batches of a step, each a standalone program on a worker.

A job compiled with ``micro_batches=N`` (``replay.compile.frontend.compile``) is one program
whose step is gradient accumulation: LOAD_BATCH of the whole batch, then a **segment** per
micro-batch (its forward + backward from the same parameters, ops ``[start, stop)``, recorded
in the job's ``segments``), then the **tail** (the losses and gradients summed in micro-batch
order, clipping, the optimizer). The program, and so every state root, is the same whoever
runs it; this module runs it in pieces (docs/protocol.md §3.14):

- :func:`make_part` cuts ops ``[start, stop)`` out as a program of their own: the slots
  they read before writing become persistent inputs, the slots whose values outlive the
  range (every persistent slot written, every ephemeral value still held at ``stop``)
  persistent outputs, FREEs of those slots are dropped and the slots renumbered. Every op
  is the same op on the same input values, so every output has the bits the whole program
  gives it. An input that is ephemeral in the whole program (the batch) travels as the
  window of elements the part reads: micro-batch ``m``'s rows;
- :class:`MicroBatchExecutor` runs a step as LOAD_BATCH (here), the segments (on Ray
  workers, or here in order), the tail (here). A segment that reads what an earlier one
  wrote (batch-norm running statistics pass from micro-batch to micro-batch) waits for it;
  the others run in parallel. It has the executor interface that ``replay.runner.run_steps``
  drives, so ``trainproof train --ray`` and ``prover run --ray`` write the checkpoints a
  plain run writes.

Ray tasks take plain data only: a part as its JSON (:class:`PartSpec`) and dicts of numpy
arrays; workers import this package from their own environment (replay.scale.cluster).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from protocol.ir import BATCH_X, Opcode, Program, Slot, validate_program
from replay.compile.job import Segment, part_io
from replay.errors import ExecutionError, SpecError
from replay.execute.backends import Executor, make_executor
from replay.scale.cluster import TASK_RETRIES, check_address

#: Parts a worker keeps compiled (one per micro-batch of the jobs it serves).
WORKER_PARTS = 16


class PartSpec(BaseModel):
    """A part of a step as plain data: what a worker needs to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: Program
    #: inputs that are ephemeral in the whole program: the flat window [lo, hi) read of each
    windows: dict[str, tuple[int, int]] = {}
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Part:
    """Ops ``[start, stop)`` of a program as a standalone program (:func:`make_part`)."""

    start: int
    stop: int
    spec: PartSpec
    #: every slot the part reads before writing it (by name, the whole program's names)
    inputs: tuple[str, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.spec.outputs

    def json(self) -> bytes:
        return self.spec.model_dump_json().encode()


def make_part(program: Program, start: int, stop: int) -> Part:
    """Ops ``[start, stop)`` of ``program`` as a program of their own (module docstring)."""
    reads, outs = part_io(program, start, stop)
    boundary = set(reads) | set(outs)
    made = {op.out for op in program.ops[start:stop] if op.opcode != Opcode.FREE}
    ops = []
    for op in program.ops[start:stop]:
        if op.opcode == Opcode.FREE and (op.out in boundary or op.out not in made):
            continue  # a value handed in or out, or made before the part, is not freed here
        if op.opcode == Opcode.LOAD_BATCH:
            raise SpecError(
                f"op range [{start}, {stop}) loads a batch: only a step's first ops may"
            )
        ops.append(op)
    used = sorted({op.out for op in ops} | {o.slot for op in ops for o in op.operands} | boundary)
    index = {old: new for new, old in enumerate(used)}
    slots = tuple(
        Slot(
            name=program.slots[i].name,
            shape=program.slots[i].shape,
            kind="persistent" if i in boundary else "ephemeral",
        )
        for i in used
    )
    renumbered = tuple(
        op.model_copy(
            update={
                "out": index[op.out],
                "operands": tuple(
                    o.model_copy(update={"slot": index[o.slot]}) for o in op.operands
                ),
            }
        )
        for op in ops
    )
    sub = Program(slots=slots, ops=renumbered)
    validate_program(sub)
    windows = {
        program.slots[i].name: window
        for i, window in reads.items()
        if not program.slots[i].persistent
    }
    spec = PartSpec(
        program=sub, windows=windows, outputs=tuple(program.slots[i].name for i in outs)
    )
    return Part(start, stop, spec, tuple(program.slots[i].name for i in reads))


def run_part(
    spec: PartSpec, executor: Executor, values: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run a part on ``executor`` (one for ``spec.program``) from its inputs by name (a
    windowed input as just its window's elements); returns its outputs by name."""
    state: dict[str, np.ndarray] = {}
    for slot in spec.program.slots:
        if not slot.persistent:
            continue
        value = values.get(slot.name)
        if value is None:  # an output only: its value is written before it is read
            state[slot.name] = np.zeros(slot.shape, np.float32)
        elif slot.name in spec.windows:
            lo, hi = spec.windows[slot.name]
            flat = np.zeros(slot.numel, np.float32)
            flat[lo:hi] = np.asarray(value, np.float32).reshape(-1)
            state[slot.name] = flat.reshape(slot.shape)
        else:
            state[slot.name] = np.asarray(value, np.float32)
    executor.set_state(state)
    executor.run_step(None)
    got = executor.get_state()
    return {name: got[name] for name in spec.outputs}


# -- worker side (runs in a Ray worker process; module state is per worker)

_WORKER: OrderedDict[bytes, tuple[PartSpec, Executor]] = OrderedDict()


def _worker_part(spec_json: bytes, backend: str) -> tuple[PartSpec, Executor]:
    key = hashlib.sha256(spec_json + backend.encode()).digest()
    if key in _WORKER:
        _WORKER.move_to_end(key)
        return _WORKER[key]
    spec = PartSpec.model_validate_json(spec_json)
    validate_program(spec.program)
    _WORKER[key] = (spec, make_executor(spec.program, backend))
    while len(_WORKER) > WORKER_PARTS:
        _WORKER.popitem(last=False)
    return _WORKER[key]


def run_segment_task(
    spec_json: bytes,
    shared: dict[str, np.ndarray],
    own: dict[str, np.ndarray],
    backend: str,
    threads: int,
) -> tuple[dict[str, np.ndarray], float]:
    """A Ray task: one micro-batch's segment from plain data (the part's JSON, the step's
    shared inputs, this segment's own); returns (its outputs by name, seconds it ran)."""
    import torch

    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    spec, executor = _worker_part(spec_json, backend)
    out = run_part(spec, executor, {**shared, **own})
    return {k: np.array(v) for k, v in out.items()}, time.perf_counter() - t0


# -- coordinator side


def segments_of(program: Program, segments: Sequence[Segment | Mapping[str, Any]]) -> list[Part]:
    """The parts of a step compiled with micro-batches: each segment, then the tail. The
    segments (from a job's manifest, maybe a bundle's metadata) must cover the program from
    its first op after the LOAD_BATCHes, one after another, leaving a tail; any such cut
    gives the same bits, so a wrong one costs only parallelism, never correctness."""
    segs = [s if isinstance(s, Segment) else Segment.model_validate(s) for s in segments]
    if not segs:
        raise SpecError(
            "--ray runs a step's micro-batches on workers, but this job was compiled without "
            "them: compile it with trainproof compile --micro-batches N (N > 1)"
        )
    first = 0
    while first < len(program.ops) and program.ops[first].opcode == Opcode.LOAD_BATCH:
        first += 1
    at = first
    for k, s in enumerate(segs):
        if s.start != at or not s.start < s.stop < len(program.ops):
            raise SpecError(
                f"the job's segment {k} is ops [{s.start}, {s.stop}), not a range from op {at} "
                f"inside its {len(program.ops)} ops: recompile the job with --micro-batches"
            )
        at = s.stop
    parts = [make_part(program, s.start, s.stop) for s in segs]
    parts.append(make_part(program, at, len(program.ops)))
    return parts


class _Local:
    """Runs segments in this process, in order (no Ray): the same parts, the same bits."""

    def __init__(self, parts: Sequence[Part], backend: str, device: str) -> None:
        self._ex = [make_executor(p.spec.program, backend, device) for p in parts]
        self._parts = parts

    def submit(self, k: int, shared: dict[str, np.ndarray], own: dict[str, np.ndarray]) -> Any:
        return run_part(self._parts[k].spec, self._ex[k], {**shared, **own})

    def put(self, value: Any) -> Any:
        return value

    def get(self, handles: list[Any]) -> list[dict[str, np.ndarray]]:
        return handles

    def close(self) -> None:
        pass


class _Ray:
    """Runs segments as Ray tasks on the cluster at ``address``, one CPU each."""

    def __init__(self, parts: Sequence[Part], address: str, backend: str, threads: int) -> None:
        from replay.scale.cluster import cluster_cpus, connect

        check_address(address)
        self._ray_before = _ray_initialized()
        self.ray = connect(address)
        self.address = address
        self.cpus = cluster_cpus()
        self._task = self.ray.remote(run_segment_task).options(
            num_cpus=threads, max_retries=TASK_RETRIES, retry_exceptions=False
        )
        self._specs = [self.ray.put(p.json()) for p in parts]
        self._backend, self._threads = backend, threads
        #: seconds each segment ran on its worker, and from submission to its outputs here
        self.worker_seconds: list[float] = []
        self._submitted: dict[int, float] = {}

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def submit(self, k: int, shared: Any, own: dict[str, np.ndarray]) -> Any:
        return self._task.remote(self._specs[k], shared, own, self._backend, self._threads)

    def get(self, handles: list[Any]) -> list[dict[str, np.ndarray]]:
        out = []
        for values, seconds in self.ray.get(handles):
            self.worker_seconds.append(seconds)
            out.append(values)
        return out

    def close(self) -> None:
        if not self._ray_before:
            from replay.scale.cluster import disconnect

            disconnect()


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return bool(ray.is_initialized())


class MicroBatchExecutor:
    """Runs whole steps of a program compiled with micro-batches, its segments on Ray
    workers (``ray`` = ``auto`` or ``HOST:PORT``) or, with ``ray=None``, here one after
    another; the persistent state stays here. Same interface as a backend's executor for
    ``set_state`` / ``get_state`` / ``run_step``, and the same bits."""

    name = "microbatch"

    def __init__(
        self,
        program: Program,
        segments: Sequence[Segment | Mapping[str, Any]],
        ray: str | None = None,
        backend: str = "torch",
        device: str = "cpu",
        threads: int = 1,
        on_segments: Callable[[int, float], None] | None = None,
    ) -> None:
        self.program = program
        self.parts = segments_of(program, segments)
        self._loads = [op for op in program.ops[: self.parts[0].start]]
        self._names = [s.name for s in program.slots]
        self._persistent = {program.slots[i].name for i in program.persistent_slots}
        *segs, tail = self.parts
        self.micro_batches = len(segs)
        self._tail = make_executor(tail.spec.program, backend, device)
        # a segment waits for the earlier segments whose outputs it reads; it reads the
        # step's start state (shared by all segments: sent once) where nothing before wrote
        self._after: list[set[int]] = []
        self._own: list[list[str]] = []
        shared: set[str] = set()
        earlier: set[str] = set()
        for k, p in enumerate(segs):
            reads = set(p.inputs)
            self._after.append({i for i in range(k) if reads & set(segs[i].outputs)})
            from_start = {n for n in reads if n in self._persistent and n not in earlier}
            shared |= from_start
            self._own.append([n for n in p.inputs if n not in from_start])
            earlier |= set(p.outputs)
        self._shared = sorted(shared)
        #: where segments run: "local" or the Ray address
        self.where = "local" if ray is None else ray
        self._runner: _Local | _Ray = (
            _Local(segs, backend, device) if ray is None else _Ray(segs, ray, backend, threads)
        )
        self.workers = getattr(self._runner, "cpus", 1.0)
        self._state: dict[str, np.ndarray] = {}
        self._on_segments = on_segments

    @property
    def parallel(self) -> bool:
        """Whether the micro-batches are independent (no buffers passed between them)."""
        return not any(self._after)

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        from replay.execute.numpy_backend import check_named

        check_named(self.program, values)
        self._state = {k: np.asarray(v) for k, v in values.items()}

    def get_state(self) -> dict[str, np.ndarray]:
        return dict(self._state)

    def run_step(self, batch: tuple[np.ndarray, np.ndarray] | None) -> None:
        if batch is None:
            raise ExecutionError("LOAD_BATCH needs a batch but none was given")
        t0 = time.perf_counter()
        held: dict[str, np.ndarray] = {}  # ephemeral values: the batch, the segments' outputs
        for op in self._loads:
            value = np.asarray(batch[0 if op.imm == BATCH_X else 1], dtype=np.float32)
            if tuple(value.shape) != tuple(op.shape):
                raise ExecutionError(
                    f"batch tensor has shape {list(value.shape)}, the program expects "
                    f"{list(op.shape)}"
                )
            held[self._names[op.out]] = value
        *segs, tail = self.parts
        start = self._state
        shared = self._runner.put({n: start[n] for n in self._shared})
        written: dict[str, np.ndarray] = {}
        pending: dict[int, Any] = {}

        def collect(ks: list[int]) -> None:
            for values in self._runner.get([pending.pop(k) for k in ks]):
                written.update(values)

        for k, part in enumerate(segs):
            waits = sorted(self._after[k] & set(pending))
            if waits:
                collect(waits)
            own = {n: self._value(n, part, held, written) for n in self._own[k]}
            pending[k] = self._runner.submit(k, shared, own)
        collect(sorted(pending))
        values = {n: self._value(n, tail, held, written) for n in tail.inputs}
        written.update(run_part(tail.spec, self._tail, values))
        new = dict(start)
        for name, value in written.items():
            if name in self._persistent:
                new[name] = value
        self._state = new
        if self._on_segments:
            self._on_segments(len(segs), time.perf_counter() - t0)

    def _value(
        self, name: str, part: Part, held: dict[str, np.ndarray], written: dict[str, np.ndarray]
    ) -> np.ndarray:
        if name in written:
            value = written[name]
        elif name in held:
            value = held[name]
        elif name in self._state:
            return self._state[name]
        else:
            raise ExecutionError(
                f"slot {name} is read by ops [{part.start}, {part.stop}) but empty"
            )
        window = part.spec.windows.get(name)
        if window is None:
            return value
        return np.ascontiguousarray(value).reshape(-1)[window[0] : window[1]]

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> MicroBatchExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_executor(
    program: Program,
    segments: Sequence[Segment | Mapping[str, Any]],
    ray: str,
    backend: str = "torch",
    device: str = "cpu",
) -> MicroBatchExecutor:
    """The executor ``--ray ADDRESS`` asks for: the address checked, then the cluster joined
    (one line when it does not answer), then the job's segments on its workers."""
    check_address(ray)
    if not segments:
        segments_of(program, segments)  # the one-line refusal
    return MicroBatchExecutor(program, segments, ray=ray, backend=backend, device=device)
