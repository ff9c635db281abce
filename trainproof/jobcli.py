"""``trainproof compile`` and ``trainproof train --job``: the PyTorch front end on the CLI.

stdout carries JSON lines (machine-readable), stderr a progress bar.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from protocol.errors import TrainproofError


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def load_factory(spec: str) -> Any:
    """``FILE.py:FACTORY`` → the factory function."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise typer.BadParameter("expected FILE.py:FACTORY", param_hint="--model")
    file = Path(path)
    if not file.is_file():
        raise typer.BadParameter(f"{file} does not exist", param_hint="--model")
    mod_spec = importlib.util.spec_from_file_location(f"trainproof_user_{file.stem}", file)
    assert mod_spec and mod_spec.loader
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(file.parent.resolve()))
    mod_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if fn is None:
        raise typer.BadParameter(f"{file} has no {name}", param_hint="--model")
    return fn


def compile_command(
    model: Annotated[
        str, typer.Option(help="FILE.py:FACTORY returning model, optimizer, loss, (x, y)")
    ],
    out: Annotated[Path, typer.Option(help="new folder for the compiled job")],
    clip_grad_norm: Annotated[
        float | None, typer.Option(help="clip gradients to this norm")
    ] = None,
    eval_rows: Annotated[
        int | None, typer.Option(help="also compile the eval forward over this many held-out rows")
    ] = None,
    schedule_steps: Annotated[
        int | None, typer.Option(help="steps of the factory's lr scheduler to tabulate")
    ] = None,
    micro_batches: Annotated[
        int,
        typer.Option(
            help="gradient accumulation over N micro-batches of the example batch's rows "
            "(N divides the batch size; `train --ray` runs them on workers)"
        ),
    ] = 1,
) -> None:
    """Capture one training step of a PyTorch model and write the job folder."""
    from replay.compile.frontend import compile as compile_job

    factory = load_factory(model)
    made = factory()
    if not isinstance(made, tuple) or len(made) not in (4, 5):
        raise typer.BadParameter(
            "the factory must return (model, optimizer, loss_fn, (x, y)[, lr_scheduler])"
        )
    net, opt, loss_fn, example = made[:4]
    sched = made[4] if len(made) == 5 else None
    if sched is not None and not schedule_steps:
        raise typer.BadParameter("the factory returns an lr scheduler: give --schedule-steps")
    try:
        job = compile_job(
            net,
            opt,
            loss_fn,
            example,
            clip_grad_norm_to=clip_grad_norm,
            eval_rows=eval_rows,
            lr_schedule=sched,
            schedule_steps=schedule_steps,
            micro_batches=micro_batches,
            name=Path(model.rpartition(":")[0]).stem,
        )
    except TrainproofError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    job.save(out)
    stats = job.stats()
    stats.pop("opcodes", None)
    _emit({"job": str(out), "program_root": "0x" + job.program_root.hex(), **stats})


DATA_FORMS = (
    "digits (scikit-learn's digits); text:bytes (the torch 2.13.0 sources, one token per "
    "byte, vocab 256); text:bpe:VOCAB (the same text, a byte-level BPE of VOCAB tokens "
    "trained on the training files); FILE.npz / FILE.safetensors holding x and y; or a "
    "folder with x.npy and y.npy (memory-mapped: larger than memory streams)"
)


def load_data(
    spec: str, batch: int, seed: int, heldout: int | None, x_shape: tuple[int, ...]
) -> Any:
    """The dataset a ``--data`` form names, shaped for a job whose batch x is ``x_shape``."""
    from replay.errors import SpecError
    from trainproof import datasets

    if spec == "digits":
        return datasets.digits(
            batch, seed=seed, heldout=297 if heldout is None else heldout, image=len(x_shape) == 4
        )
    if spec == "text" or spec.startswith("text:"):
        parts = spec.split(":")
        if parts == ["text", "bytes"]:
            tokenizer, vocab = "bytes", 256
        elif len(parts) == 3 and parts[1] == "bpe" and parts[2].isdigit():
            tokenizer, vocab = "bpe", int(parts[2])
        else:
            raise SpecError(f"unknown --data form {spec!r}; expected text:bytes or text:bpe:VOCAB")
        if len(x_shape) != 2:
            raise SpecError(f"text data gives x of shape [B, context]; the job reads {x_shape}")
        return datasets.text(
            tokenizer,
            vocab,
            context=x_shape[1],
            batch_size=batch,
            seed=seed,
            heldout=5 if heldout is None else heldout,
        )
    if not Path(spec).exists():
        raise SpecError(f"unknown --data form {spec!r} (no such file); expected {DATA_FORMS}")
    return datasets.from_files(spec, batch, seed, heldout or 0)


def token_rows(program: Any) -> int | None:
    """The fewest rows of a table that a GATHER indexes by the batch's x (an embedding of
    token ids), or None when no op does."""
    from protocol.ir import BATCH_X, Opcode

    x_slots = {op.out for op in program.ops if op.opcode == Opcode.LOAD_BATCH and op.imm == BATCH_X}
    rows = [
        op.reduce_len
        for op in program.ops
        if op.opcode == Opcode.GATHER and op.operands and op.operands[0].slot in x_slots
    ]
    return min(rows) if rows else None


def check_vocab(job: Any, dataset: Any, data: str) -> None:
    """Refuse token ids beyond the job's embedding (GATHER would read them as +0.0 rows)."""
    from replay.errors import SpecError

    vocab = getattr(dataset, "vocab_size", None)
    rows = token_rows(job.program)
    if vocab is not None and rows is not None and vocab > rows:
        raise SpecError(
            f"--data {data} has {vocab} token ids but the job's embedding has {rows} rows"
        )


def train_job(
    job_dir: Path,
    data: str,
    steps: int,
    every: int,
    out: Path,
    backend: str,
    seed: int,
    heldout: int | None,
    ray: str | None = None,
) -> None:
    """``trainproof train --job``; with ``ray`` (``auto`` or ``HOST:PORT``) each step's
    micro-batches run on that Ray cluster's workers (same checkpoints and roots)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from replay.compile.job import CheckpointResult, CompiledJob, train
    from replay.scale.cluster import ClusterError

    try:
        job = CompiledJob.load(job_dir)
        title = f"training {job.name}"
        if ray is not None:
            from replay.scale.cluster import check_address
            from replay.scale.microbatch import segments_of

            check_address(ray)
            segments_of(job.program, job.segments)  # a job without micro-batches: one line
            title += f" ({job.micro_batches} micro-batches per step on Ray at {ray})"
        dataset = load_data(data, job.x_shape[0], seed, heldout, tuple(job.x_shape))
        check_vocab(job, dataset, data)
        t0 = time.perf_counter()
        last = [t0, 0]
        with Progress(
            TextColumn(title),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("steps", total=steps)

            def on_checkpoint(r: CheckpointResult) -> None:
                now = time.perf_counter()
                rate = (r.step - last[1]) / max(now - last[0], 1e-9) if r.step else None
                last[0], last[1] = now, r.step
                progress.update(task, completed=r.step)
                _emit(
                    {
                        "step": r.step,
                        "state_root": r.state_root,
                        "loss": r.loss,
                        "steps_per_second": rate,
                    }
                )

            run = train(
                job,
                dataset,
                steps,
                every,
                out,
                backend=backend,
                on_checkpoint=on_checkpoint,
                data_source=data,
                ray=ray,
            )
        if getattr(dataset, "tokenizer_json", None):
            (out / "tokenizer.json").write_text(dataset.tokenizer_json)
    except (TrainproofError, ClusterError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _emit(
        {
            "steps": run.steps,
            "run_root": run.run_root,
            "program_root": run.program_root,
            "dataset_root": run.dataset_root,
            "steps_per_second": run.steps_per_second,
            "heldout_accuracy": run.heldout_accuracy,
            **({"ray": ray, "micro_batches": job.micro_batches} if ray is not None else {}),
        }
    )


def replay_job_command(run_dir: Path, backend: str, device: str) -> None:
    """``trainproof replay`` of a job run: the dataset is regenerated from run.json."""
    from replay.compile.job import read_job_run, replay_job

    try:
        run = read_job_run(run_dir)
        spec = run.dataset_spec or {}
        if run.data_source is None or "batch_size" not in spec:
            raise typer.BadParameter("run.json does not say how to regenerate its dataset")
        dataset = load_data(
            run.data_source,
            int(spec["batch_size"]),
            int(spec["seed"]),
            int(spec["heldout"]),
            CompiledJobShape.of(run_dir),
        )
        mismatches = 0

        def on_result(r: Any) -> None:
            nonlocal mismatches
            mismatches += not r.match
            _emit(r.as_json())

        results = replay_job(run_dir, dataset, backend, device, on_result=on_result)
    except TrainproofError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    first = next((r.first_mismatch_step for r in results if not r.match), None)
    _emit({"checkpoints": len(results), "mismatches": mismatches, "first_mismatch_step": first})
    if mismatches:
        raise typer.Exit(code=1)


class CompiledJobShape:
    @staticmethod
    def of(run_dir: Path) -> tuple[int, ...]:
        from replay.compile.job import JobManifest

        man = JobManifest.model_validate_json((run_dir / "job" / "job.json").read_bytes())
        return man.x_shape


#: Where the built-in data forms come from, and under which licence (bundle metadata).
DATA_PROVENANCE = {
    "digits": (
        "UCI ML hand-written digits (8x8, 1,797 images), the copy bundled with scikit-learn",
        "CC BY 4.0",
    ),
    "text": (
        "Python sources of the pinned torch 2.13.0 wheel (docs/protocol.md §3.10.1)",
        "BSD-3-Clause",
    ),
}


def bundle_command(
    out: Annotated[Path, typer.Option(help="new folder for the bundle")],
    steps: Annotated[int, typer.Option(help="training steps N (one dataset batch each)")],
    job: Annotated[
        Path | None, typer.Option(help="compiled job folder (`trainproof compile --out`)")
    ] = None,
    data: Annotated[str | None, typer.Option(help=f"the training data: {DATA_FORMS}")] = None,
    example: Annotated[
        str | None,
        typer.Option(help="instead of --job and --data: a built-in example (digits-mlp)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="dataset shuffling seed")] = 0,
    heldout: Annotated[
        int | None, typer.Option(help="examples held out of training (default per --data)")
    ] = None,
    description: Annotated[str, typer.Option(help="what the job is, for people")] = "",
    licence: Annotated[str, typer.Option(help="the model's licence (SPDX id)")] = "",
    data_licence: Annotated[
        str | None, typer.Option(help="the data's licence (default: known for built-in forms)")
    ] = None,
    source: Annotated[
        list[Path] | None,
        typer.Option(help="model source file to include (repeatable; shown, never executed)"),
    ] = None,
) -> None:
    """Write a job bundle: the compiled program, C_0, N batches of the data (paged), and the
    metadata (description, licences, provenance, sources) — every part content-addressed,
    named by one hash that `trainproof job register --bundle` publishes and binds on-chain."""
    from replay.data.bundle import MAX_SOURCE_BYTES, save_bundle_dir
    from trainproof.agents import progress_bar

    if (example is None) == (job is None) or (job is None) != (data is None):
        _usage_error("give --job and --data (a compiled job), or --example")
    try:
        files: dict[str, bytes] = {}
        for path in source or []:
            if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
                _usage_error(f"--source {path} is not a file of at most {MAX_SOURCE_BYTES} bytes")
            files[path.name] = path.read_bytes()
        if example is not None:
            inputs = example_inputs(example, steps, description, licence, data_licence)
        else:
            assert job is not None and data is not None
            inputs = compiled_inputs(job, data, seed, heldout, description, licence, data_licence)
        address, manifest = save_bundle_dir(
            out, **inputs, steps=steps, sources=files,
            progress=progress_bar(f"writing {steps} batches"),
        )  # fmt: skip
    except TrainproofError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    ds = manifest.dataset
    _emit({"bundle": address, "out": str(out), "name": manifest.name, "steps": ds.steps,
           "pages": ds.pages, "dataset_bytes": ds.steps * ds.batch_bytes,
           "program_root": manifest.program_root})  # fmt: skip


def _data_info(form: str, spec: dict[str, Any], data_licence: str | None) -> Any:
    from replay.data.bundle import DataInfo

    known_source, known_licence = DATA_PROVENANCE.get(form.split(":")[0], (f"--data {form}", ""))
    return DataInfo(
        source=f"{known_source} (--data {form})",
        licence=known_licence if data_licence is None else data_licence,
        spec={"form": form, **spec},
    )


def compiled_inputs(
    job: Path, data: str, seed: int, heldout: int | None, description: str, licence: str,
    data_licence: str | None,
) -> dict[str, Any]:  # fmt: skip
    """write_bundle's inputs for a compiled job folder and a --data form."""
    from replay.compile.job import CompiledJob, _spec_of
    from replay.data.bundle import BundleMetadata

    compiled = CompiledJob.load(job)
    dataset = load_data(data, compiled.x_shape[0], seed, heldout, tuple(compiled.x_shape))
    check_vocab(compiled, dataset, data)
    metadata = BundleMetadata(
        name=compiled.name, description=description, licence=licence,
        data=_data_info(data, _spec_of(dataset) or {}, data_licence),
        config={"optimizer": compiled.optimizer, "frozen": list(compiled.frozen)},
        job=compiled.manifest().model_dump(mode="json"),
    )  # fmt: skip
    return {"program": compiled.program, "initial_state": compiled.initial_state,
            "dataset": dataset, "metadata": metadata}  # fmt: skip


def example_inputs(
    example: str, steps: int, description: str, licence: str, data_licence: str | None
) -> dict[str, Any]:
    """write_bundle's inputs for a built-in example (replay/compile/examples.py)."""
    from replay.compile.examples import get_example
    from replay.data.bundle import BundleMetadata
    from replay.dispute.players import example_computation

    comp = example_computation(example, steps, steps)
    ex = get_example(example)
    metadata = BundleMetadata(
        name=example,
        description=description or f"the built-in example {example} (replay/compile/examples.py)",
        licence=licence,
        data=_data_info("digits", ex.dataset.model_dump(), data_licence),
        config={"model": ex.model.model_dump(mode="json")},
    )
    return {"program": comp.program, "initial_state": comp.state_before(0),
            "dataset": comp.dataset, "metadata": metadata}  # fmt: skip


def _usage_error(line: str) -> NoReturn:
    """Options that do not fit together: one line on stderr, exit code 2."""
    typer.echo(f"error: {line} (see --help)", err=True)
    raise typer.Exit(code=2)
