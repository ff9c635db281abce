"""small-gpt: a byte-level GPT on text nobody here wrote, trained canonically.

Corpus: ``torch/nn/modules/module.py`` from the pinned torch 2.13.0 wheel (PyTorch, BSD-3-Clause;
127,918 bytes, sha256 ``341153e4…7baa``, checked): the same bytes on every machine with the
pinned environment. Byte-level tokens (vocab 256), windows of 32 + 1 bytes with stride 32,
10 % held out. Model: 2 layers, 4 heads, d = 64, context 32, pre-LayerNorm, causal attention
(SDPA), GELU (tanh) MLP, tied embeddings; AdamW (β = (0.9, 0.95), wd 0.1 on matrices) with a
linear-warmup + cosine schedule (``lr_schedule``: the per-step lrs are a committed table).

    PYTHONPATH=. python examples/small_gpt.py [STEPS]    # canonical run + held-out bits/byte
    trainproof compile --model examples/small_gpt.py:factory --schedule-steps 200 --out J
    trainproof train --job J --data text:bytes --steps 200 --checkpoint-every 20 --out R
    (the CLI's text:bytes is the 50-file torch-sources corpus, docs §3.10.1; the script's
    numbers are on module.py alone)
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_small import GPT, lm_loss, optimizer_for

CORPUS_SHA256 = "341153e4099444f923f5b0766e8e41b45fbe909b87f4737cb28c828f297b7baa"
CTX, BATCH, STEPS, WARMUP = 32, 16, 200, 20


def corpus() -> bytes:
    path = Path(torch.__file__).parent / "nn" / "modules" / "module.py"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != CORPUS_SHA256:
        raise RuntimeError(f"{path} is not the pinned corpus (torch 2.13.0's module.py)")
    return data


def dataset(seed: int = 0) -> Any:
    import trainproof.datasets

    tokens = np.frombuffer(corpus(), dtype=np.uint8).astype(np.int64)
    n = (len(tokens) - 1) // CTX
    x = tokens[: n * CTX].reshape(n, CTX)
    y = tokens[1 : n * CTX + 1].reshape(n, CTX)
    return trainproof.datasets.from_arrays(x, y, BATCH, seed, heldout=n // 10)


def schedule(step: int, steps: int = STEPS, warmup: int = WARMUP) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def factory(steps: int = STEPS) -> tuple[Any, ...]:
    torch.manual_seed(0)
    model = GPT(vocab=256, ctx=CTX, d=64, layers=2, heads=4)
    opt = optimizer_for(model, lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule(t, steps))
    x, y = dataset().batch(0)
    return model, opt, lm_loss, (torch.from_numpy(x).long(), torch.from_numpy(y).long()), sched


def bits_per_byte(model: torch.nn.Module, data: Any) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_test).long())
        loss = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(data.y_test).long().flatten())
    return float(loss) / math.log(2)


def unigram_bits(data: Any) -> float:
    counts = np.bincount(data.y_train.astype(np.int64).ravel(), minlength=256) + 1.0
    p = counts / counts.sum()
    test = data.y_test.astype(np.int64).ravel()
    return float(-np.log2(p[test]).mean())


def main() -> None:
    import json
    import tempfile

    import trainproof

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else STEPS
    model, opt, loss, example, sched = factory(steps)
    job = trainproof.compile(model, opt, loss, example, lr_schedule=sched, schedule_steps=steps)
    data = dataset()
    out = Path(tempfile.mkdtemp()) / "run"
    run = trainproof.train(job, data, steps, max(1, steps // 10), out)
    fresh = GPT(vocab=256, ctx=CTX, d=64, layers=2, heads=4)
    fresh.load_state_dict(trainproof.export_state_dict(out, steps), strict=True)
    # the same run natively (torch fp32 autograd + torch.optim + the scheduler)
    native, nopt, _, _, nsched = factory(steps)
    native_losses = []
    for t in range(steps):
        bx, by = data.batch(t)
        nopt.zero_grad()
        lt = loss(native(torch.from_numpy(bx).long()), torch.from_numpy(by).long())
        lt.backward()
        nopt.step()
        nsched.step()
        native_losses.append(float(lt.detach()))
    ours = {r.step: r.loss for r in run.results if r.step}
    rel = [abs(ours[s] - native_losses[s - 1]) / native_losses[s - 1] for s in ours]
    result = {
        "native_heldout_bits_per_byte": bits_per_byte(native, data),
        "loss_curve_max_rel_diff": max(rel),
        "steps": steps,
        "ops": len(job.program.ops),
        "slots": len(job.program.slots),
        "steps_per_second": round(run.steps_per_second or 0, 2),
        "heldout_bits_per_byte": bits_per_byte(fresh, data),
        "initial_bits_per_byte": bits_per_byte(factory(steps)[0], data),
        "unigram_bits_per_byte": unigram_bits(data),
        "losses": [(r.step, round(r.loss, 4)) for r in run.results],
        "run_root": run.run_root,
    }
    print(json.dumps(result))
    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "small_gpt.json"
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
