"""digits-cnn through the front end: canonical run vs native torch, held-out accuracy.

    PYTHONPATH=. python bench/frontend_digits_cnn.py [STEPS] [OUT]

Compiles examples/digits_cnn.py, trains STEPS canonical steps (torch backend), exports the
final state dict, loads it into a fresh model (strict) and measures held-out accuracy (eval
mode: running statistics); trains the same model natively (torch fp32 + torch.optim) on the
same batches and compares the loss curves. Writes bench/results/frontend_digits_cnn.json.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # bench/replay.py must not shadow replay/

from digits_cnn import DigitsCNN, dataset, factory, heldout_accuracy  # noqa: E402

import trainproof  # noqa: E402


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp()) / "run"
    model, opt, loss_fn, example = factory()
    native = copy.deepcopy(model)
    t0 = time.perf_counter()
    job = trainproof.compile(model, opt, loss_fn, example, eval_rows=297)
    compile_s = time.perf_counter() - t0
    data = dataset()
    every = 10
    run = trainproof.train(job, data, steps, every, out)
    sd = trainproof.export_state_dict(out, steps)
    fresh = DigitsCNN()
    fresh.load_state_dict(sd, strict=True)
    acc = heldout_accuracy(fresh, data)
    nopt = type(opt)(
        [
            {k: v for k, v in g.items() if k != "params"}
            | {"params": [dict(native.named_parameters())[n] for n in names]}
            for g, names in zip(
                opt.param_groups,
                [
                    [n for n, p in model.named_parameters() if any(p is q for q in g["params"])]
                    for g in opt.param_groups
                ],
                strict=True,
            )
        ]
    )
    native_losses = []
    for t in range(steps):
        x, y = data.batch(t)
        nopt.zero_grad()
        loss = loss_fn(native(torch.from_numpy(x)), torch.from_numpy(y).long())
        loss.backward()
        nopt.step()
        native_losses.append(float(loss.detach()))
    # a checkpoint's loss slot holds the loss of the step that ended there
    ours = {r.step: r.loss for r in run.results if r.step}
    rel = [abs(ours[s] - native_losses[s - 1]) / abs(native_losses[s - 1]) for s in ours]
    result = {
        "steps": steps,
        "ops": len(job.program.ops),
        "slots": len(job.program.slots),
        "compile_seconds": round(compile_s, 2),
        "steps_per_second": round(run.steps_per_second or 0, 2),
        "heldout_accuracy": acc,
        "run_heldout_accuracy": run.heldout_accuracy,
        "native_heldout_accuracy": heldout_accuracy(native, data),
        "loss_curve_max_rel_diff": max(rel),
        "loss_curve_mean_rel_diff": float(np.mean(rel)),
        "final_loss": ours[steps],
        "native_final_loss": native_losses[-1],
        "run_root": run.run_root,
    }
    print(json.dumps(result))
    path = Path(__file__).parent / "results" / "frontend_digits_cnn.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
