"""Canonical MATMUL (the native sequential-FMA-chain kernel) vs torch.matmul, side by side.

    .venv/bin/python bench/kernels.py [--threads 1,2] [--repeats 9] [--big 4096]

For each size and each pinned thread count, one IR MATMUL op run by the torch backend
(``TorchExecutor.run_op``: the packed, register-tiled kernel of replay/execute/_kernels.c reading
the slots in place) and ``torch.matmul`` (MKL/oneDNN, fp32) on the same operands, interleaved
round-robin in one process; medians and quartiles of per-call seconds, the ratio of medians, and
GFLOP/s. Before timing, the canonical result is checked bit for bit against the kernel run with
a different thread count. Writes bench/results/kernels.json and prints a table.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np
import torch

from bench._report import interleave, pin_threads, table, write
from protocol.ir import Program
from replay.compile.builder import ProgramBuilder
from replay.execute.native import native_isa
from replay.execute.torch_backend import TorchExecutor

#: (M, K, N): GPT-2 small's projections at 512 tokens, and a large square product
SIZES = [(512, 768, 768), (512, 768, 3072), (512, 3072, 768)]


def matmul_program(m: int, k: int, n: int) -> Program:
    b = ProgramBuilder()
    x = b.persistent("a", (m, k))
    w = b.persistent("b", (k, n))
    out = b.persistent("out", (m, n))
    b.matmul(x, w, out=out)
    return b.build()


def one_size(m: int, k: int, n: int, threads: list[int], repeats: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    ex = TorchExecutor(matmul_program(m, k, n))
    ex.set_state({"a": a, "b": w, "out": np.zeros((m, n), np.float32)})
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    reference = None
    rows = []
    for th in threads:
        pin_threads(th)
        ex.run_op(0, None)
        got = ex.state[2].numpy().view(np.uint32).copy()  # type: ignore[union-attr]
        if reference is None:
            reference = got
        elif not np.array_equal(got, reference):
            raise SystemExit(f"{m}x{k}x{n}: {th} threads changed the bits of canonical MATMUL")
        stats = interleave(
            {"canonical": lambda: ex.run_op(0, None), "torch": lambda: torch.matmul(ta, tw)},
            repeats,
            min_seconds=0.2,
        )
        flops = 2.0 * m * k * n
        c, t = stats["canonical"]["median"], stats["torch"]["median"]
        rows.append(
            {
                "m": m, "k": k, "n": n, "threads": th,
                "canonical": stats["canonical"], "torch": stats["torch"],
                "ratio": c / t,
                "canonical_gflops": flops / c / 1e9, "torch_gflops": flops / t / 1e9,
            }
        )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts to pin")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved samples per function")
    ap.add_argument("--big", type=int, default=4096, help="side of the square product (0: skip)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    sizes = SIZES + ([(args.big, args.big, args.big)] if args.big else [])
    rows: list[dict[str, object]] = []
    for m, k, n in sizes:
        rows += one_size(m, k, n, threads, args.repeats if m * k * n < 1 << 32 else 3)
    table(
        f"canonical MATMUL vs torch.matmul (ISA {native_isa()}; medians, [p25, p75])",
        ["MxKxN", "threads", "canonical ms", "torch ms", "ratio", "GFLOP/s canon / torch"],
        [
            [
                f"{r['m']}x{r['k']}x{r['n']}", str(r["threads"]),
                f"{r['canonical']['median'] * 1e3:.2f} [{r['canonical']['p25'] * 1e3:.2f}, "  # type: ignore[index]
                f"{r['canonical']['p75'] * 1e3:.2f}]",  # type: ignore[index]
                f"{r['torch']['median'] * 1e3:.2f} [{r['torch']['p25'] * 1e3:.2f}, "  # type: ignore[index]
                f"{r['torch']['p75'] * 1e3:.2f}]",  # type: ignore[index]
                f"{r['ratio']:.2f}x",
                f"{r['canonical_gflops']:.0f} / {r['torch_gflops']:.0f}",
            ]
            for r in rows
        ],
    )  # fmt: skip
    path = write(
        "kernels",
        {
            "what": "canonical MATMUL (one IR op, torch backend, native kernel) / torch.matmul",
            "isa": native_isa(),
            "threads_pinned": threads,
            "ratio_is": "median canonical seconds / median torch.matmul seconds, same run",
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
