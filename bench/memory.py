"""Memory of one canonical training step and of its dispute trace, against the live set.

    .venv/bin/python bench/memory.py [--threads 1] [--models small,large] [--trace-backend numpy]

For each MLP (1024 → H ReLU → H ReLU → 10, AdamW, batch B: D1024-H1024 B128 = 2.1M parameters,
D1024-H2048 B256 = 6.3M) it measures, each in a fresh subprocess of this script:

- ``step``: one training step on the torch backend (``run_step_tensors``) of the program as
  compiled (FREE after each value's last read, ``replay.compile.liveness``);
- ``step_before``: the same ops with every FREE moved to the end (the placement before the
  liveness pass, ``replay.compile.liveness.frees_at_end``);
- ``trace``: ``replay.dispute.trace.StepTrace`` of the compiled step (every op-level root) plus the
  partial sums of one element of its largest MATMUL (what a dispute computes).

Peak extra RSS: the process sets everything up (program, executor with C_0 loaded, batch), then
resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``), reads VmRSS as the
baseline, runs the measured work, and reads VmHWM; extra = VmHWM - baseline. The live set is
computed from the program (``replay.compile.liveness.live_bytes``): the largest sum of
ephemeral slot bytes at any op boundary (persistent slots are in the baseline; the torch
step replaces each in place). A trace keeps S_0 to re-execute from, so its live set also
counts the persistent values already rewritten at that boundary. Writes
bench/results/memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# a child measuring another revision (--original) imports replay from that tree
sys.path.insert(0, os.environ.get("MEMORY_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

import numpy as np

from protocol.ir import Opcode, Program
from replay.compile.compiler import compile_train, initial_state, linear_shapes
from replay.compile.spec import AdamW, Linear, MLPSpec, ReLU

MODELS = {
    "small": ("D1024-H1024 B128", 1024, 1024, 128),
    "large": ("D1024-H2048 B256", 1024, 2048, 256),
}
TARGET_STEP = 1.25  # peak extra RSS <= live set + 25 %
TARGET_TRACE = 1.5  # trace peak <= 1.5x the step's peak
MMAP_THRESHOLD = 128 << 10


def spec_of(key: str) -> MLPSpec:
    _, d, h, b = MODELS[key]
    return MLPSpec(
        input_dim=d,
        num_classes=10,
        layers=(
            Linear(out_features=h),
            ReLU(),
            Linear(out_features=h),
            ReLU(),
            Linear(out_features=10),
        ),
        optimizer=AdamW(lr=1e-3),
        batch_size=b,
    )


def params_of(spec: MLPSpec) -> int:
    return sum(fan_in * fan_out + fan_out for _, fan_in, fan_out in linear_shapes(spec))


def before_program(program: Program) -> Program:
    from replay.compile.liveness import frees_at_end

    return Program(slots=program.slots, ops=tuple(frees_at_end(program.slots, program.ops)))


def largest_matmul(program: Program) -> int:
    mm = [j for j, op in enumerate(program.ops) if op.opcode == Opcode.MATMUL]
    return max(mm, key=lambda j: program.ops[j].numel * program.ops[j].reduce_len)


def batch_of(spec: MLPSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((spec.batch_size, spec.input_dim)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, spec.batch_size).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- child: one measurement


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def warm_up(what: str, trace_backend: str) -> None:
    """The same work on a tiny MLP of the same structure: torch's one-time lazy setup (kernel
    tables, thread pool, allocator arenas) happens here, not in the measured run."""
    from replay.dispute.trace import StepTrace
    from replay.execute.torch_backend import TorchExecutor

    spec = MLPSpec(
        input_dim=32,
        num_classes=10,
        layers=(
            Linear(out_features=32),
            ReLU(),
            Linear(out_features=32),
            ReLU(),
            Linear(out_features=10),
        ),
        optimizer=AdamW(lr=1e-3),
        batch_size=8,
    )
    program = compile_train(spec)
    start, batch = initial_state(spec, program), batch_of(spec)
    if what == "trace":
        trace = StepTrace(program, start, batch, backend=trace_backend)
        j = largest_matmul(program)
        trace.partials(j, 0)
    else:
        ex = TorchExecutor(program)
        ex.set_state(start)
        ex.run_step(batch)


def child(key: str, what: str, threads: int, trace_backend: str) -> dict[str, int]:
    import torch

    torch.set_num_threads(threads)
    warm_up(what, trace_backend)
    spec = spec_of(key)
    program = compile_train(spec)
    start = initial_state(spec, program)
    batch = batch_of(spec)
    if what in ("step", "step_before", "step_original"):
        from replay.execute.torch_backend import TorchExecutor

        ex = TorchExecutor(program if what != "step_before" else before_program(program))
        ex.set_state(start)
        tb = ex.batch_tensors(batch)
        del start

        def work() -> None:
            ex.run_step_tensors(tb)

    else:
        from replay.dispute.trace import StepTrace

        j = largest_matmul(program)
        flat = program.ops[j].numel // 2

        def work() -> None:
            trace = StepTrace(program, start, batch, backend=trace_backend)
            trace.partials(j, flat)

    Path("/proc/self/clear_refs").write_text("5")
    base = _status()["VmRSS"]
    work()
    return {"baseline_rss": base, "peak_extra": _status()["VmHWM"] - base}


def measure(
    key: str, what: str, threads: int, trace_backend: str, malloc: str, tree: str | None = None
) -> dict[str, int]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("MEMORY_BENCH_TREE", None)
    if tree is not None:
        env["MEMORY_BENCH_TREE"] = tree
    if malloc == "fixed":  # freed blocks >= 128 KiB go back to the OS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    args = [sys.executable, __file__, "--child", key, what, str(threads), trace_backend]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent


METHOD = " ".join(
    [
        "Each measurement runs in a fresh subprocess: a warm-up of the same work on a",
        "tiny MLP (torch's one-time lazy setup), then the setup (compile, executor with",
        "C_0, batch), then write 5 to /proc/self/clear_refs, read VmRSS as the baseline,",
        "run once; peak extra = VmHWM - baseline.",
        "fixed_mmap_threshold runs the child with MALLOC_MMAP_THRESHOLD_=131072 (freed",
        "blocks return to the OS, so the baseline holds no reusable free memory);",
        "default_malloc keeps glibc's defaults (its dynamic threshold keeps freed blocks",
        "resident and the step reuses memory freed during setup, hiding part of its",
        "peak). The trace is measured in the first mode only.",
        "Live set = max over op boundaries of the bytes of full ephemeral slots",
        "(replay.compile.liveness.live_bytes); 'before' = the same ops with every FREE at the",
        "end, on the current executor; 'original' = the step at original_revision (its",
        "compiler and executor, with this checkout's built native kernels).",
        "Trace = StepTrace (all op-level roots) + partials of one element of the largest",
        "MATMUL; trace_live_set_bytes adds the persistent values rewritten so far (a",
        "trace keeps S_0; its first pass drops a persistent value after its last read).",
    ]
)


MALLOCS = {
    "fixed_mmap_threshold": "fixed",  # MALLOC_MMAP_THRESHOLD_=128 KiB: freed blocks go back
    "default_malloc": "default",  # glibc's dynamic threshold: freed blocks may stay resident
}


def original_tree(rev: str) -> str:
    """``rev`` of this repository, extracted to a temporary folder."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    folder = tempfile.mkdtemp(prefix="memory-bench-")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    for built in [*root.glob("replay/*.so"), *root.glob("protocol/*.so")]:  # native kernels
        shutil.copy(built, Path(folder) / built.relative_to(root))
    return folder


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        key, what, threads, trace_backend = sys.argv[2:6]
        print(json.dumps(child(key, what, int(threads), trace_backend)))
        return
    from bench import _report
    from replay.compile.liveness import live_bytes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP threads (default 1)")
    parser.add_argument("--models", default="small,large")
    parser.add_argument("--trace-backend", default="numpy", choices=("numpy", "torch"))
    parser.add_argument(
        "--original", metavar="REV", help="also measure the step at git revision REV"
    )
    args = parser.parse_args()
    tree = original_tree(args.original) if args.original else None
    mb = 1 << 20
    results: dict[str, object] = {}
    rows = []
    for key in args.models.split(","):
        name = MODELS[key][0]
        spec = spec_of(key)
        program = compile_train(spec)
        before = before_program(program)
        params = params_of(spec)
        live_after = max(live_bytes(program.slots, program.ops))
        live_before = max(live_bytes(before.slots, before.ops))
        live_trace = max(live_bytes(program.slots, program.ops, rewritten=True))
        r: dict[str, object] = {
            "parameters": params,
            "ops": len(program.ops),
            "slots": len(program.slots),
            "live_set_bytes": {"before": live_before, "after": live_after},
            "live_set_bytes_per_param": {
                "before": live_before / params,
                "after": live_after / params,
            },
            "trace_live_set_bytes": live_trace,
            "step_target": TARGET_STEP,
            "trace_target": TARGET_TRACE,
        }
        for label, malloc in MALLOCS.items():
            # the (slow, numpy) trace once, where the baseline hides no reusable free memory
            traced = malloc == "fixed"
            whats = ["step", "step_before"] + ["trace"] * traced + ["step_original"] * bool(tree)
            runs = {}
            for w in whats:
                where = tree if w == "step_original" else None
                runs[w] = measure(key, w, args.threads, args.trace_backend, malloc, where)
            step, old = runs["step"], runs["step_before"]
            m: dict[str, object] = {
                "step_peak_extra_rss": {"before": old["peak_extra"], "after": step["peak_extra"]},
                "step_peak_bytes_per_param": {
                    "before": old["peak_extra"] / params,
                    "after": step["peak_extra"] / params,
                },
                "step_peak_over_live_set": step["peak_extra"] / live_after,
                "baseline_rss": {k: v["baseline_rss"] for k, v in runs.items()},
            }
            trace_cell = "-"
            if traced:
                trace = runs["trace"]["peak_extra"]
                m["trace_peak_extra_rss"] = trace
                m["trace_peak_over_step_peak"] = trace / step["peak_extra"]
                trace_cell = (
                    f"{trace / mb:.1f} MiB = {trace / step['peak_extra']:.2f}x (≤ {TARGET_TRACE})"
                )
            orig = ""
            if tree:
                peak = runs["step_original"]["peak_extra"]
                m["original_step_peak_extra_rss"] = peak
                m["original_step_peak_bytes_per_param"] = peak / params
                orig = f"{peak / params:.0f} / "
            r[label] = m
            rows.append([
                f"{name} ({params / 1e6:.1f}M)",
                malloc,
                f"{live_before / params:.0f} → {live_after / params:.1f}",
                orig + f"{old['peak_extra'] / params:.0f} → {step['peak_extra'] / params:.1f}",
                f"{step['peak_extra'] / mb:.1f} / {live_after / mb:.1f} = "
                f"{m['step_peak_over_live_set']:.2f}x (≤ {TARGET_STEP})",
                trace_cell,
            ])  # fmt: skip
        results[name] = r
    _report.table(
        f"memory of one canonical step ({args.threads} thread(s)), before → after liveness",
        [
            "model",
            "malloc",
            "live set B/param",
            ("original / " if tree else "") + "step peak B/param",
            "step peak / live set (MiB)",
            "trace peak / step peak",
        ],
        rows,
    )
    import torch

    path = _report.write(
        "memory",
        {
            "threads": args.threads,
            "torch": torch.__version__,
            "step_backend": "torch (run_step_tensors, cpu)",
            "trace_backend": args.trace_backend,
            "original_revision": args.original,
            "method": METHOD,
            "models": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
