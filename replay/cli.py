"""``trainproof train`` and ``trainproof replay``: stdout carries JSON lines, stderr progress.

Registered as a typer app here; ``trainproof/cli.py`` (when it exists) adds these two
commands with ``app.command("train")(train_command)`` and
``app.command("replay")(replay_command)``. Until then: ``python -m replay train ...``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from protocol.errors import TrainproofError
from replay.checkpoint import to_hex
from replay.runner import CheckpointEvent, ReplayResult, replay, train

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
    example: Annotated[str, typer.Option(help="example to train, e.g. digits-mlp")],
    steps: Annotated[int, typer.Option(help="number of training steps N")],
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint interval k (divides N)")],
    out: Annotated[Path, typer.Option(help="new or empty folder for the run")],
    backend: Annotated[str, typer.Option(help="torch | numpy")] = "torch",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
) -> None:
    """Train canonically; print {"step", "state_root"} per checkpoint, then held-out accuracy."""
    try:
        with progress_bar(f"training {example}", steps) as progress:
            task = progress.add_task("steps", total=steps)

            def on_checkpoint(e: CheckpointEvent) -> None:
                emit({"step": e.step, "state_root": to_hex(e.state_root)})

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
    emit({"checkpoints": len(results), "mismatches": mismatches, "first_mismatch_step": first})
    if mismatches:
        raise typer.Exit(code=1)


app.command("train")(train_command)
app.command("replay")(replay_command)

if __name__ == "__main__":  # pragma: no cover
    app()
