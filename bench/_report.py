"""Shared helpers of the benchmarks: medians, the JSON result file, the printed table."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run), and all runs."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def machine() -> dict[str, Any]:
    import os

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def write(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def spread(samples: list[float]) -> dict[str, float]:
    """Median and spread of timing samples (seconds): quartiles, min, max, count."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median": statistics.median(samples),
        "p25": q[0],
        "p75": q[2],
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def interleave(
    fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.05
) -> dict[str, dict[str, float]]:
    """Per-call seconds of each function, measured round-robin (one sample of each in turn,
    so a load change hits all alike). Each sample repeats the call until ``min_seconds``
    have passed (the count fixed after a warm-up); returns :func:`spread` per function."""
    calls: dict[str, int] = {}
    for name, fn in fns.items():  # warm up, and size each sample
        fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        calls[name] = max(1, int(min_seconds / once))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return {name: spread(v) for name, v in samples.items()}


def pin_threads(threads: int) -> None:
    """Pin torch's intra-op pool (which the native kernels share) to ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
