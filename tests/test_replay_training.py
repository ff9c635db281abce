"""End to end: canonical digits training, backend parity, env independence, CLI, replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from replay.cli import app
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import DIGITS_MLP
from replay.compile.spec import GELU, SGD, Linear, MLPSpec
from replay.data.checkpoint import from_hex, to_hex
from replay.data.dataset import Dataset, DatasetSpec
from replay.execute.backends import make_executor
from replay.execute.state import state_root_of
from replay.runner import read_run, run_root_of, train, write_run

REPO = Path(__file__).resolve().parents[1]
#: steps after which digits-mlp is documented to reach >= 95% held-out accuracy
DIGITS_STEPS = 200


def test_torch_and_numpy_give_identical_checkpoint_roots(tmp_path: Path) -> None:
    runs = {
        backend: train("digits-mlp", 6, 3, tmp_path / backend, backend=backend)
        for backend in ("torch", "numpy")
    }
    t, n = runs["torch"], runs["numpy"]
    assert [c.state_root for c in t.checkpoints] == [c.state_root for c in n.checkpoints]
    assert t.step_roots == n.step_roots and len(t.step_roots) == 7
    assert len(set(t.step_roots)) == 7  # every step changes the state
    assert (
        t.run_root
        == n.run_root
        == to_hex(run_root_of([from_hex(c.state_root) for c in t.checkpoints]))
    )


def _gelu_spec(hidden: tuple[int, ...], lr: float) -> MLPSpec:
    layers: tuple = ()
    for h in hidden:
        layers += (Linear(out_features=h), GELU())
    return MLPSpec(
        input_dim=64,
        num_classes=10,
        layers=(*layers, Linear(out_features=10)),
        optimizer=SGD(lr=lr, momentum=0.9, weight_decay=1e-4),
        batch_size=32,
    )


def test_gelu_sgd_model_agrees_across_backends() -> None:
    spec = _gelu_spec((32, 16), 0.1)
    program = compile_train(spec)
    data = Dataset(DatasetSpec(batch_size=32))
    executors = [make_executor(program, b) for b in ("numpy", "torch")]
    for ex in executors:
        ex.set_state(initial_state(spec, program))
    for t in range(3):
        roots = set()
        for ex in executors:
            ex.run_step(data.batch(t))
            roots.add(state_root_of(program, ex.get_state()))
        assert len(roots) == 1, t


def test_gelu_sgd_model_learns() -> None:
    spec = _gelu_spec((32,), 0.2)
    program = compile_train(spec)
    data = Dataset(DatasetSpec(batch_size=32))
    ex = make_executor(program, "torch")
    ex.set_state(initial_state(spec, program))
    losses = []
    for t in range(40):
        ex.run_step(data.batch(t))
        losses.append(float(ex.get_state()["loss"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_digits_mlp_reaches_95_percent(tmp_path: Path) -> None:
    run = train("digits-mlp", DIGITS_STEPS, DIGITS_STEPS // 2, tmp_path / "run")
    assert run.heldout_accuracy is not None and run.heldout_accuracy >= 0.95, run.heldout_accuracy


ENV_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, torch
    if os.environ.get("TP_TEST_THREADS"):  # torch caps OMP_NUM_THREADS at the core count
        torch.set_num_threads(int(os.environ["TP_TEST_THREADS"]))
    from replay.execute.backends import make_executor
    from replay.compile.compiler import compile_train, initial_state
    from replay.data.dataset import Dataset
    from replay.compile.examples import DIGITS_MLP
    from replay.execute.native import native_isa
    from replay.execute.state import state_root_of
    program = compile_train(DIGITS_MLP.model)
    ex = make_executor(program, "torch")
    ex.set_state(initial_state(DIGITS_MLP.model, program))
    data = Dataset(DIGITS_MLP.dataset)
    for t in range(3):
        ex.run_step(data.batch(t))
    canonical = state_root_of(program, ex.get_state()).hex()
    # the same kind of work done natively: a forward/backward of a GELU MLP, a big sum, exp
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(approximate="tanh"),
                            torch.nn.Linear(128, 10))
    for p in m.parameters():
        torch.nn.init.uniform_(p, -0.1, 0.1, generator=g)
    x = torch.randn(512, 64, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    big = torch.randn(1 << 20, generator=g)
    h = hashlib.sha256()
    for p in m.parameters():
        h.update(p.grad.numpy().tobytes())
    h.update(big.sum().numpy().tobytes())
    h.update(torch.exp(big).numpy().tobytes())
    print(json.dumps({"canonical": canonical, "native": h.hexdigest(),
                      "capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(), "isa": native_isa()}))
    """
)

ENVS = [
    {"OMP_NUM_THREADS": "1"},
    {"OMP_NUM_THREADS": "2"},
    {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2"},
    {"OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"},
    # the native kernels: each ISA path (avx512 falls back where the CPU lacks it), 4 threads
    # (more than these machines' cores), and off (the torch float64 path)
    {"OMP_NUM_THREADS": "2", "TP_TEST_THREADS": "4", "TRAINPROOF_ISA": "avx512"},
    {"OMP_NUM_THREADS": "2", "TRAINPROOF_ISA": "avx2"},
    {"OMP_NUM_THREADS": "1", "TRAINPROOF_ISA": "portable"},
    {"OMP_NUM_THREADS": "2", "TRAINPROOF_NATIVE": "0"},
]
KNOBS = (
    "OMP_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "TRAINPROOF_ISA",
    "TRAINPROOF_NATIVE",
    "TP_TEST_THREADS",
)


def test_canonical_roots_do_not_depend_on_threads_or_cpu_capability() -> None:
    outputs = []
    for extra in ENVS:
        env = {k: v for k, v in os.environ.items() if k not in KNOBS}
        env.update(extra)
        env["PYTHONPATH"] = str(REPO)
        proc = subprocess.run(
            [sys.executable, "-c", ENV_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {o["threads"] for o in outputs} == {1, 2, 4}
    assert len({o["capability"] for o in outputs}) >= 2
    assert {o["isa"] for o in outputs} >= {"avx2", "portable"}  # each kernel path was run
    assert len({o["canonical"] for o in outputs}) == 1, outputs
    assert len({o["native"] for o in outputs}) > 1, (
        "native torch did not vary; the test proves nothing"
    )


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_cli_train_then_replay(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--example",
            "digits-mlp",
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = _lines(res.stdout)
    assert [line["step"] for line in lines[:-1]] == [0, 2, 4]
    assert all(
        line["state_root"].startswith("0x") and len(line["state_root"]) == 66 for line in lines[:-1]
    )
    assert 0.0 <= lines[-1]["heldout_accuracy"] <= 1.0

    res = runner.invoke(app, ["replay", "--run", str(out), "--backend", "numpy"])
    assert res.exit_code == 0, res.output
    results = _lines(res.stdout)
    assert [r["step"] for r in results[:-1]] == [2, 4] and all(r["match"] for r in results[:-1])
    assert results[-1]["mismatches"] == 0

    res = runner.invoke(app, ["replay", "--run", str(out), "--from-step", "2", "--to-step", "4"])
    assert res.exit_code == 0 and [r["step"] for r in _lines(res.stdout)[:-1]] == [4]


def test_replay_reports_the_first_mismatching_step(tmp_path: Path) -> None:
    """A trainer that commits a wrong state from step 3 on is caught at step 3."""
    out = tmp_path / "run"
    train("digits-mlp", 4, 2, out)
    run = read_run(out)
    fake = "0x" + "ab" * 32
    run.step_roots[3] = fake
    run.step_roots[4] = fake
    run.checkpoints[2] = run.checkpoints[2].model_copy(update={"state_root": fake})
    run.run_root = to_hex(run_root_of([from_hex(c.state_root) for c in run.checkpoints]))
    write_run(out, run)
    res = CliRunner().invoke(app, ["replay", "--run", str(out)])
    assert res.exit_code == 1
    results = _lines(res.stdout)
    assert results[0]["match"] is True
    assert results[1]["match"] is False and results[1]["first_mismatch_step"] == 3
    assert results[-1]["first_mismatch_step"] == 3


def test_cli_rejects_bad_arguments_and_tampered_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--example",
            "nope",
            "--steps",
            "2",
            "--checkpoint-every",
            "1",
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert res.exit_code == 2 and "unknown example" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--example",
            "digits-mlp",
            "--steps",
            "5",
            "--checkpoint-every",
            "2",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert res.exit_code == 2 and "not a multiple" in res.output
    out = tmp_path / "run"
    train("digits-mlp", 2, 1, out)
    res = runner.invoke(
        app,
        [
            "train",
            "--example",
            "digits-mlp",
            "--steps",
            "2",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 2 and "not an empty folder" in res.output
    res = runner.invoke(app, ["replay", "--run", str(out), "--from-step", "1", "--to-step", "1"])
    assert res.exit_code == 2 and "must be checkpoint steps" in res.output
    ckpt = out / "checkpoints" / "step_00000001.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0x40
    ckpt.write_bytes(bytes(data))
    res = runner.invoke(app, ["replay", "--run", str(out)])
    assert res.exit_code == 2 and "tampered" in res.output
    run_json = json.loads((out / "run.json").read_text())
    run_json["model"]["optimizer"]["lr"] = 0.5
    (out / "run.json").write_text(json.dumps(run_json))
    res = runner.invoke(app, ["replay", "--run", str(out)])
    assert res.exit_code == 2 and "program root" in res.output


@pytest.mark.parametrize("seed", [0, 1])
def test_dataset_commitment_is_deterministic_and_binds_batches(seed: int) -> None:
    spec = DatasetSpec(seed=seed, batch_size=64)
    a, b = Dataset(spec), Dataset(spec)
    assert a.root(30) == b.root(30)
    x, y = a.batch(25)  # second epoch
    assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape == (64, 64)
    assert set(np.unique(y)) <= set(range(10)) and float(x.max()) <= 1.0
    assert a.root(30) != a.root(29)
    assert len(a.x_test) == 297 and not set(map(bytes, a.x_test)) & set(map(bytes, a.x_train[:0]))
    assert Dataset(DatasetSpec(seed=seed + 5, batch_size=64)).root(30) != a.root(30)
    assert DIGITS_MLP.dataset.batch_size == DIGITS_MLP.model.batch_size
