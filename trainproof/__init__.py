"""trainproof: optimistically verifiable ML training. The CLI lives in trainproof.cli.

The Python API (docs/protocol.md §3.14)::

    job = trainproof.compile(model, optimizer, loss_fn, example=(x, y))  # micro_batches=N
    data = trainproof.datasets.from_arrays(x, y, batch_size=64, seed=0, heldout=300)
    run = trainproof.train(job, data, steps=200, every=50, out="runs/a")
    model.load_state_dict(trainproof.export_state_dict("runs/a", 200), strict=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replay.compile.job import CompiledJob

__all__ = ["CompileError", "CompiledJob", "compile", "datasets", "export_state_dict", "train"]


def compile(model: Any, optimizer: Any, loss_fn: Any, example: Any, **options: Any) -> CompiledJob:
    """Capture one training step of ``model`` + ``loss_fn`` + ``optimizer`` as an IR program;
    see :func:`replay.compile.frontend.compile`."""
    from replay.compile.frontend import compile as _compile

    return _compile(model, optimizer, loss_fn, example, **options)


def train(
    job: CompiledJob,
    dataset: Any,
    steps: int,
    every: int,
    out: Any,
    backend: str = "torch",
    ray: str | None = None,
) -> Any:
    """Train ``job`` canonically on ``dataset``; returns the run manifest, whose ``results``
    list each checkpoint's step, state root and loss. ``ray`` (``auto`` or ``HOST:PORT``):
    run each step's micro-batches (``compile(..., micro_batches=N)``) on that Ray cluster's
    workers; the same checkpoints and roots."""
    from pathlib import Path

    from replay.compile.job import train as _train

    return _train(job, dataset, steps, every, Path(out), backend=backend, ray=ray)


def export_state_dict(run_dir: Any, step: int) -> dict[str, Any]:
    """The model's ``state_dict`` (own names, shapes, dtypes) at checkpoint ``step``."""
    from pathlib import Path

    from replay.compile.job import export_state_dict as _export

    return _export(Path(run_dir), step)


def __getattr__(name: str) -> Any:
    if name == "datasets":
        import importlib

        return importlib.import_module("trainproof.datasets")
    if name == "CompiledJob":
        from replay.compile.job import CompiledJob

        return CompiledJob
    if name == "CompileError":
        from replay.compile.frontend import CompileError

        return CompileError
    raise AttributeError(name)
