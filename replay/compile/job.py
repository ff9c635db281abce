"""A compiled job (program + C_0 + the model's state-dict layout), its folder, training runs
of it, and the export of a checkpoint back into the model's own ``state_dict``.

Job folder::

    JOBDIR/job.json            JobManifest (roots, batch shapes, state-dict layout, numbers)
    JOBDIR/program.json        the Program (slot table + op descriptors)
    JOBDIR/initial.safetensors C_0 (every persistent slot, float32)

Run folder (the layout of replay/runner.py: ``run.json`` + ``checkpoints/``) plus ``job/``, a
copy of the job folder, so that a run is self-contained.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from protocol.ir import BATCH_X, BATCH_Y, Opcode, Program, max_operand_index, validate_program
from replay.data.checkpoint import (
    Hex32,
    from_hex,
    load_checkpoint,
    resolve_inside,
    save_checkpoint,
    to_hex,
)
from replay.data.dataset import BatchSource
from replay.errors import CheckpointError, SpecError
from replay.execute.backends import make_executor
from replay.execute.state import state_root_of
from replay.runner import CHECKPOINT_DIR, CheckpointRef, ReplayResult, run_root_of, run_steps

LOSS_SLOT = "loss"
JOB_FORMAT = "trainproof-job/v0"
JOB_RUN_FORMAT = "trainproof-job-run/v0"


class StateEntry(BaseModel):
    """One ``state_dict`` key: the slot that holds it and its dtype in the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=200)
    slot: str = Field(min_length=1, max_length=200)
    dtype: str
    shape: tuple[int, ...]


class Segment(BaseModel):
    """One micro-batch's part of a step: ops ``[start, stop)`` of the program (its forward
    and backward, with the FREEs that follow them) and the slots it writes that the rest of
    the step reads (its loss, its gradients, the buffers it updated), by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    outputs: tuple[str, ...] = ()


def part_io(
    program: Program, start: int, stop: int
) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """What ops ``[start, stop)`` of ``program`` exchange with the rest of the step:
    (each slot they read before writing it → the flat element window ``[lo, hi)`` they read
    of it, the slots they write whose value outlives the range: every persistent slot
    written, and every ephemeral one still full at ``stop``), both in slot order."""
    if not 0 <= start <= stop <= len(program.ops):
        raise SpecError(
            f"op range [{start}, {stop}) is not inside the program's {len(program.ops)} ops"
        )
    reads: dict[int, tuple[int, int]] = {}
    full: set[int] = set()
    written: set[int] = set()
    for j in range(start, stop):
        op = program.ops[j]
        for k, o in enumerate(op.operands):
            if o.slot in written:
                continue
            top = max_operand_index(op, k)
            if top is None:
                continue
            lo, hi = reads.get(o.slot, (o.offset, top + 1))
            reads[o.slot] = (min(lo, o.offset), max(hi, top + 1))
        if op.opcode == Opcode.FREE:
            full.discard(op.out)
            continue
        written.add(op.out)
        full.add(op.out)
    persistent = {i for i in written if program.slots[i].persistent}
    return dict(sorted(reads.items())), sorted(persistent | full)


def segment_outputs(program: Program, start: int, stop: int) -> tuple[str, ...]:
    """The names of the slots ops ``[start, stop)`` hand to the rest of the step."""
    return tuple(program.slots[i].name for i in part_io(program, start, stop)[1])


class JobManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["trainproof-job/v0"] = JOB_FORMAT
    name: str
    program_root: Hex32
    initial_root: Hex32
    ops: int = Field(ge=0)
    slots: int = Field(ge=0)
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    optimizer: str
    frozen: tuple[str, ...] = ()
    state_dict_layout: tuple[StateEntry, ...]
    compile_seconds: float = 0.0
    aten_nodes: int = 0
    #: gradient accumulation over this many micro-batches (absent when 1)
    micro_batches: int | None = Field(None, ge=2)
    #: each micro-batch's op range and outputs (absent when 1)
    segments: tuple[Segment, ...] | None = None

    @model_serializer(mode="wrap")
    def _omit_plain(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A job without micro-batches writes the manifest it always did."""
        data: dict[str, Any] = handler(self)
        for key in ("micro_batches", "segments"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


@dataclass
class CompiledJob:
    """What :func:`trainproof.compile` returns."""

    name: str
    program: Program
    initial_state: dict[str, np.ndarray]
    state_dict_layout: tuple[StateEntry, ...]
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    frozen: tuple[str, ...] = ()
    optimizer: str = ""
    compile_seconds: float = 0.0
    capture_seconds: float = 0.0
    aten_nodes: int = 0
    eval_program: Program | None = None
    eval_tables: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: gradient accumulation over this many micro-batches, and each one's op range
    micro_batches: int = 1
    segments: tuple[Segment, ...] = ()
    _roots: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def program_root(self) -> bytes:
        if "program" not in self._roots:
            self._roots["program"] = self.program.root()
        return self._roots["program"]

    @property
    def initial_root(self) -> bytes:
        if "initial" not in self._roots:
            self._roots["initial"] = state_root_of(self.program, self.initial_state)
        return self._roots["initial"]

    def stats(self) -> dict[str, object]:
        ops = self.program.ops
        counts: dict[str, int] = {}
        for op in ops:
            counts[op.opcode.name] = counts.get(op.opcode.name, 0) + 1
        persistent = [s for s in self.program.slots if s.persistent]
        return {
            "ops": len(ops),
            "slots": len(self.program.slots),
            "persistent_slots": len(persistent),
            "persistent_floats": int(sum(s.numel for s in persistent)),
            "program_bytes": 128 * len(ops),
            "aten_nodes": self.aten_nodes,
            "compile_seconds": round(self.compile_seconds, 3),
            "opcodes": dict(sorted(counts.items())),
        }

    def manifest(self) -> JobManifest:
        return JobManifest(
            name=self.name,
            program_root=to_hex(self.program_root),
            initial_root=to_hex(self.initial_root),
            ops=len(self.program.ops),
            slots=len(self.program.slots),
            x_shape=self.x_shape,
            y_shape=self.y_shape,
            optimizer=self.optimizer,
            frozen=self.frozen,
            state_dict_layout=self.state_dict_layout,
            compile_seconds=self.compile_seconds,
            aten_nodes=self.aten_nodes,
            micro_batches=self.micro_batches if self.micro_batches > 1 else None,
            segments=self.segments if self.micro_batches > 1 else None,
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "program.json").write_text(self.program.model_dump_json())
        data = {k: np.asarray(v, dtype="<f4", order="C") for k, v in self.initial_state.items()}
        (folder / "initial.safetensors").write_bytes(safetensors.numpy.save(data))
        if self.eval_program is not None:
            (folder / "eval_program.json").write_text(self.eval_program.model_dump_json())
            tables = {k: np.asarray(v, dtype="<f4", order="C") for k, v in self.eval_tables.items()}
            (folder / "eval_tables.safetensors").write_bytes(safetensors.numpy.save(tables))
        (folder / "job.json").write_text(self.manifest().model_dump_json(indent=1))

    @classmethod
    def load(cls, folder: Path) -> CompiledJob:
        path = folder / "job.json"
        if not path.is_file():
            raise SpecError(f"{folder} has no job.json; is it a job folder?")
        man = JobManifest.model_validate_json(path.read_bytes())
        program = Program.model_validate_json((folder / "program.json").read_bytes())
        validate_program(program)
        initial = safetensors.numpy.load((folder / "initial.safetensors").read_bytes())
        eval_program, eval_tables = None, {}
        if (folder / "eval_program.json").is_file():
            eval_program = Program.model_validate_json((folder / "eval_program.json").read_bytes())
            validate_program(eval_program)
            raw = (folder / "eval_tables.safetensors").read_bytes()
            eval_tables = {k: np.asarray(v) for k, v in safetensors.numpy.load(raw).items()}
        job = cls(
            eval_program=eval_program,
            eval_tables=eval_tables,
            name=man.name,
            program=program,
            initial_state={k: np.asarray(v) for k, v in initial.items()},
            state_dict_layout=man.state_dict_layout,
            x_shape=man.x_shape,
            y_shape=man.y_shape,
            frozen=man.frozen,
            optimizer=man.optimizer,
            compile_seconds=man.compile_seconds,
            aten_nodes=man.aten_nodes,
            micro_batches=man.micro_batches or 1,
            segments=man.segments or (),
        )
        if to_hex(job.program_root) != man.program_root:
            raise SpecError(f"{folder}: program.json does not hash to job.json's program_root")
        if to_hex(job.initial_root) != man.initial_root:
            raise SpecError(f"{folder}: initial.safetensors does not hash to initial_root")
        return job


class CheckpointResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    state_root: Hex32
    loss: float


class JobRunManifest(BaseModel):
    """``run.json`` of a run of a compiled job."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["trainproof-job-run/v0"] = JOB_RUN_FORMAT
    job: str
    program_root: Hex32
    program_ops: int
    dataset_root: Hex32
    steps: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    backend: str
    device: str
    checkpoints: list[CheckpointRef] = []
    results: list[CheckpointResult] = []
    step_roots: list[Hex32] = []
    run_root: Hex32 | None = None
    steps_per_second: float | None = None
    heldout_accuracy: float | None = None
    #: how to regenerate the dataset (a ``--data`` form, and the dataset's spec), if known
    data_source: str | None = None
    dataset_spec: dict[str, int | str] | None = None


def _batch_shapes(program: Program) -> dict[int, tuple[int, ...]]:
    return {op.imm: op.shape for op in program.ops if op.opcode == Opcode.LOAD_BATCH}


def train(
    job: CompiledJob,
    dataset: BatchSource,
    steps: int,
    every: int,
    out: Path,
    backend: str = "torch",
    device: str = "cpu",
    on_checkpoint: Callable[[CheckpointResult], None] | None = None,
    data_source: str | None = None,
    ray: str | None = None,
) -> JobRunManifest:
    """Run ``steps`` canonical steps, checkpointing every ``every``; returns the run manifest
    (its ``results`` list each checkpoint's step, state root and loss). ``ray`` (``auto`` or
    ``HOST:PORT``): run each step's micro-batches on that Ray cluster's workers
    (``replay.scale.microbatch``; the job must be compiled with micro-batches): the same
    checkpoints and roots."""
    out = Path(out)
    if steps < 1 or every < 1 or steps % every:
        raise SpecError(f"steps {steps} must be a positive multiple of every {every}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError(f"{out} exists and is not an empty folder; choose a new out")
    shapes = _batch_shapes(job.program)
    x0, y0 = dataset.batch(0)
    for which, arr, label in ((BATCH_X, x0, "x"), (BATCH_Y, y0, "y")):
        want = shapes.get(which)
        if want is not None and tuple(arr.shape) != want:
            raise SpecError(f"dataset batch {label} has shape {arr.shape}, the job reads {want}")
    program = job.program
    if ray is not None:
        from replay.scale.microbatch import open_executor

        executor: Any = open_executor(program, job.segments, ray, backend, device)
    else:
        executor = make_executor(program, backend, device)
    try:
        return _train(job, dataset, steps, every, out, backend, device, on_checkpoint,
                      data_source, executor)  # fmt: skip
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()


def _train(
    job: CompiledJob,
    dataset: BatchSource,
    steps: int,
    every: int,
    out: Path,
    backend: str,
    device: str,
    on_checkpoint: Callable[[CheckpointResult], None] | None,
    data_source: str | None,
    executor: Any,
) -> JobRunManifest:
    program = job.program
    executor.set_state(job.initial_state)
    job.save(out / "job")
    ckpt_dir = out / CHECKPOINT_DIR
    run = JobRunManifest(
        job=job.name,
        program_root=to_hex(job.program_root),
        program_ops=len(program.ops),
        dataset_root=to_hex(dataset.root(steps)),
        steps=steps,
        checkpoint_every=every,
        backend=backend,
        device=device,
        data_source=data_source,
        dataset_spec=_spec_of(dataset),
    )

    def checkpoint(step: int, values: dict[str, np.ndarray]) -> None:
        manifest = save_checkpoint(ckpt_dir, step, program, values)
        run.checkpoints.append(
            CheckpointRef(
                step=step,
                state_root=manifest.state_root,
                manifest=f"{CHECKPOINT_DIR}/{Path(manifest.file).stem}.json",
            )
        )
        result = CheckpointResult(
            step=step, state_root=manifest.state_root, loss=float(values[LOSS_SLOT])
        )
        run.results.append(result)
        _write(out, run)
        if on_checkpoint:
            on_checkpoint(result)

    state = dict(job.initial_state)
    run.step_roots.append(to_hex(state_root_of(program, state)))
    checkpoint(0, state)
    t0 = time.perf_counter()
    state = run_steps(
        program, executor, dataset, range(steps), every, state, run.step_roots, checkpoint
    )
    run.steps_per_second = steps / max(time.perf_counter() - t0, 1e-9)
    run.heldout_accuracy = heldout_accuracy(job, dataset, state, backend, device)
    run.run_root = to_hex(run_root_of([from_hex(c.state_root) for c in run.checkpoints]))
    _write(out, run)
    return run


def heldout_accuracy(
    job: CompiledJob,
    dataset: object,
    state: dict[str, np.ndarray],
    backend: str = "torch",
    device: str = "cpu",
) -> float | None:
    """Accuracy (argmax of the last axis vs the labels) of the canonical eval forward on the
    dataset's held-out split, or None without an eval program / a split of its size."""
    program = job.eval_program
    x_test = getattr(dataset, "x_test", None)
    y_test = getattr(dataset, "y_test", None)
    if program is None or x_test is None or y_test is None or len(x_test) == 0:
        return None
    x_slot = program.slots[program.slot_index("eval.x")]
    if tuple(x_test.shape) != x_slot.shape:
        return None
    values: dict[str, np.ndarray] = {}
    for slot in program.slots:
        if not slot.persistent:
            continue
        if slot.name == "eval.x":
            values[slot.name] = np.asarray(x_test, np.float32)
        elif slot.name in job.eval_tables:
            values[slot.name] = job.eval_tables[slot.name]
        elif slot.name in state:
            values[slot.name] = state[slot.name]
        else:
            values[slot.name] = np.zeros(slot.shape, np.float32)
    ex = make_executor(program, backend, device)
    ex.set_state(values)
    ex.run_step(None)
    logits = ex.get_state()["logits"]
    pred = np.argmax(logits, axis=-1)
    return float(np.mean(pred == np.asarray(y_test).astype(np.int64)))


def _spec_of(dataset: object) -> dict[str, int] | None:
    spec = getattr(dataset, "spec", None)
    dump = getattr(spec, "model_dump", None)
    return dict(dump()) if callable(dump) else None


def replay_job(
    run_dir: Path,
    dataset: BatchSource,
    backend: str = "torch",
    device: str = "cpu",
    on_result: Callable[[ReplayResult], None] | None = None,
) -> list[ReplayResult]:
    """Re-execute every checkpoint interval of a job run from its stored checkpoint (loaded
    as untrusted, §3.11) and compare each end root with the committed one."""
    run_dir = Path(run_dir)
    run = read_job_run(run_dir)
    job = CompiledJob.load(run_dir / "job")
    if to_hex(job.program_root) != run.program_root:
        raise CheckpointError("run.json and job/ commit different programs")
    if to_hex(dataset.root(run.steps)) != run.dataset_root:
        raise CheckpointError("the dataset given does not hash to the run's dataset_root")
    refs = {c.step: c for c in run.checkpoints}
    roots = [from_hex(r) for r in run.step_roots]
    executor = make_executor(job.program, backend, device)
    results = []
    k = run.checkpoint_every
    for start in range(0, max(refs), k):
        ref = refs[start]
        manifest = resolve_inside(run_dir, ref.manifest, "checkpoint manifest")
        _, values = load_checkpoint(manifest, job.program, from_hex(ref.state_root))
        executor.set_state(values)
        first_bad = None
        root = b""
        for t in range(start, start + k):
            executor.run_step(dataset.batch(t))
            root = state_root_of(job.program, executor.get_state())
            if first_bad is None and len(roots) > t + 1 and root != roots[t + 1]:
                first_bad = t + 1
        expected = from_hex(refs[start + k].state_root)
        if root != expected and first_bad is None:
            first_bad = start + k
        result = ReplayResult(start, start + k, root, expected, first_bad)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def _write(folder: Path, run: JobRunManifest) -> None:
    tmp = folder / "run.json.tmp"
    tmp.write_text(run.model_dump_json(indent=1))
    os.replace(tmp, folder / "run.json")


def read_job_run(folder: Path) -> JobRunManifest:
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no run.json; is it a run folder?")
    return JobRunManifest.model_validate_json(path.read_bytes())


def load_state(run_dir: Path, step: int) -> tuple[CompiledJob, dict[str, np.ndarray]]:
    """(the job, every persistent slot at checkpoint ``step``), verified against the roots."""
    run_dir = Path(run_dir)
    run = read_job_run(run_dir)
    job = CompiledJob.load(run_dir / "job")
    if to_hex(job.program_root) != run.program_root:
        raise CheckpointError("run.json and job/ commit different programs")
    ref = next((c for c in run.checkpoints if c.step == step), None)
    if ref is None:
        raise CheckpointError(f"the run has no checkpoint at step {step}")
    manifest = resolve_inside(run_dir, ref.manifest, "checkpoint manifest")
    _, values = load_checkpoint(manifest, job.program, from_hex(ref.state_root))
    return job, values


def export_state_dict(run_dir: Path, step: int) -> dict[str, object]:
    """The model's ``state_dict`` at checkpoint ``step``: its own keys, shapes and dtypes
    (tied weights appear under each of their names)."""
    import torch

    job, values = load_state(run_dir, step)
    out: dict[str, object] = {}
    for e in job.state_dict_layout:
        arr = np.asarray(values[e.slot], dtype=np.float32).reshape(e.shape)
        t = torch.from_numpy(arr.copy()).to(getattr(torch, e.dtype))
        out[e.key] = t
    return out


def copy_job(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
