"""Training runs and their replay: the run folder, checkpoints every k steps, per-step roots.

Run folder layout::

    DIR/run.json                          RunManifest (specs, roots, checkpoint list)
    DIR/checkpoints/step_XXXXXXXX.json    CheckpointManifest
    DIR/checkpoints/step_XXXXXXXX.safetensors
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.ir import Program
from protocol.merkle import merkle_root
from replay.compile.compiler import EVAL_X, LOGITS, compile_eval, compile_train, initial_state
from replay.compile.examples import get_example
from replay.compile.spec import MLPSpec
from replay.data.checkpoint import (
    Hex32,
    from_hex,
    load_checkpoint,
    resolve_inside,
    save_checkpoint,
    to_hex,
)
from replay.data.dataset import Dataset, DatasetSpec
from replay.errors import CheckpointError, SpecError
from replay.execute.backends import make_executor
from replay.execute.state import StateRootPipeline, state_root_of

RUN_FORMAT = "trainproof-run/v0"
CHECKPOINT_DIR = "checkpoints"
MAX_RUN_JSON_BYTES = 64 << 20


class CheckpointRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(ge=0)
    state_root: Hex32
    manifest: str = Field(min_length=1, max_length=255)


class RunManifest(BaseModel):
    """What a training run commits to (run.json)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["trainproof-run/v0"] = RUN_FORMAT
    example: str
    model: MLPSpec
    dataset: DatasetSpec
    program_root: Hex32
    program_ops: int = Field(ge=0)
    dataset_root: Hex32
    steps: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    backend: str
    device: str
    checkpoints: list[CheckpointRef] = []
    #: state root at every step boundary 0..steps (index t = after t steps)
    step_roots: list[Hex32] = []
    run_root: Hex32 | None = None
    heldout_accuracy: float | None = None

    def checkpoint_root(self, step: int) -> bytes:
        for c in self.checkpoints:
            if c.step == step:
                return from_hex(c.state_root)
        raise CheckpointError(f"the run has no checkpoint at step {step}")


def run_root_of(checkpoint_roots: list[bytes]) -> bytes:
    """``run_root = MTH(C_0, C_k, ..., C_N)``."""
    return merkle_root(checkpoint_roots)


def write_run(folder: Path, run: RunManifest) -> None:
    tmp = folder / "run.json.tmp"
    tmp.write_text(run.model_dump_json(indent=1))
    os.replace(tmp, folder / "run.json")


def read_run(folder: Path) -> RunManifest:
    path = folder / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no run.json; is it a run folder?")
    if path.stat().st_size > MAX_RUN_JSON_BYTES:
        raise CheckpointError(f"{path} is larger than {MAX_RUN_JSON_BYTES} bytes")
    try:
        return RunManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise CheckpointError(
            f"{path} is malformed ({first['msg']}{f' at {where}' if where else ''}): it is not "
            "a run.json written by trainproof train; train the run again"
        ) from None


def heldout_accuracy(
    model: MLPSpec, dataset: Dataset, params: dict[str, np.ndarray], backend: str, device: str
) -> float:
    """Accuracy of the canonical forward pass on the held-out split."""
    program = compile_eval(model, len(dataset.x_test))
    ex = make_executor(program, backend, device)
    state = {k: v for k, v in params.items() if k in {s.name for s in program.slots}}
    state[EVAL_X] = dataset.x_test
    state[LOGITS] = np.zeros((len(dataset.x_test), model.num_classes), dtype=np.float32)
    ex.set_state(state)
    ex.run_step(None)
    pred = np.argmax(ex.get_state()[LOGITS], axis=1)
    return float(np.mean(pred == dataset.y_test.astype(np.int64)))


def run_steps(
    program: Program,
    executor: Any,
    dataset: Any,
    steps: range,
    every: int,
    state: dict[str, np.ndarray],
    step_roots: list[str],
    checkpoint: Callable[[int, dict[str, np.ndarray]], None],
    on_step: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The training loop both runners share: each step of ``steps``, its state root appended
    to ``step_roots`` (hashed on a thread during the next step, drained before every
    checkpoint, so a written run never lacks a root), ``checkpoint`` every ``every`` steps.
    Returns the last state."""
    with StateRootPipeline(program) as roots:
        for t in steps:
            executor.run_step(dataset.batch(t))
            state = executor.get_state()
            roots.add(state)
            if (t + 1) % every == 0:
                step_roots.extend(to_hex(r) for r in roots.drain())
                checkpoint(t + 1, state)
            if on_step:
                on_step(t + 1)
        step_roots.extend(to_hex(r) for r in roots.drain())
    return state


@dataclass(frozen=True)
class CheckpointEvent:
    step: int
    state_root: bytes
    loss: float


def train(
    example: str,
    steps: int,
    checkpoint_every: int,
    out: Path,
    backend: str = "torch",
    device: str = "cpu",
    on_checkpoint: Callable[[CheckpointEvent], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RunManifest:
    """Train ``example`` for ``steps`` steps, checkpointing every ``checkpoint_every``."""
    if steps < 1 or checkpoint_every < 1:
        raise SpecError("--steps and --checkpoint-every must be at least 1")
    if steps % checkpoint_every:
        raise SpecError(
            f"--steps {steps} is not a multiple of --checkpoint-every {checkpoint_every}: the run "
            "commits C_0, C_k, ..., C_N"
        )
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} is a file, not a folder: name a new folder for the run")
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"{out} exists and is not an empty folder; choose a new --out")
    ex_spec = get_example(example)
    model = ex_spec.model
    program = compile_train(model)
    dataset = Dataset(ex_spec.dataset)
    executor = make_executor(program, backend, device)
    state = initial_state(model, program)
    executor.set_state(state)
    out.mkdir(parents=True, exist_ok=True)
    run = RunManifest(
        example=example,
        model=model,
        dataset=ex_spec.dataset,
        program_root=to_hex(program.root()),
        program_ops=len(program.ops),
        dataset_root=to_hex(dataset.root(steps)),
        steps=steps,
        checkpoint_every=checkpoint_every,
        backend=backend,
        device=device,
    )
    return _continue(out, run, program, dataset, executor, state, 0, on_checkpoint, on_step)


def resume(
    out: Path,
    on_checkpoint: Callable[[CheckpointEvent], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RunManifest:
    """Continue an interrupted run in ``out`` from its last checkpoint (same example, steps,
    backend and device as it started with); a finished run is returned as it is."""
    run = read_run(out)
    if run.run_root is not None:
        return run
    program, dataset = check_run_commitments(run)
    last = max(c.step for c in run.checkpoints)
    ref = next(c for c in run.checkpoints if c.step == last)
    manifest_path = resolve_inside(out, ref.manifest, "checkpoint manifest")
    _, state = load_checkpoint(manifest_path, program, from_hex(ref.state_root))
    executor = make_executor(program, run.backend, run.device)
    executor.set_state(state)
    state = executor.get_state()
    del run.step_roots[last + 1 :]
    return _continue(out, run, program, dataset, executor, state, last, on_checkpoint, on_step)


def _continue(
    out: Path,
    run: RunManifest,
    program: Program,
    dataset: Dataset,
    executor: Any,
    state: dict[str, np.ndarray],
    start: int,
    on_checkpoint: Callable[[CheckpointEvent], None] | None,
    on_step: Callable[[int], None] | None,
) -> RunManifest:
    """Train ``run`` from step ``start`` (its checkpoint already written) to the end."""
    steps, checkpoint_every, model = run.steps, run.checkpoint_every, run.model
    backend, device = run.backend, run.device
    ckpt_dir = out / CHECKPOINT_DIR

    def checkpoint(step: int, values: dict[str, np.ndarray]) -> None:
        manifest = save_checkpoint(ckpt_dir, step, program, values)
        run.checkpoints.append(
            CheckpointRef(
                step=step,
                state_root=manifest.state_root,
                manifest=f"{CHECKPOINT_DIR}/{Path(manifest.file).stem}.json",
            )
        )
        write_run(out, run)
        if on_checkpoint:
            on_checkpoint(
                CheckpointEvent(step, from_hex(manifest.state_root), float(values["loss"]))
            )

    if start == 0:
        run.step_roots.append(to_hex(state_root_of(program, state)))
        checkpoint(0, state)
    state = run_steps(
        program, executor, dataset, range(start, steps), checkpoint_every, state,
        run.step_roots, checkpoint, on_step,
    )  # fmt: skip
    run.run_root = to_hex(run_root_of([from_hex(c.state_root) for c in run.checkpoints]))
    run.heldout_accuracy = heldout_accuracy(model, dataset, state, backend, device)
    write_run(out, run)
    return run


@dataclass(frozen=True)
class ReplayResult:
    """One replayed interval [start, step]: the replayed end root against the committed one."""

    start: int
    step: int
    state_root: bytes
    expected: bytes
    first_mismatch_step: int | None

    @property
    def match(self) -> bool:
        return self.state_root == self.expected

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "step": self.step,
            "state_root": to_hex(self.state_root),
            "expected": to_hex(self.expected),
            "match": self.match,
        }
        if not self.match:
            out["first_mismatch_step"] = self.first_mismatch_step
        return out


def check_run_commitments(run: RunManifest) -> tuple[Program, Dataset]:
    """Recompile the program and dataset from the run's specs; both roots must match."""
    program = compile_train(run.model)
    if to_hex(program.root()) != run.program_root:
        raise CheckpointError(
            f"run.json commits program root {run.program_root}, but its model spec compiles to "
            f"{to_hex(program.root())}"
        )
    if run.dataset.batch_size != run.model.batch_size:
        raise CheckpointError("run.json: dataset and model batch sizes differ")
    dataset = Dataset(run.dataset)
    if to_hex(dataset.root(run.steps)) != run.dataset_root:
        raise CheckpointError("run.json: dataset root does not match the dataset spec")
    steps = sorted(c.step for c in run.checkpoints)
    want = list(range(0, run.steps + 1, run.checkpoint_every))
    if steps != want[: len(steps)]:
        raise CheckpointError(
            f"run.json lists checkpoints at {steps[:8]}..., expected {want[:8]}..."
        )
    if run.run_root is not None and len(steps) == len(want):
        ordered = sorted(run.checkpoints, key=lambda c: c.step)
        if to_hex(run_root_of([from_hex(c.state_root) for c in ordered])) != run.run_root:
            raise CheckpointError("run.json: run_root is not MTH of its checkpoint roots")
    return program, dataset


def replay(
    folder: Path,
    from_step: int | None = None,
    to_step: int | None = None,
    backend: str = "torch",
    device: str = "cpu",
    on_result: Callable[[ReplayResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[ReplayResult]:
    """Re-execute each checkpoint interval in [from_step, to_step] from its stored checkpoint."""
    run = read_run(folder)
    program, dataset = check_run_commitments(run)
    k = run.checkpoint_every
    last = max(c.step for c in run.checkpoints)
    if run.run_root is None and last == 0:
        raise CheckpointError(
            f"the run in {folder} is incomplete: training stopped before its first checkpoint "
            f"after step 0 (of {run.steps}); nothing to replay yet: resume it with "
            f"trainproof train --resume --out {folder}"
        )
    a = 0 if from_step is None else from_step
    b = last if to_step is None else to_step
    if a % k or b % k or not 0 <= a < b <= last:
        raise SpecError(
            f"--from-step {a} and --to-step {b} must be checkpoint steps (multiples of {k}) with "
            f"0 <= from < to <= {last}"
        )
    refs = {c.step: c for c in run.checkpoints}
    step_roots = [from_hex(r) for r in run.step_roots] if len(run.step_roots) > b else None
    executor = make_executor(program, backend, device)
    results: list[ReplayResult] = []
    for start in range(a, b, k):
        ref = refs[start]
        manifest_path = resolve_inside(folder, ref.manifest, "checkpoint manifest")
        _, values = load_checkpoint(manifest_path, program, from_hex(ref.state_root))
        executor.set_state(values)
        first_bad: int | None = None
        root = b""
        for t in range(start, start + k):
            executor.run_step(dataset.batch(t))
            root = state_root_of(program, executor.get_state())
            if first_bad is None and step_roots is not None and root != step_roots[t + 1]:
                first_bad = t + 1
            if on_step:
                on_step(t + 1)
        expected = run.checkpoint_root(start + k)
        if root != expected and first_bad is None:
            first_bad = start + k
        result = ReplayResult(start, start + k, root, expected, first_bad)
        results.append(result)
        if on_result:
            on_result(result)
    return results
