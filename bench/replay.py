"""Canonical (bit-exact) execution vs native torch, side by side in one process.

    .venv/bin/python bench/replay.py [--threads 1] [--repeats 15] [--ulp-stride 997]

Measures, on the CPU (and CUDA when present), each as the median over interleaved repeats:

- one training step of digits-mlp (64 → 128 ReLU → 10, AdamW, batch 64): the canonical
  program on the torch backend vs the same model as native torch (nn.Linear, autograd,
  F.cross_entropy, torch.optim.AdamW) from the same weights and batch; the numpy reference too;
- canonical MATMUL (one IR op) vs ``torch.matmul`` at three sizes;
- the lowered functions' worst error in ulps over every ``stride``-th float32 of their range.

Writes bench/results/replay.json and prints a table.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# this file is bench/replay.py: keep ``import replay`` pointing at the package, not at itself
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from protocol.ir import Program
from replay.compile.accuracy import FUNCTIONS, float32_sweep, measure
from replay.compile.builder import ProgramBuilder
from replay.compile.compiler import compile_train, initial_state, param_names
from replay.compile.examples import DIGITS_MLP
from replay.data.dataset import Dataset
from replay.execute.numpy_backend import NumpyExecutor
from replay.execute.torch_backend import TorchExecutor

RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"
MATMUL_SIZES = [(64, 64, 128), (128, 128, 128), (256, 256, 256)]


def per_call(fn: Callable[[], object], calls: int, sync: Callable[[], None]) -> float:
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    calls: dict[str, int],
    sync: Callable[[], None],
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so load drifts hit all."""
    for name, fn in fns.items():  # warm up
        per_call(fn, max(1, calls[name] // 4), sync)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(per_call(fn, calls[name], sync))
    return {name: statistics.median(v) for name, v in samples.items()}


def native_model(state: dict[str, np.ndarray], device: torch.device) -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    with torch.no_grad():
        for i, layer in ((0, model[0]), (2, model[2])):
            w, b = param_names(i)
            layer.weight.copy_(torch.from_numpy(state[w]).t())  # IR weights are [in, out]
            layer.bias.copy_(torch.from_numpy(state[b]))
    return model.to(device)


def step_bench(device: torch.device, repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    spec = DIGITS_MLP.model
    program = compile_train(spec)
    start = initial_state(spec, program)
    x, y = Dataset(DIGITS_MLP.dataset).batch(0)
    canonical = TorchExecutor(program, str(device))
    canonical.set_state(start)
    batch = canonical.batch_tensors((x, y))
    model = native_model(start, device)
    opt = spec.optimizer
    optim = torch.optim.AdamW(
        model.parameters(),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )
    xt, yt = batch[0], batch[1].to(torch.long)

    def native_step() -> None:
        optim.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        optim.step()

    fns: dict[str, Callable[[], object]] = {
        "canonical": lambda: canonical.run_step_tensors(batch),
        "native": native_step,
    }
    calls = {"canonical": 20, "native": 20}
    out = interleaved(fns, repeats, calls, sync)
    if device.type == "cpu":
        ref = NumpyExecutor(program)
        ref.set_state(start)
        with np.errstate(all="ignore"):
            out["numpy_reference"] = interleaved(
                {"numpy": lambda: ref.run_step((x, y))}, max(3, repeats // 3), {"numpy": 3}, sync
            )["numpy"]
    out["ops"] = float(len(program.ops))
    return out


def matmul_program(m: int, k: int, n: int) -> Program:
    b = ProgramBuilder()
    a = b.persistent("a", (m, k))
    w = b.persistent("b", (k, n))
    c = b.persistent("c", (m, n))
    b.matmul(a, w, out=c)
    return b.build()


def matmul_bench(
    device: torch.device, repeats: int, sync: Callable[[], None]
) -> list[dict[str, float]]:
    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in MATMUL_SIZES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ex = TorchExecutor(matmul_program(m, k, n), str(device))
        ex.set_state({"a": a, "b": b, "c": np.zeros((m, n), np.float32)})
        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        calls = max(3, int(2e7 // (m * k * n)))
        t = interleaved(
            {
                "canonical": lambda ex=ex: ex.run_step_tensors(None),
                "native": lambda ta=ta, tb=tb: ta @ tb,
            },
            repeats,
            {"canonical": calls, "native": calls},
            sync,
        )
        rows.append({"m": m, "k": k, "n": n, **t, "ratio": t["canonical"] / t["native"]})
    return rows


def ulp_bench(stride: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, fn in FUNCTIONS.items():
        m = measure(fn, float32_sweep(fn.lo, fn.hi, stride))
        out[name] = {
            "range": [fn.lo, fn.hi],
            "points": m.points,
            "max_ulps": m.max_ulps,
            "worst_x": m.worst_x,
            "mean_ulps": m.mean_ulps,
            "bound": fn.max_ulps,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ulp-stride", type=int, default=997, help="0 skips the ulp sweep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, object] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "devices": {},
    }
    for device in devices:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        step = step_bench(device, args.repeats, sync)
        step["ratio"] = step["canonical"] / step["native"]
        mm = matmul_bench(device, args.repeats, sync)
        results["devices"][device.type] = {"step": step, "matmul": mm}  # type: ignore[index]
        threads = torch.get_num_threads()
        table = Table(title=f"canonical vs native torch on {device.type} ({threads} thread(s))")
        for col in ("what", "canonical", "native", "ratio"):
            table.add_column(col, justify="right" if col != "what" else "left")
        table.add_row(
            f"digits-mlp train step ({int(step['ops'])} ops)",
            f"{step['canonical'] * 1e6:.0f} µs",
            f"{step['native'] * 1e6:.0f} µs",
            f"{step['ratio']:.2f}x",
        )
        for row in mm:
            table.add_row(
                f"matmul {row['m']}x{row['k']} @ {row['k']}x{row['n']}",
                f"{row['canonical'] * 1e6:.0f} µs",
                f"{row['native'] * 1e6:.0f} µs",
                f"{row['ratio']:.2f}x",
            )
        if "numpy_reference" in step:
            table.add_row("numpy reference step", f"{step['numpy_reference'] * 1e6:.0f} µs", "", "")
        console.print(table)
    if args.ulp_stride:
        ulp = ulp_bench(args.ulp_stride)
        results["lowered_ulps"] = {"stride": args.ulp_stride, "functions": ulp}
        table = Table(title=f"lowered functions vs float64 (every {args.ulp_stride}th float32)")
        for col in ("function", "range", "points", "max ulps", "bound"):
            table.add_column(col)
        for name, r in ulp.items():
            table.add_row(
                name, str(r["range"]), str(r["points"]), f"{r['max_ulps']:.3f}", str(r["bound"])
            )
        console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
