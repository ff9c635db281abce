"""GPT-2 small (124M) on the CPU: one canonical training step vs native torch, and its trace.

    .venv/bin/python bench/gpt2_step.py [--batch 4] [--ctx 256] [--threads 2] [--repeats 2]

Compiles examples/gpt2_small.py (12 layers, d 768, vocab 50,257, AdamW) at ``batch x ctx``
tokens with the front end and saves the job; then, each in a fresh subprocess (so peak memory
is the step's own, not the compiler's): the canonical step (``TorchExecutor.run_step``) and
the same model's native torch step (autograd + torch.optim.AdamW), alternating, ``--repeats``
timed steps each after one warm-up; peak RSS of each process; and the step's full op-level
dispute trace (``StepTrace`` on the torch backend). Threads pinned. Writes
bench/results/gpt2_step.json and prints a table. Takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(1, str(ROOT / "examples"))


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a
    child inherits from the process that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def compile_job(batch: int, ctx: int, out: Path) -> dict[str, float]:
    import gpt2_small

    import trainproof

    model, opt, loss_fn, example = gpt2_small.factory(batch=batch, ctx=ctx)
    t0 = time.perf_counter()
    job = trainproof.compile(model, opt, loss_fn, example)
    seconds = time.perf_counter() - t0
    job.save(out)
    return {
        "compile_seconds": seconds,
        "ops": len(job.program.ops),
        "compile_peak_rss_gb": peak_rss_gb(),
    }


def run_part(part: str, job_dir: Path, batch: int, ctx: int, threads: int, repeats: int) -> dict:
    """One measurement in this (fresh) process: ``canonical``, ``native`` or ``trace``."""
    import numpy as np
    import torch

    from bench._report import pin_threads, spread

    pin_threads(threads)
    if part == "native":
        import gpt2_small

        model, opt, loss_fn, (x, y) = gpt2_small.factory(batch=batch, ctx=ctx)
        samples = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if i:
                samples.append(time.perf_counter() - t0)
        return {"seconds": spread(samples), "peak_rss_gb": peak_rss_gb()}
    from replay.compile.job import CompiledJob
    from replay.dispute.trace import StepTrace
    from replay.execute.torch_backend import TorchExecutor

    job = CompiledJob.load(job_dir)
    g = torch.Generator().manual_seed(0)
    vocab = 50257
    x = torch.randint(0, vocab, (batch, ctx), generator=g).numpy().astype(np.float32)
    y = torch.randint(0, vocab, (batch, ctx), generator=g).numpy().astype(np.float32)
    if part == "trace":
        start = dict(job.initial_state)
        t0 = time.perf_counter()
        trace = StepTrace(job.program, start, (x, y), "torch")
        return {"seconds": time.perf_counter() - t0, "roots": len(trace.op_roots),
                "peak_rss_gb": peak_rss_gb()}  # fmt: skip
    ex = TorchExecutor(job.program)
    ex.set_state(job.initial_state)
    samples = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        ex.run_step((x, y))
        if i:
            samples.append(time.perf_counter() - t0)
    return {"seconds": spread(samples), "peak_rss_gb": peak_rss_gb(),
            "loss": float(ex.get_state()["loss"])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, pinned")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up")
    ap.add_argument("--part", choices=["canonical", "native", "trace"], help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(
            json.dumps(
                run_part(args.part, args.job, args.batch, args.ctx, args.threads, args.repeats)
            )
        )
        return
    from bench._report import table, write

    with tempfile.TemporaryDirectory() as tmp:
        job_dir = Path(tmp) / "job"
        compiled = compile_job(args.batch, args.ctx, job_dir)
        print(f"compiled: {compiled}", flush=True)
        parts: dict[str, list[dict]] = {"canonical": [], "native": []}
        for _ in range(2):  # alternate the two, each in a fresh process
            for part in ("canonical", "native"):
                done = subprocess.run(
                    [sys.executable, __file__, "--part", part, "--job", str(job_dir),
                     "--batch", str(args.batch), "--ctx", str(args.ctx),
                     "--threads", str(args.threads), "--repeats", str(args.repeats)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                parts[part].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(part, parts[part][-1], flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--part", "trace", "--job", str(job_dir),
             "--batch", str(args.batch), "--ctx", str(args.ctx), "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        trace = json.loads(done.stdout.strip().splitlines()[-1])
        print("trace", trace, flush=True)
    canon = min(p["seconds"]["median"] for p in parts["canonical"])
    native = min(p["seconds"]["median"] for p in parts["native"])
    result = {
        "what": "GPT-2 small (124M) training step on the CPU: canonical / native torch",
        "tokens": f"{args.batch}x{args.ctx}", "threads_pinned": args.threads, **compiled,
        "canonical": parts["canonical"], "native": parts["native"], "trace": trace,
        "canonical_step_seconds": canon, "native_step_seconds": native,
        "ratio": canon / native, "trace_over_step": trace["seconds"] / canon,
        "canonical_peak_rss_gb": max(p["peak_rss_gb"] for p in parts["canonical"]),
        "ratio_is": "best-of-2-processes median canonical step / same for native",
    }  # fmt: skip
    table(
        f"GPT-2 small, {args.batch}x{args.ctx} tokens, {args.threads} threads",
        ["measure", "value"],
        [["canonical step s", f"{canon:.2f}"], ["native step s", f"{native:.2f}"],
         ["ratio", f"{result['ratio']:.2f}x"],
         ["canonical peak RSS GB", f"{result['canonical_peak_rss_gb']:.2f}"],
         ["trace s (x step)", f"{trace['seconds']:.1f} ({result['trace_over_step']:.2f}x)"]],
    )  # fmt: skip
    print(f"wrote {write('gpt2_step', result)}")


if __name__ == "__main__":
    main()
