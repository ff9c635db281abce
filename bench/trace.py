"""Dispute-trace throughput against the trainer's own throughput, side by side in one process.

    .venv/bin/python bench/trace.py [--models digits-mlp,small-gpt] [--threads 1]
                                    [--rounds 7] [--steps 40] [--every 10]

What a challenger computes when a dispute reaches the op level — one step's full op-level
trace (``StepTrace`` on the torch backend: every op's output hashed, every op boundary's state
root) — against what the trainer computes per step: ``trainproof.train`` on the same compiled
job and dataset (the canonical step, its state root hashed on a thread during the next step,
a checkpoint written every ``--every`` steps; its figure is the run manifest's
``steps_per_second``, the training loop without set-up). Each round runs, in turn
(interleaved, so a load change hits both alike): one training run of ``--steps`` steps, and
the traces of steps 0..``--every``-1 from the job's initial state. Both have the same cores:
torch pinned to ``--threads`` threads, plus the one hashing thread each uses (the trainer's
state-root pipeline, the trace's output hasher). Writes bench/results/trace.json (medians,
quartiles, the throughput ratio) and prints a table.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(1, str(ROOT / "examples"))

from rich.progress import track

import trainproof
from bench._report import pin_threads, spread, table, write
from bench.step import MODELS as STEP_MODELS
from replay.dispute.trace import StepTrace


def _small_gpt_data() -> Any:
    import small_gpt

    return small_gpt.dataset()


#: the models of bench/step.py (same weights and first batch) and the datasets they train on
MODELS: dict[str, tuple[str, Callable[[], tuple[Any, ...]], Callable[[], Any]]] = {
    "digits-mlp": (*STEP_MODELS["digits-mlp"], lambda: trainproof.datasets.digits(64, image=False)),
    "small-gpt": (*STEP_MODELS["small-gpt"], _small_gpt_data),
}


def measure(name: str, threads: int, rounds: int, steps: int, every: int) -> dict[str, Any]:
    _what, factory, dataset = MODELS[name]
    model, opt, loss_fn, example = factory()
    data = dataset()
    job = trainproof.compile(model, opt, loss_fn, example)
    program, start = job.program, job.initial_state
    pin_threads(threads)
    batches = [data.batch(t) for t in range(every)]

    def train_once() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            run = trainproof.train(job, data, steps=steps, every=every, out=Path(tmp) / "run")
        return 1.0 / float(run.steps_per_second)

    def trace_once() -> float:
        t0 = time.perf_counter()
        for b in batches:
            StepTrace(program, start, b, "torch")
        return (time.perf_counter() - t0) / len(batches)

    train_once(), trace_once()  # warm up: compiled executors, allocator, page cache
    train_s: list[float] = []
    trace_s: list[float] = []
    for _ in track(range(rounds), description=f"{name}, {threads} thread(s)"):
        train_s.append(train_once())
        trace_s.append(trace_once())
    ratio = statistics.median(train_s) / statistics.median(trace_s)
    return {
        "model": name, "what": MODELS[name][0], "threads": threads, "ops": len(program.ops),
        "train_seconds_per_step": spread(train_s), "trace_seconds_per_step": spread(trace_s),
        "trace_throughput_over_training": ratio,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"from {', '.join(MODELS)}")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts to pin")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved samples of each")
    ap.add_argument("--steps", type=int, default=40, help="steps per training run")
    ap.add_argument("--every", type=int, default=10, help="checkpoint interval; steps traced")
    args = ap.parse_args()
    if args.steps % args.every:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --every {args.every}")
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
        for th in (int(t) for t in args.threads.split(",")):
            rows.append(measure(name, th, args.rounds, args.steps, args.every))

    def ms(s: dict[str, float]) -> str:
        return f"{s['median'] * 1e3:.2f} ({s['p25'] * 1e3:.2f}-{s['p75'] * 1e3:.2f})"

    table(
        "dispute trace vs the trainer, ms per step: median (p25-p75)",
        ["model", "ops", "thr", "trainer ms/step", "trace ms/step", "trace/train throughput"],
        [
            [r["model"], str(r["ops"]), str(r["threads"]), ms(r["train_seconds_per_step"]),
             ms(r["trace_seconds_per_step"]), f"{r['trace_throughput_over_training']:.2f}x"]
            for r in rows
        ],
    )  # fmt: skip
    path = write(
        "trace",
        {
            "what": "one step's full op-level dispute trace vs the trainer's training loop",
            "trainer_is": "trainproof.train steps_per_second (step, pipelined state root, "
            "checkpoint every --every steps), inverted",
            "trace_is": "StepTrace(program, state, batch, 'torch') per step",
            "ratio_is": "median trainer seconds per step / median trace seconds per step",
            "rounds": args.rounds, "steps": args.steps, "every": args.every,
            "results": rows,
        },
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
