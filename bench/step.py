"""A canonical training step vs the same step in native torch, side by side in one process.

    .venv/bin/python bench/step.py [--models digits-mlp,mlp-2m,...] [--threads 1,2] [--repeats 7]
                                   [--profile]

Each model is compiled by the front end (``trainproof.compile``) and trained both ways from the
same weights on the same batch: canonically (``TorchExecutor.run_step``: every op bit-exact,
MATMUL on the native FMA-chain kernel) and natively (autograd, the model's own loss, the same
``torch.optim`` optimizer, MKL/oneDNN kernels). For each pinned thread count the two steps are
interleaved round-robin; medians and quartiles of seconds per step and the ratio of medians.
The per-step commitment (``state_root`` of the new state: what the trainer records for every
step) is timed separately, and so is the step's full op-level dispute trace (``StepTrace`` on
the torch backend: every op's output hashed, every op boundary's state root), interleaved
with the other two; its throughput is quoted as a fraction of training throughput.
``--profile`` prints where a canonical step spends its time, by kind of call (element chains
as one call each). Writes bench/results/step.json and prints a table.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(1, str(ROOT / "examples"))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import trainproof
from bench._report import interleave, pin_threads, table, write
from replay.dispute.trace import StepTrace
from replay.execute.native import native_isa
from replay.execute.state import state_root_of
from replay.execute.torch_backend import TorchExecutor


def _mlp(widths: list[int], batch: int, seed: int = 0) -> tuple[Any, ...]:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, widths[0], generator=g)
    y = torch.randint(0, widths[-1], (batch,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, F.cross_entropy, (x, y)


def _digits_mlp() -> tuple[Any, ...]:
    model, opt, loss, _ = _mlp([64, 128, 10], 64)
    x, y = trainproof.datasets.digits(64, image=False).batch(0)
    return model, opt, loss, (torch.from_numpy(x), torch.from_numpy(y).long())


def _digits_cnn() -> tuple[Any, ...]:
    import digits_cnn

    return digits_cnn.factory()


def _small_gpt() -> tuple[Any, ...]:
    import small_gpt

    return small_gpt.factory()[:4]


#: name -> (what it is, factory of (model, optimizer, loss_fn, (x, y)))
MODELS: dict[str, tuple[str, Callable[[], tuple[Any, ...]]]] = {
    "digits-mlp": ("64-128-10 ReLU MLP, AdamW, batch 64 (digits)", _digits_mlp),
    "mlp-2m": ("784-1024-1024-10 ReLU MLP, AdamW, batch 256",
               lambda: _mlp([784, 1024, 1024, 10], 256)),
    "mlp-6m": ("784-2048-2048-10 ReLU MLP, AdamW, batch 256",
               lambda: _mlp([784, 2048, 2048, 10], 256)),
    "digits-cnn": ("examples/digits_cnn.py, batch 32", _digits_cnn),
    "small-gpt": ("examples/small_gpt.py: 2 layers, d 64, ctx 32, batch 16", _small_gpt),
}  # fmt: skip


def steps_of(name: str) -> tuple[Callable[[], None], Callable[[], None], TorchExecutor, Any, int]:
    """(canonical step, native step, the canonical executor, its batch, parameter count)."""
    model, opt, loss_fn, (x, y) = MODELS[name][1]()
    native = copy.deepcopy(model)
    job = trainproof.compile(model, opt, loss_fn, (x, y))
    ex = TorchExecutor(job.program)
    ex.set_state(job.initial_state)
    batch = (x.numpy().astype(np.float32), y.numpy().astype(np.float32))
    tb = ex.batch_tensors(batch)
    names = dict(native.named_parameters())
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = [
        {k: v for k, v in g.items() if k != "params"}
        | {"params": [names[by_id[id(p)]] for p in g["params"]]}
        for g in opt.param_groups
    ]
    nopt = type(opt)(groups)

    def canonical() -> None:
        ex.run_step_tensors(tb)

    def native_step() -> None:
        nopt.zero_grad()
        loss_fn(native(x), y).backward()
        nopt.step()

    return canonical, native_step, ex, tb, sum(p.numel() for p in native.parameters())


def profile(ex: TorchExecutor, batch: Any, repeats: int = 3) -> list[tuple[str, float, int]]:
    """Seconds per step spent in each kind of call of the step as it runs (element chains
    as one call each), largest first."""
    spent: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    saved = ex.get_state()
    for _ in range(repeats):
        ex.set_state(saved)
        slots = ex.state
        for label, fn in ex.step_calls:
            kind = "chain" if label.startswith("chain") else label
            t0 = time.perf_counter()
            fn(slots, batch)
            spent[kind] += (time.perf_counter() - t0) / repeats
            count[kind] += 1
    ex.set_state(saved)
    return sorted(((k, v, count[k] // repeats) for k, v in spent.items()), key=lambda r: -r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"from {', '.join(MODELS)}")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts to pin")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved samples per function")
    ap.add_argument("--profile", action="store_true", help="print time per opcode")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
        canonical, native_step, ex, tb, params = steps_of(name)
        for th in threads:
            pin_threads(th)
            program, start = ex.program, ex.get_state()
            batch = tuple(t.numpy() for t in tb)

            def trace() -> None:
                StepTrace(program, start, batch, "torch")  # noqa: B023

            stats = interleave(
                {"canonical": canonical, "native": native_step, "trace": trace},
                args.repeats,
                min_seconds=0.3,
            )
            program, state = ex.program, ex.get_state()
            commit = interleave({"root": lambda: state_root_of(program, state)}, 3, 0.1)  # noqa: B023
            row = {
                "model": name, "what": MODELS[name][0], "parameters": params, "threads": th,
                "ops": len(ex.program.ops), "canonical": stats["canonical"],
                "native": stats["native"],
                "ratio": stats["canonical"]["median"] / stats["native"]["median"],
                "trace": stats["trace"],
                "trace_throughput_over_training": (
                    stats["canonical"]["median"] / stats["trace"]["median"]
                ),
                "state_root_seconds": commit["root"]["median"],
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name} {th} thr: canonical {row['canonical']['median'] * 1e3:.2f} ms, "
                f"native {row['native']['median'] * 1e3:.2f} ms, ratio {row['ratio']:.2f}x, "
                f"state root {row['state_root_seconds'] * 1e3:.2f} ms, trace "
                f"{row['trace']['median'] * 1e3:.2f} ms "
                f"({row['trace_throughput_over_training']:.2f}x training throughput)",
                flush=True,
            )
            if args.profile:
                for opname, sec, n in profile(ex, tb)[:8]:
                    print(f"    {opname:12s} {n:5d} ops {sec * 1e3:9.2f} ms")
    table(
        f"canonical step vs native torch step (ISA {native_isa()}; medians, [p25, p75])",
        ["model", "params", "thr", "canonical ms", "native ms", "ratio", "root ms", "trace/train"],
        [
            [
                r["model"], f"{r['parameters'] / 1e6:.2f}M", str(r["threads"]),
                f"{r['canonical']['median'] * 1e3:.2f} [{r['canonical']['p25'] * 1e3:.2f}, "
                f"{r['canonical']['p75'] * 1e3:.2f}]",
                f"{r['native']['median'] * 1e3:.2f} [{r['native']['p25'] * 1e3:.2f}, "
                f"{r['native']['p75'] * 1e3:.2f}]",
                f"{r['ratio']:.2f}x", f"{r['state_root_seconds'] * 1e3:.2f}",
                f"{r['trace_throughput_over_training']:.2f}x",
            ]
            for r in rows
        ],
    )  # fmt: skip
    path = write(
        "step",
        {
            "what": "canonical training step (TorchExecutor.run_step) / native torch step",
            "isa": native_isa(),
            "threads_pinned": threads,
            "ratio_is": "median canonical seconds / median native seconds, interleaved, same run",
            "trace_throughput_over_training_is": "median canonical step / median trace seconds",
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
