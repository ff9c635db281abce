"""The replay farm: a sampled interval's replay as a task, run here or on Ray workers.

A watcher checks a commitment by replaying each sampled interval ``c`` from the latest
verified checkpoint at or before ``C_c`` and comparing every interval end on the way with
the committed roots (:func:`check_interval`). That is all compute and no chain: it needs
the job's spec, the committed roots and the blob stores, and answers with the roots it
reached. So the coordinator (the watcher, which owns the signer, the outbox and its state
file) hands each one to a farm:

- :class:`LocalFarm` runs them in this process, lazily and in order (what a watcher without
  ``--ray`` does: it stops at the first interval that differs);
- :class:`RayFarm` submits them all at once as Ray tasks with resource requests; each worker
  fetches the bundle and checkpoints from the stores itself (verifying every blob against
  its root, as here), and a task whose worker dies is retried by Ray. The answers are the
  same as a local replay's: the replay is bit-exact on any machine. A dispute is played
  from a :class:`RemoteComputation`: its replays and op-level traces run in a
  :class:`DisputeWorker` actor on the cluster, and the coordinator only signs the moves.

The farm keeps what each task cost the coordinator (submission to answer, minus the
worker's own replay time): ``RayFarm.overhead`` (bench/farm.py reports it).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from protocol.blobs import BlobError, BlobStore, StoreUnreachable, open_stores
from protocol.game import JobSpec
from replay.data.bundle import BundleError, BundleSource
from replay.data.checkpoint import CheckpointError
from replay.data.publish import fetch_checkpoint
from replay.dispute.players import Computation, bundle_computation
from replay.scale.cluster import TASK_RETRIES

log = logging.getLogger("trainproof.farm")

#: Job computations a worker keeps open (bundle fetched and verified once per job).
WORKER_JOBS = 4


class IntervalTask(BaseModel):
    """Replay sampled interval ``interval`` of job ``job_id`` and compare with ``committed``."""

    model_config = ConfigDict(frozen=True)

    job_id: int = Field(ge=0)
    spec: JobSpec
    committed: list[bytes] = Field(min_length=2, description="C_0 .. C_m, as committed")
    interval: int = Field(ge=0)
    stores: list[str] = Field(min_length=1)


class Rejected(BaseModel):
    """A checkpoint the replay could not start from, and why (logged by the coordinator)."""

    interval: int
    event: str  # store_unreachable | checkpoint_rejected
    why: str


class IntervalOutcome(BaseModel):
    """What replaying one sampled interval found."""

    interval: int
    start: int = Field(description="the checkpoint the replay started from (0: C_0)")
    matched: list[int] = Field(description="intervals replayed whose end matched the commitment")
    bad: int | None = Field(description="the first interval whose end differs (None: all match)")
    roots: list[bytes] = Field(description="the ends reached: C_{start+1} .. in order")
    missing: str | None = Field(None, description="why this interval's batches can't be had")
    missing_part: str | None = None
    rejected: list[Rejected] = []
    seconds: float = Field(description="the worker's time on it")
    fetch_seconds: float = Field(0.0, description="of which fetching and verifying C_start")
    worker: str = Field(description="host:pid that ran it")


# ---------------------------------------------------------------- the replay itself


def start_computation(
    store: BlobStore, honest: Computation, committed: list[bytes], c: int
) -> tuple[Computation, list[Rejected]]:
    """A computation that starts at the latest verified checkpoint at or before ``C_c``: a
    checkpoint withheld, tampered or truncated routes the replay to an earlier one, down to
    ``C_0``, which the bundle always gives. Also: the checkpoints passed over, and why."""
    rejected: list[Rejected] = []
    for s in range(c, 0, -1):
        try:
            state = fetch_checkpoint(store, honest.program, committed[s])
        except StoreUnreachable as e:
            rejected.append(Rejected(interval=s, event="store_unreachable", why=str(e)))
            continue
        except (BlobError, CheckpointError) as e:
            rejected.append(Rejected(interval=s, event="checkpoint_rejected", why=str(e)))
            continue
        comp = honest.fresh()
        comp.seed(s * honest.every, state)
        return comp, rejected
    return honest.fresh(), rejected


def check_interval(
    store: BlobStore, honest: Computation, committed: list[bytes], c: int
) -> tuple[IntervalOutcome, Computation]:
    """Replay interval ``c`` from the latest verified checkpoint before it, comparing every
    interval end on the way; the outcome, and the computation that ran (a dispute is played
    from it)."""
    t0 = time.perf_counter()
    comp, rejected = start_computation(store, honest, committed, c)
    fetched = time.perf_counter() - t0
    start = comp.start_checkpoint
    matched: list[int] = []
    roots: list[bytes] = []
    bad: int | None = None
    missing = part = None
    try:
        for i in range(start, c + 1):
            root = comp.step_root((i + 1) * comp.every)
            roots.append(root)
            if root != committed[i + 1]:
                bad = i
                break
            matched.append(i)
    except BundleError as e:  # a batch of these steps can't be had
        missing, part = e.args[0], e.part
    outcome = IntervalOutcome(
        interval=c, start=start, matched=matched, bad=bad, roots=roots, missing=missing,
        missing_part=part, rejected=rejected, seconds=time.perf_counter() - t0,
        fetch_seconds=fetched, worker=f"{socket.gethostname()}:{os.getpid()}",
    )  # fmt: skip
    return outcome, comp


# ---------------------------------------------------------------- farms


class Pending(Protocol):
    """A submitted task: its outcome (blocking), and the computation when it ran here."""

    def result(self) -> IntervalOutcome: ...

    def computation(self) -> Computation | None: ...

    def cancel(self) -> None: ...


class Farm(Protocol):
    name: str

    def submit(self, task: IntervalTask, honest: Computation) -> Pending: ...

    def computation(self, task: IntervalTask, honest: Computation) -> Computation: ...

    def close(self) -> None: ...


class _LocalPending:
    def __init__(self, farm: LocalFarm, task: IntervalTask, honest: Computation) -> None:
        self._run: Callable[[], tuple[IntervalOutcome, Computation]] = lambda: check_interval(
            farm.store, honest, task.committed, task.interval
        )
        self._done: tuple[IntervalOutcome, Computation] | None = None

    def result(self) -> IntervalOutcome:
        if self._done is None:
            self._done = self._run()
        return self._done[0]

    def computation(self) -> Computation | None:
        return None if self._done is None else self._done[1]

    def cancel(self) -> None:
        self._done = None


class LocalFarm:
    """Replays in this process, when asked for the result: in order, stopping where the
    caller stops reading (a watcher without ``--ray``)."""

    name = "local"

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def submit(self, task: IntervalTask, honest: Computation) -> Pending:
        return _LocalPending(self, task, honest)

    def computation(self, task: IntervalTask, honest: Computation) -> Computation:
        """The computation a dispute of ``task.interval`` is played from, here."""
        comp, _ = start_computation(self.store, honest, task.committed, task.interval)
        return comp

    def close(self) -> None:
        pass


# -- worker side (runs in a Ray worker process; module state is per worker)

_WORKER_JOBS: OrderedDict[tuple[bytes, tuple[str, ...]], tuple[BlobStore, Computation]] = (
    OrderedDict()
)


def _worker_job(task: IntervalTask) -> tuple[BlobStore, Computation]:
    """The job's verified computation on this worker (fetched once, kept for the next task)."""
    key = (task.spec.bundle, tuple(task.stores))
    if key in _WORKER_JOBS:
        _WORKER_JOBS.move_to_end(key)
        return _WORKER_JOBS[key]
    store = open_stores(task.stores)
    honest = bundle_computation(BundleSource(store).bundle(task.spec), task.spec)
    _WORKER_JOBS[key] = (store, honest)
    while len(_WORKER_JOBS) > WORKER_JOBS:
        _WORKER_JOBS.popitem(last=False)
    return store, honest


def replay_interval(task: dict[str, Any], committed: list[bytes], threads: int) -> dict[str, Any]:
    """A Ray task: the outcome of ``check_interval`` for one (plain-data) IntervalTask whose
    committed roots come apart (put in the object store once per commitment)."""
    import torch

    torch.set_num_threads(max(1, threads))
    parsed = IntervalTask.model_validate({**task, "committed": committed})
    t0 = time.perf_counter()
    try:
        store, honest = _worker_job(parsed)
    except BundleError as e:  # the coordinator verified it: the stores changed since
        return IntervalOutcome(
            interval=parsed.interval, start=0, matched=[], bad=None, roots=[],
            missing=e.args[0], missing_part=e.part, seconds=time.perf_counter() - t0,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        ).model_dump()  # fmt: skip
    outcome, _ = check_interval(store, honest, parsed.committed, parsed.interval)
    return outcome.model_dump()


class DisputeWorker:
    """A Ray actor: one disputed interval's computation, from the latest verified checkpoint
    before it, answering the trace questions a game asks (state roots at step and op
    boundaries, slot values, chunk trees, partials). Restarted by Ray if its worker dies:
    everything it holds is recomputed from the checkpoint."""

    def __init__(self, task: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        parsed = IntervalTask.model_validate(task)
        store, honest = _worker_job(parsed)
        self.comp, _ = start_computation(store, honest, parsed.committed, parsed.interval)

    def call(self, name: str, *args: Any) -> Any:
        return getattr(self.comp, name)(*args)

    def attr(self, name: str) -> Any:
        return getattr(self.comp, name)

    def trace_call(self, t: int, name: str, *args: Any) -> Any:
        return getattr(self.comp.trace(t), name)(*args)

    def trace_attr(self, t: int, name: str) -> Any:
        return getattr(self.comp.trace(t), name)


class RemoteTrace:
    """The StepTrace interface of a step traced on a DisputeWorker (what players read)."""

    def __init__(self, remote: RemoteComputation, t: int) -> None:
        self._remote, self._t = remote, t
        self.program = remote.program
        self.length = len(remote.program.ops)
        self.op_roots: list[bytes] = remote._get("trace_attr", t, "op_roots")

    def _ask(self, name: str, *args: Any) -> Any:
        return self._remote._get("trace_call", self._t, name, *args)

    def slot_value(self, j: int, slot: int) -> Any:
        return self._ask("slot_value", j, slot)

    def slot_roots(self, j: int) -> Any:
        return self._ask("slot_roots", j)

    def state_tree(self, j: int) -> Any:
        return self._ask("state_tree", j)

    def chunk_tree(self, j: int, slot: int) -> Any:
        return self._ask("chunk_tree", j, slot)

    def partials(self, j: int, flat: int) -> Any:
        return self._ask("partials", j, flat)

    def operand_reads(self, j: int, flat: int, r: int = 0) -> Any:
        return self._ask("operand_reads", j, flat, r)


class RemoteComputation:
    """A disputed interval's Computation whose replays and traces run on a Ray worker.

    The program, the dataset and their proofs come from the coordinator's own verified
    bundle (``local``); step roots, trace positions and every trace question go to a
    :class:`DisputeWorker`. Players use it as they use a Computation."""

    def __init__(self, farm: RayFarm, task: IntervalTask, local: Computation) -> None:
        self._farm, self._local = farm, local
        self.program, self.dataset = local.program, local.dataset
        self.steps, self.every, self.fault = local.steps, local.every, None
        self.backend = local.backend
        self._actor = farm._actor.remote(task.model_dump(), max(1, int(farm.cpus)))
        self._traces: dict[int, RemoteTrace] = {}
        self.start_checkpoint: int = self._get("attr", "start_checkpoint")

    def _get(self, method: str, *args: Any) -> Any:
        return self._farm.ray.get(getattr(self._actor, method).remote(*args))

    @property
    def ops(self) -> int:
        return len(self.program.ops)

    def step_root(self, t: int) -> bytes:
        return self._get("call", "step_root", t)  # type: ignore[no-any-return]

    def checkpoint_roots(self) -> list[bytes]:
        return self._get("call", "checkpoint_roots")  # type: ignore[no-any-return]

    def position_root(self, interval: int, position: int) -> bytes:
        return self._get("call", "position_root", interval, position)  # type: ignore[no-any-return]

    def state_before(self, t: int) -> Any:
        return self._get("call", "state_before", t)

    def trace(self, t: int) -> RemoteTrace:
        if t not in self._traces:
            self._traces[t] = RemoteTrace(self, t)
        return self._traces[t]

    def program_proof(self, j: int) -> list[bytes]:
        return self._local.program_proof(j)

    def dataset_proof(self, t: int) -> list[bytes]:
        return self._local.dataset_proof(t)


class _RayPending:
    def __init__(self, farm: RayFarm, ref: Any, submitted: float) -> None:
        self._farm, self._ref, self._submitted = farm, ref, submitted
        self._outcome: IntervalOutcome | None = None
        self._open = True
        farm.in_flight += 1
        farm.peak_in_flight = max(farm.peak_in_flight, farm.in_flight)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._farm.in_flight -= 1

    def result(self) -> IntervalOutcome:
        if self._outcome is None:
            raw = self._farm.ray.get(self._ref)
            self._close()
            self._outcome = IntervalOutcome.model_validate(raw)
            waited = time.perf_counter() - self._submitted
            self._farm.overhead.append(max(0.0, waited - self._outcome.seconds))
        return self._outcome

    def computation(self) -> Computation | None:
        return None

    def cancel(self) -> None:
        if self._outcome is None:
            self._farm.ray.cancel(self._ref)
            self._close()


class RayFarm:
    """Replays as Ray tasks on the cluster at ``address`` (``auto`` or ``HOST:PORT``), each
    asking for ``cpus`` CPUs (its torch thread count), ``gpus`` GPUs and, when given,
    ``memory_mb`` of memory; a task whose worker dies runs again (``TASK_RETRIES``)."""

    name = "ray"

    def __init__(
        self,
        address: str,
        cpus: float = 1.0,
        gpus: float = 0.0,
        memory_mb: int | None = None,
    ) -> None:
        from replay.scale.cluster import cluster_cpus, connect

        self.ray = connect(address)
        self.address = address
        self.cpus = cpus
        options: dict[str, Any] = {
            "num_cpus": cpus, "num_gpus": gpus, "max_retries": TASK_RETRIES,
            "retry_exceptions": False,
        }  # fmt: skip
        if memory_mb:
            options["memory"] = memory_mb << 20
        self._task = self.ray.remote(replay_interval).options(**options)
        actor = {k: v for k, v in options.items() if k not in ("max_retries", "retry_exceptions")}
        self._actor = self.ray.remote(DisputeWorker).options(
            **actor, max_restarts=TASK_RETRIES, max_task_retries=TASK_RETRIES
        )
        #: seconds each answered task cost beyond the worker's own replay time
        self.overhead: list[float] = []
        self._roots: dict[tuple[int, int, bytes], Any] = {}
        #: tasks submitted and not answered yet, now and at most so far
        self.in_flight = 0
        self.peak_in_flight = 0
        self.workers = cluster_cpus() / max(cpus, 1e-9)

    def submit(self, task: IntervalTask, honest: Computation) -> Pending:
        t0 = time.perf_counter()
        key = (task.job_id, len(task.committed), task.committed[-1])
        if key not in self._roots:  # a commitment's roots cross the wire once, not per task
            self._roots[key] = self.ray.put(task.committed)
            while len(self._roots) > WORKER_JOBS * 16:  # submitted tasks keep their own refs
                self._roots.pop(next(iter(self._roots)))
        args = task.model_dump(exclude={"committed"})
        ref = self._task.remote(args, self._roots[key], max(1, int(self.cpus)))
        return _RayPending(self, ref, t0)

    def computation(self, task: IntervalTask, honest: Computation) -> Computation:
        """The computation a dispute of ``task.interval`` is played from: on a worker."""
        return RemoteComputation(self, task, honest)  # type: ignore[return-value]

    def close(self) -> None:
        from replay.scale.cluster import disconnect

        disconnect()


def open_farm(
    store: BlobStore,
    ray: str | None,
    cpus: float = 1.0,
    gpus: float = 0.0,
    memory_mb: int | None = None,
) -> Farm:
    """The farm a watcher's ``--ray`` option names (None: this process)."""
    if ray is None:
        return LocalFarm(store)
    return RayFarm(ray, cpus=cpus, gpus=gpus, memory_mb=memory_mb)
