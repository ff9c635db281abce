"""The PyTorch front end (replay/compile/) against PyTorch itself.

Each conformance test builds a model, compiles it with ``trainproof.compile``, runs ONE
canonical step on the numpy reference and on the torch backend (every persistent slot must
agree bit for bit), and runs the same step natively (torch fp32 autograd + ``torch.optim``)
from the same parameters and batch.

Tolerance (SGD): ``max |ir - torch| ≤ 1e-5 · max |torch|`` per parameter / buffer tensor. Both
sides are float32 chains of the same math; they differ only in rounding: our sequential sums
and FMA chains vs torch's blocked/vectorised ones (each ≤ R·u·Σ|terms| apart, u = 2^-24, R ≤
a few hundred here, in practice ≈ √R·u), and our exp/log/tanh/erf polynomials (≤ 1.3 ulp,
docs §3.8) vs libm/SLEEF. A new parameter is ``p - lr·g``, so its deviation is ``lr·|Δg|``,
≈ 1e-7 of the tensor's scale (measured 1e-8 … 1e-6); 1e-5 leaves a 10x margin and still catches
any indexing or formula mistake (an O(1) relative error of some gradient element).

Adam-family first steps: ``Δp = -lr·m̂/(√v̂ + eps) ≈ -lr·sign(g)`` — a gradient element that
is ≈ 0 on both sides can flip sign by rounding and move by 2·lr. So the Adam tests compare the
first moment ``m = (1 - β1)·g`` (a persistent slot, i.e. the gradient itself) with torch's
``exp_avg`` at 1e-5, and require ≤ 1 % of parameter elements outside the tolerance.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import trainproof
from replay.compile.frontend import CompileError
from replay.compile.job import load_state
from replay.execute.backends import make_executor

TOL = 1e-5


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.detach().to(torch.float32).numpy(), dtype=np.float32)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(a - ref).max()) / max(scale, 1e-30)


def canonical_step(job: trainproof.CompiledJob, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One step on both backends; asserts bit identity and returns the state."""
    batch = (_f32(x), _f32(y))
    states = []
    for backend in ("numpy", "torch"):
        ex = make_executor(job.program, backend)
        ex.set_state(job.initial_state)
        ex.run_step(batch)
        states.append(ex.get_state())
    a, b = states
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(_bits(a[k]), _bits(b[k])), f"backends differ in slot {k}"
    return b


def torch_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, x, y) -> float:
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss)


def check_sgd(make_model, make_opt, loss_fn, x, y, tol: float = TOL) -> dict[str, float]:
    torch.manual_seed(0)
    model = make_model()
    ref = copy.deepcopy(model)
    job = trainproof.compile(model, make_opt(model), loss_fn, example=(x, y))
    state = canonical_step(job, x, y)
    loss = torch_step(ref, make_opt(ref), loss_fn, x, y)
    assert abs(float(state["loss"]) - loss) <= 1e-5 * max(1.0, abs(loss))
    errs = {}
    named = dict(ref.named_parameters())
    named.update(dict(ref.named_buffers()))
    for e in job.state_dict_layout:
        want = _f32(named[e.key]) if e.key in named else None
        if want is None:
            continue
        errs[e.key] = _rel(state[e.slot], want)
        assert errs[e.key] <= tol, f"{e.key}: relative error {errs[e.key]:.2e} > {tol}"
    return errs


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = {"relu": F.relu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
        f = act[self.act]
        return self.out(f(self.fc2(f(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # 8x8 -> 4x4
        x = self.avg(F.relu(self.bn2(self.conv2(x))))  # 4x4 -> 2x2 -> 1x1
        return self.fc(torch.flatten(x, 1))


class TinyGPT(nn.Module):
    def __init__(
        self,
        vocab: int = 13,
        d: int = 8,
        heads: int = 2,
        ctx: int = 6,
        sdpa: bool = False,
        approximate: str = "tanh",
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied embeddings
        self.heads, self.sdpa, self.approximate = heads, sdpa, approximate
        self.register_buffer("mask", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        d, h = self.tok.weight.shape[1], self.heads
        pos = torch.arange(t)
        x = self.tok(idx) + self.pos(pos)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
            a = F.softmax(att, dim=-1) @ v
        x = x + self.proj(a.transpose(1, 2).contiguous().view(b, t, d))
        x = x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate=self.approximate))
        return self.head(self.ln_f(x))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def bvt_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cross_entropy of [B, T, V] logits: flattened to [B·T, V] inside the loss."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def sgd(**kw):
    return lambda m: torch.optim.SGD(m.parameters(), **kw)


# --------------------------------------------------------------------------- conformance


def test_mlp_sgd_nesterov_weight_decay() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g)
    check_sgd(
        MLP, sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), F.cross_entropy, x, y
    )


@pytest.mark.parametrize("act", ["silu", "tanh", "sigmoid"])
def test_mlp_activations_mse_dampening(act: str) -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 12, generator=g), torch.randn(6, 5, generator=g)
    check_sgd(lambda: MLP(act), sgd(lr=0.05, momentum=0.5, dampening=0.3), F.mse_loss, x, y)


def test_nll_loss_of_log_softmax() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 12, generator=g), torch.randint(0, 5, (7,), generator=g)

    def loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(z, dim=1), t)

    check_sgd(MLP, sgd(lr=0.2), loss, x, y)


def test_cnn_conv_batchnorm_pooling() -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    errs = check_sgd(CNN, sgd(lr=0.1, momentum=0.9), F.cross_entropy, x, y)
    assert "bn1.running_mean" in errs and "bn2.num_batches_tracked" in errs


@pytest.mark.parametrize(
    ("sdpa", "approximate", "loss"),
    [(False, "tanh", lm_loss), (True, "none", bvt_loss)],
    ids=["hand-written-attention-gelu-tanh", "sdpa-gelu-erf"],
)
def test_tiny_transformer(sdpa: bool, approximate: str, loss) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 13, (3, 6), generator=g)
    y = torch.randint(0, 13, (3, 6), generator=g)
    check_sgd(
        lambda: TinyGPT(sdpa=sdpa, approximate=approximate), sgd(lr=0.5, momentum=0.9), loss, x, y
    )


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_groups_and_frozen(kind: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g)
    model = MLP()
    model.fc1.weight.requires_grad_(False)  # frozen

    def make_opt(m: MLP) -> torch.optim.Optimizer:
        decay = [p for n, p in m.named_parameters() if n.endswith("weight") and p.requires_grad]
        rest = [p for n, p in m.named_parameters() if n.endswith("bias")]
        cls = getattr(torch.optim, kind)
        return cls(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=1e-2,
            betas=(0.9, 0.99),
        )

    ref = copy.deepcopy(model)
    job = trainproof.compile(model, make_opt(model), F.cross_entropy, example=(x, y))
    assert "fc1.weight" in job.frozen
    assert not any(s.name.startswith("fc1.weight.") for s in job.program.slots)
    state = canonical_step(job, x, y)
    opt = make_opt(ref)
    torch_step(ref, opt, F.cross_entropy, x, y)
    assert np.array_equal(_bits(state["fc1.weight"]), _bits(_f32(model.fc1.weight)))
    outside = total = 0
    for n, p in ref.named_parameters():
        if not p.requires_grad:
            continue
        st = opt.state[p]
        assert _rel(state[f"{n}.exp_avg"], _f32(st["exp_avg"])) <= TOL, n
        assert _rel(state[f"{n}.exp_avg_sq"], _f32(st["exp_avg_sq"])) <= 1e-4, n
        d = np.abs(state[n] - _f32(p))
        outside += int((d > TOL * np.abs(_f32(p)).max()).sum())
        total += d.size
    assert outside <= 0.01 * total


def test_gradient_clipping() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 12, generator=g) * 10, torch.randint(0, 5, (8,), generator=g)
    model = MLP()
    ref = copy.deepcopy(model)
    job = trainproof.compile(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        F.cross_entropy,
        example=(x, y),
        clip_grad_norm_to=0.05,
    )
    state = canonical_step(job, x, y)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.cross_entropy(ref(x), y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    opt.step()
    for n, p in ref.named_parameters():
        assert _rel(state[n], _f32(p)) <= TOL, n


# --------------------------------------------------------------------------- refusals


class Dropper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 0:
            h = h * 2
        return h


class Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=1)


def _refusal(model: nn.Module, x, y, opt=None) -> str:
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CompileError) as info:
        trainproof.compile(model, opt, F.cross_entropy, example=(x, y))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_refusals_name_op_module_and_line() -> None:
    x, y = torch.randn(4, 12), torch.randint(0, 5, (4,))
    msg = _refusal(Dropper(), x, y)
    assert "dropout" in msg and "drop" in msg
    msg = _refusal(Cumsum(), x, y)
    assert "cumsum" in msg and "test_frontend.py" in msg and "torch.cumsum" in msg
    msg = _refusal(Branchy(), x, y)
    assert "data-dependent" in msg and "test_frontend.py" in msg and "h.sum() > 0" in msg
    msg = _refusal(MLP(), torch.randn(4, 7), y)
    assert "does not fit" in msg and "fc1 (Linear)" in msg and "test_frontend.py" in msg
    m = MLP()
    msg = _refusal(m, x, y, torch.optim.Adam(m.parameters(), amsgrad=True))
    assert "amsgrad" in msg
    m = MLP()
    msg = _refusal(m, x, y, torch.optim.RMSprop(m.parameters()))
    assert "RMSprop" in msg


# --------------------------------------------------------------------------- runs, export


def test_train_export_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((40, 12)).astype(np.float32)
    ys = rng.integers(0, 5, 40)
    data = trainproof.datasets.from_arrays(xs, ys, batch_size=8, seed=1, heldout=8)
    x0, y0 = data.batch(0)
    model = MLP()
    # fine-tuning: C_0 holds the loaded weights
    pretrained = MLP()
    model.load_state_dict(pretrained.state_dict())
    model.fc1.bias.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    job = trainproof.compile(
        model, opt, F.cross_entropy, example=(torch.from_numpy(x0), torch.from_numpy(y0).long())
    )
    for k, v in pretrained.state_dict().items():
        assert np.array_equal(job.initial_state[k], _f32(v))
    run = trainproof.train(job, data, steps=4, every=2, out=tmp_path / "run")
    assert [r.step for r in run.results] == [0, 2, 4]
    assert all(np.isfinite(r.loss) for r in run.results[1:])
    sd = trainproof.export_state_dict(tmp_path / "run", 4)
    fresh = MLP()
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh.fc1.bias, pretrained.fc1.bias)  # frozen: never changes
    assert not torch.equal(fresh.fc1.weight, pretrained.fc1.weight)
    # the same 4 steps natively stay close (loss within 1e-4 relative)
    ref = copy.deepcopy(pretrained)
    ref.fc1.bias.requires_grad_(False)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for t in range(4):
        bx, by = data.batch(t)
        torch_step(ref, ropt, F.cross_entropy, torch.from_numpy(bx), torch.from_numpy(by).long())
    for n, p in ref.named_parameters():
        assert _rel(_f32(sd[n]), _f32(p)) <= 1e-4, n


def test_batchnorm_state_dict_dtypes(tmp_path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    data = trainproof.datasets.from_arrays(xs, rng.integers(0, 10, 16), batch_size=4, seed=0)
    x0, y0 = data.batch(0)
    model = CNN()
    job = trainproof.compile(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        F.cross_entropy,
        example=(torch.from_numpy(x0), torch.from_numpy(y0).long()),
    )
    trainproof.train(job, data, steps=2, every=1, out=tmp_path / "run", backend="torch")
    sd = trainproof.export_state_dict(tmp_path / "run", 2)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert int(sd["bn1.num_batches_tracked"]) == 2
    CNN().load_state_dict(sd, strict=True)


def test_cli_compile_and_train_job(tmp_path) -> None:
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from trainproof.cli import app

    root = Path(__file__).resolve().parents[1]
    runner = CliRunner()
    job = tmp_path / "job"
    res = runner.invoke(
        app,
        [
            "compile",
            "--model",
            f"{root}/examples/digits_cnn.py:factory",
            "--eval-rows",
            "297",
            "--out",
            str(job),
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["ops"] > 0 and info["program_root"].startswith("0x")
    args = ["train", "--job", str(job), "--data", "digits", "--steps", "2"]
    res = runner.invoke(app, [*args, "--checkpoint-every", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["step"] for x in lines[:-1]] == [0, 1, 2]
    assert all(np.isfinite(x["loss"]) for x in lines[1:-1])
    assert lines[-1]["program_root"] == info["program_root"]
    assert 0.0 <= lines[-1]["heldout_accuracy"] <= 1.0
    res = runner.invoke(app, ["replay", "--run", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["match"] for x in lines[:-1]] == [True, True]
    assert lines[-1]["mismatches"] == 0


@pytest.mark.parametrize("kind", ["SGD", "AdamW"])
def test_lr_schedule_warmup_cosine_is_data(kind: str) -> None:
    """A warmup + cosine LambdaLR becomes the table optim.lr_schedule; 4 steps vs native."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(8)
    batches = [
        (torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(4)
    ]
    steps, warm = 4, 2

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / (steps - warm)))

    def make(m: nn.Module):
        opt = (
            torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
            if kind == "SGD"
            else torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
        )
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    model = MLP()
    ref = copy.deepcopy(model)
    opt, sched = make(model)
    job = trainproof.compile(
        model, opt, F.cross_entropy, example=batches[0], lr_schedule=sched, schedule_steps=steps
    )
    table = job.initial_state["optim.lr_schedule"]
    assert table.shape == (steps, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 if kind == "SGD" else 5e-3)  # restored
    ex = make_executor(job.program, "torch")
    ex.set_state(job.initial_state)
    ropt, rsched = make(ref)
    for x, y in batches:
        ex.run_step((_f32(x), _f32(y)))
        torch_step(ref, ropt, F.cross_entropy, x, y)
        rsched.step()
    state = ex.get_state()
    for n, p in ref.named_parameters():
        if kind == "SGD":
            assert _rel(state[n], _f32(p)) <= 1e-5, n
        else:
            assert _rel(state[f"{n}.exp_avg"], _f32(ropt.state[p]["exp_avg"])) <= 1e-4, n


ROOTS_SCRIPT = """
import json, sys
import numpy as np
import torch
from replay.execute.backends import make_executor
from replay.compile.job import CompiledJob
from replay.execute.state import state_root_of
job = CompiledJob.load(__import__("pathlib").Path(sys.argv[1]))
batches = np.load(sys.argv[2])
ex = make_executor(job.program, "torch")
ex.set_state(job.initial_state)
for t in range(2):
    ex.run_step((batches[f"x{t}"], batches[f"y{t}"]))
print(json.dumps({"root": state_root_of(job.program, ex.get_state()).hex(),
                  "threads": torch.get_num_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


@pytest.mark.parametrize("which", ["cnn", "gpt"])
def test_roots_do_not_depend_on_threads_or_cpu_capability(which: str, tmp_path) -> None:
    """Compiled jobs are bit-exact under 1/2 threads, ATEN_CPU_CAPABILITY, MKL_CBWR."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(9)
    if which == "cnn":
        model: nn.Module = CNN()
        xs = [torch.randn(4, 1, 8, 8, generator=g) for _ in range(2)]
        ys = [torch.randint(0, 10, (4,), generator=g) for _ in range(2)]
        loss = F.cross_entropy
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        model = TinyGPT(sdpa=True)
        xs = [torch.randint(0, 13, (3, 6), generator=g) for _ in range(2)]
        ys = [torch.randint(0, 13, (3, 6), generator=g) for _ in range(2)]
        loss = bvt_loss
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    job = trainproof.compile(model, opt, loss, example=(xs[0], ys[0]))
    job.save(tmp_path / "job")
    data = {f"x{t}": _f32(xs[t]) for t in range(2)} | {f"y{t}": _f32(ys[t]) for t in range(2)}
    np.savez(tmp_path / "batches.npz", **data)
    repo = Path(__file__).resolve().parents[1]
    knobs = ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_CBWR")
    outs = []
    for extra in (
        {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
        {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2"},
        {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
    ):
        env = {k: v for k, v in os.environ.items() if k not in knobs} | extra
        env["PYTHONPATH"] = str(repo)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                ROOTS_SCRIPT,
                str(tmp_path / "job"),
                str(tmp_path / "batches.npz"),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=repo,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {o["threads"] for o in outs} == {1, 2}
    assert len({o["root"] for o in outs}) == 1, outs


def test_dispute_computation_reads_a_compiled_job(tmp_path) -> None:
    """replay.dispute.players.Computation runs a compiled CNN on an ArrayDataset: its op-level trace
    reproduces trainproof.train's checkpoint roots, and a one-element fault in a GATHER
    (im2col) changes them (what the bisection game then narrows down to that op)."""
    from protocol.ir import Opcode
    from replay.data.checkpoint import to_hex
    from replay.dispute.players import Computation, Fault

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
    data = trainproof.datasets.from_arrays(xs, rng.integers(0, 10, 12), batch_size=4, seed=0)
    x0, y0 = data.batch(0)
    model = CNN()
    job = trainproof.compile(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        F.cross_entropy,
        example=(torch.from_numpy(x0), torch.from_numpy(y0).long()),
    )
    run = trainproof.train(job, data, steps=2, every=1, out=tmp_path / "run")
    honest = Computation(job.program, data, job.initial_state, 2, 1)  # type: ignore[arg-type]
    roots = [to_hex(r) for r in honest.checkpoint_roots()]
    assert roots == [c.state_root for c in run.checkpoints]
    gather = next(j for j, op in enumerate(job.program.ops) if op.opcode == Opcode.GATHER)
    fault = Fault(kind="element", step=1, op=gather, element=3)
    cheat = Computation(job.program, data, job.initial_state, 2, 1, fault=fault)  # type: ignore[arg-type]
    theirs = [to_hex(r) for r in cheat.checkpoint_roots()]
    assert theirs[:2] == roots[:2] and theirs[2] != roots[2]


def test_heldout_accuracy_matches_the_exported_model(tmp_path) -> None:
    """The run's held-out accuracy (canonical eval forward, BatchNorm running stats) is what
    the exported state dict gives in torch eval mode."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    ys = rng.integers(0, 10, 40)
    data = trainproof.datasets.from_arrays(xs, ys, batch_size=8, seed=0, heldout=16)
    x0, y0 = data.batch(0)
    model = CNN()
    job = trainproof.compile(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
        F.cross_entropy,
        example=(torch.from_numpy(x0), torch.from_numpy(y0).long()),
        eval_rows=16,
    )
    run = trainproof.train(job, data, steps=3, every=3, out=tmp_path / "run")
    fresh = CNN()
    fresh.load_state_dict(trainproof.export_state_dict(tmp_path / "run", 3), strict=True)
    fresh.eval()
    with torch.no_grad():
        logits = fresh(torch.from_numpy(data.x_test))
    want = float((logits.argmax(1).numpy() == data.y_test.astype(np.int64)).mean())
    assert run.heldout_accuracy == want
    # fine-tuning: saved with safetensors, loaded into a fresh model, compiled again: C_0 holds it
    from safetensors.torch import load_file, save_file

    save_file(fresh.state_dict(), str(tmp_path / "w.safetensors"))
    again = CNN()
    again.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    job2 = trainproof.compile(
        again,
        torch.optim.SGD(again.parameters(), lr=0.5, momentum=0.9),
        F.cross_entropy,
        example=(torch.from_numpy(x0), torch.from_numpy(y0).long()),
    )
    _, final = load_state(tmp_path / "run", 3)
    for e in job2.state_dict_layout:
        assert np.array_equal(job2.initial_state[e.slot], final[e.slot]), e.key


def test_gpt2_small_example_compiles_at_reduced_size() -> None:
    """examples/gpt2_small.py's architecture code path (2 layers, d = 32, context 16, vocab
    97, AdamW groups); the full 124M configuration is measured in docs §3.14."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt2_small import factory, optimizer_for

    model, opt, loss, example = factory(batch=2, ctx=16, vocab=97, d=32, layers=2, heads=4)
    ref = copy.deepcopy(model)
    job = trainproof.compile(model, opt, loss, example)
    assert "wte.weight" in job.initial_state
    assert "lm_head.weight" not in job.initial_state  # tied: one slot
    state = canonical_step(job, *example)
    ropt = optimizer_for(ref)
    native = torch_step(ref, ropt, loss, *example)
    assert abs(float(state["loss"]) - native) <= 1e-5 * native
    for n, p in ref.named_parameters():
        assert _rel(state[f"{n}.exp_avg"], _f32(ropt.state[p]["exp_avg"])) <= 1e-4, n


class Shuffler(nn.Module):
    """cat, strided slices, select, where, expand, permute, mean, pow, residual, clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 8)
        self.b = nn.Linear(12, 4)
        self.out = nn.Linear(16, 5)
        self.scale = nn.Parameter(torch.ones(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(x), self.b(x) * self.scale.expand(x.shape[0], 4)], dim=1)  # [B, 12]
        odd = h[:, 1::2]  # [B, 6]
        first = h[:, 0:1]
        gated = torch.where(h > 0, h, 0.1 * h)  # leaky
        z = torch.cat([gated, odd[:, :3] ** 2, first.clamp(-1.0, 1.0)], dim=1)  # [B, 16]
        z = z - z.mean(dim=1, keepdim=True)
        m = z.view(-1, 4, 4).permute(0, 2, 1).reshape(-1, 16)
        return self.out(m + z)


def test_data_movement_ops() -> None:
    g = torch.Generator().manual_seed(10)
    x, y = torch.randn(6, 12, generator=g), torch.randint(0, 5, (6,), generator=g)
    check_sgd(Shuffler, sgd(lr=0.1, momentum=0.9), F.cross_entropy, x, y)


def test_datasets_from_files_stream_and_match(tmp_path) -> None:
    """.npz, .safetensors and memory-mapped x.npy/y.npy give the same committed batches as
    from_arrays; the held-out split is the permutation's first `heldout` examples."""
    import safetensors.numpy

    rng = np.random.default_rng(3)
    xs = rng.standard_normal((30, 4)).astype(np.float32)
    ys = rng.integers(0, 3, 30)
    ref = trainproof.datasets.from_arrays(xs, ys, batch_size=4, seed=2, heldout=5)
    np.savez(tmp_path / "d.npz", x=xs, y=ys)
    safetensors.numpy.save_file({"x": xs, "y": ys}, str(tmp_path / "d.safetensors"))
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "x.npy", xs)
    np.save(tmp_path / "mm" / "y.npy", ys)
    for src in ("d.npz", "d.safetensors", "mm"):
        d = trainproof.datasets.from_files(str(tmp_path / src), batch_size=4, seed=2, heldout=5)
        assert d.root(12) == ref.root(12)
        assert np.array_equal(d.x_test, ref.x_test)
    order = np.random.default_rng(2).permutation(30)
    assert np.array_equal(ref.y_test, ys[order[:5]].astype(np.float32))
    x0, y0 = ref.batch(0)
    assert x0.dtype == np.float32 and x0.shape == (4, 4) and y0.shape == (4,)


class PlainNorm(nn.Module):
    """LayerNorm without affine parameters, nn.GELU and nn.SiLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)
        self.ln = nn.LayerNorm(5, elementwise_affine=False)
        self.gelu = nn.GELU()
        self.silu = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.silu(self.gelu(self.ln(self.fc(x))))


def test_label_smoothing_and_plain_layer_norm() -> None:
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g)

    def smoothed(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, t, label_smoothing=0.1)

    check_sgd(MLP, sgd(lr=0.1), smoothed, x, y)
    check_sgd(PlainNorm, sgd(lr=0.1, momentum=0.9), F.cross_entropy, x, y)


def test_class_dim_logits_are_refused_with_a_hint() -> None:
    model = TinyGPT()
    x, y = torch.randint(0, 13, (2, 6)), torch.randint(0, 13, (2, 6))
    with pytest.raises(CompileError) as info:
        trainproof.compile(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda z, t: F.cross_entropy(z.transpose(1, 2), t),
            example=(x, y),
        )
    msg = str(info.value)
    assert "nll_loss2d_forward" in msg and "<loss function>" in msg and "test_frontend.py" in msg
