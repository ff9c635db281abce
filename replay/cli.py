"""``trainproof train`` and ``trainproof replay``: stdout carries JSON lines, stderr progress.

Registered as a typer app here; ``trainproof/cli.py`` (when it exists) adds these two
commands with ``app.command("train")(train_command)`` and
``app.command("replay")(replay_command)``. Until then: ``python -m replay train ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from protocol.errors import TrainproofError
from replay.data.checkpoint import to_hex
from replay.errors import SpecError
from replay.runner import CheckpointEvent, ReplayResult, read_run, replay, train
from replay.runner import resume as resume_run

stderr = Console(stderr=True)
app = typer.Typer(add_completion=False, help="Canonical training and bit-exact replay.")


def emit(obj: dict[str, object]) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Progress]:
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        yield progress


def fail(exc: Exception) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=2)


def train_command(
    out: Annotated[Path, typer.Option(help="new or empty folder for the run")],
    example: Annotated[str | None, typer.Option(help="example to train, e.g. digits-mlp")] = None,
    steps: Annotated[int | None, typer.Option(help="number of training steps N")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="checkpoint interval k (divides N)")
    ] = None,
    backend: Annotated[str, typer.Option(help="torch | numpy")] = "torch",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    resume: Annotated[
        bool, typer.Option(help="continue the interrupted run in --out from its last checkpoint")
    ] = False,
) -> None:
    """Train canonically; print {"step", "state_root", "loss", "steps_per_s"} per checkpoint,
    then held-out accuracy. Interrupted, a run can be continued with --resume."""
    started = time.monotonic()
    last = {"step": 0, "t": started}

    def on_checkpoint(e: CheckpointEvent) -> None:
        now = time.monotonic()
        rate = (e.step - last["step"]) / max(now - last["t"], 1e-9) if e.step else None
        last.update(step=e.step, t=now)
        line: dict[str, object] = {"step": e.step, "state_root": to_hex(e.state_root)}
        line["loss"] = e.loss if e.step else None  # C_0: no step has computed a loss yet
        line["steps_per_s"] = None if rate is None else round(rate, 2)
        emit(line)
        if e.step:
            stderr.print(
                f"checkpoint step {e.step}: loss {e.loss:.4f}, {rate:.1f} steps/s",
                highlight=False,
            )

    try:
        if resume:
            run_so_far = read_run(out)
            total, done = run_so_far.steps, max(c.step for c in run_so_far.checkpoints)
            last["step"] = done
            with progress_bar(f"resuming {run_so_far.example} at step {done}", total) as progress:
                task = progress.add_task("steps", total=total, completed=done)
                run = resume_run(
                    out, on_checkpoint, on_step=lambda t: progress.update(task, completed=t)
                )
        else:
            if example is None or steps is None or checkpoint_every is None:
                raise SpecError(
                    "say what to train: --example, --steps and --checkpoint-every "
                    "(or --resume to continue the run in --out)"
                )
            with progress_bar(f"training {example}", steps) as progress:
                task = progress.add_task("steps", total=steps)
                run = train(
                    example,
                    steps,
                    checkpoint_every,
                    out,
                    backend=backend,
                    device=device,
                    on_checkpoint=on_checkpoint,
                    on_step=lambda t: progress.update(task, completed=t),
                )
    except TrainproofError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        stderr.print(
            f"[bold yellow]interrupted:[/] the run in {out} is incomplete; continue it with "
            f"trainproof train --resume --out {out}",
            highlight=False,
        )
        raise typer.Exit(code=130) from None
    emit(
        {
            "steps": run.steps,
            "heldout_accuracy": run.heldout_accuracy,
            "run_root": run.run_root,
            "program_root": run.program_root,
            "dataset_root": run.dataset_root,
        }
    )


def replay_command(
    run: Annotated[Path, typer.Option(help="run folder written by `trainproof train`")],
    from_step: Annotated[int | None, typer.Option(help="first checkpoint step (default 0)")] = None,
    to_step: Annotated[int | None, typer.Option(help="last checkpoint step (default N)")] = None,
    backend: Annotated[str, typer.Option(help="torch | numpy")] = "torch",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
) -> None:
    """Re-execute each checkpoint interval from its stored checkpoint and compare roots."""
    mismatches = 0
    try:
        with progress_bar("replaying", 0) as progress:
            task = progress.add_task("steps", total=None)

            def on_result(r: ReplayResult) -> None:
                nonlocal mismatches
                mismatches += not r.match
                emit(r.as_json())

            results = replay(
                run,
                from_step,
                to_step,
                backend=backend,
                device=device,
                on_result=on_result,
                on_step=lambda t: progress.update(task, completed=t),
            )
    except TrainproofError as exc:
        raise fail(exc) from None
    first = next((r.first_mismatch_step for r in results if not r.match), None)
    complete = read_run(run).run_root is not None
    emit(
        {
            # C_from, ..., C_to: the start checkpoint and each replayed interval's end
            "checkpoints": len(results) + 1 if results else 0,
            "intervals": len(results),
            "mismatches": mismatches,
            "first_mismatch_step": first,
            "complete_run": complete,
        }
    )
    if not complete:
        stderr.print(
            f"note: the run in {run} is incomplete; continue it with "
            f"trainproof train --resume --out {run}",
            highlight=False,
        )
    if mismatches:
        raise typer.Exit(code=1)


app.command("train")(train_command)
app.command("replay")(replay_command)

if __name__ == "__main__":  # pragma: no cover
    app()
