"""Data-parallel training: a step compiled as N micro-batches (replay/compile/frontend.py),
run whole, in parts here, or with its micro-batches on Ray workers (replay/scale/microbatch.py).

- the N-micro-batch program against torch's own gradient accumulation (loss / N, backward
  per micro-batch, ``.grad`` summed, one ``opt.step()``), buffers included, and N = 1 is the
  plain program, root for root;
- any cut of a program into consecutive parts, run one after another as standalone programs,
  gives the whole program's bits (hypothesis);
- acceptance (issue 17, point 2): the small GPT with 4 micro-batches gives identical
  checkpoint roots with no Ray, 1 worker and 2 workers (local clusters on 127.0.0.1);
- one-line errors: a batch N does not divide, a job without micro-batches, a bad address.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

import trainproof
from prover.service import ProverConfig, train_on_ray
from replay.compile.frontend import CompileError
from replay.compile.job import CompiledJob, Segment, train
from replay.data.checkpoint import to_hex
from replay.dispute.players import Computation
from replay.errors import SpecError
from replay.execute.backends import make_executor
from replay.execute.state import state_root_of
from replay.scale.cluster import ClusterError, LocalCluster
from replay.scale.microbatch import MicroBatchExecutor, make_part, open_executor

pytestmark = pytest.mark.xdist_group(name="ray-microbatch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.detach().to(torch.float32).numpy(), dtype=np.float32)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / max(float(np.abs(ref).max()), 1e-30)


class Net(nn.Module):
    """An MLP with batch norm (running statistics pass from micro-batch to micro-batch) and
    a tied weight (its gradients summed within each micro-batch, then across them)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.c.weight = self.b.weight  # tied
        self.d = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.a(x)))
        h = F.gelu(self.b(h)) + h
        return self.d(F.silu(self.c(h)))


def _data(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, 6, generator=g), torch.randint(0, 3, (rows,), generator=g)


def _job(n: int, rows: int = 8) -> tuple[CompiledJob, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    job = trainproof.compile(model, opt, F.cross_entropy, _data(rows), micro_batches=n)
    return job, model, opt


@pytest.mark.parametrize("n", [2, 4])
def test_micro_batches_match_torch_gradient_accumulation(n: int) -> None:
    job, model, opt = _job(n)
    assert job.micro_batches == n and len(job.segments) == n
    x, y = _data(8)
    ex = make_executor(job.program)
    ex.set_state(job.initial_state)
    ex.run_step((_f32(x), _f32(y)))
    ours = ex.get_state()
    # torch: gradient accumulation, each micro-batch's loss / N, one update
    opt.zero_grad()
    total = 0.0
    for xm, ym in zip(x.chunk(n), y.chunk(n), strict=True):
        loss = F.cross_entropy(model(xm), ym) / n
        loss.backward()
        total += float(loss.detach())
    opt.step()
    assert "c.weight" not in ours  # tied: one slot, under its first name
    for name, t in model.state_dict().items():
        if name == "c.weight":
            continue
        assert _rel(ours[name], _f32(t)) <= 1e-5, name
    assert float(ours["bn.num_batches_tracked"]) == n
    assert abs(float(ours["loss"]) - total) <= 1e-6 * abs(total)
    # every segment is one micro-batch's: its outputs are what the tail reads
    for s in job.segments:
        assert s.outputs and s.start < s.stop
    assert job.segments[0].start == 2  # after the two LOAD_BATCHes
    # the plan: batch norm's statistics pass from segment to segment, so they run in order
    with MicroBatchExecutor(job.program, job.segments) as mb:
        assert not mb.parallel
        mb.set_state(job.initial_state)
        mb.run_step((_f32(x), _f32(y)))
        parts = mb.get_state()
    assert state_root_of(job.program, parts) == state_root_of(job.program, ours)


def test_one_micro_batch_is_the_plain_program() -> None:
    plain, _, _ = _job(1)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    again = trainproof.compile(model, opt, F.cross_entropy, _data(8))
    assert plain.program_root == again.program_root
    assert plain.micro_batches == 1 and plain.segments == ()
    assert "segments" not in plain.manifest().model_dump()  # job.json as it always was


def test_job_folder_keeps_the_segments(tmp_path: Path) -> None:
    job, _, _ = _job(2)
    job.save(tmp_path / "j")
    back = CompiledJob.load(tmp_path / "j")
    assert back.micro_batches == 2 and back.segments == job.segments
    assert json.loads((tmp_path / "j" / "job.json").read_text())["micro_batches"] == 2


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


_SMALL: dict[str, CompiledJob] = {}


def _small() -> CompiledJob:
    if not _SMALL:
        torch.manual_seed(0)
        model = _Small()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(2)
        example = (torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g))
        _SMALL["job"] = trainproof.compile(model, opt, F.cross_entropy, example, micro_batches=3)
    return _SMALL["job"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=5), st.data())
def test_any_cut_into_parts_gives_the_whole_programs_bits(cuts: list[int], data) -> None:  # type: ignore[no-untyped-def]
    """Spec: ops [start, stop) as a standalone program (make_part) hand the rest exactly the
    values the whole program has there, wherever the cuts fall."""
    job = _small()
    program = job.program
    first, n = job.segments[0].start, len(program.ops)
    points = sorted({first + 1 + c % (n - first - 1) for c in cuts})
    bounds = [first, *points]
    segments = [Segment(start=a, stop=z) for a, z in itertools.pairwise(bounds)]
    if not segments:
        segments = [Segment(start=first, stop=points[0])]
    g = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch = (g.standard_normal((6, 4)).astype(np.float32), g.integers(0, 3, 6).astype(np.float32))
    whole = make_executor(program, "numpy")
    whole.set_state(job.initial_state)
    with MicroBatchExecutor(program, segments, backend="numpy") as parts:
        parts.set_state(job.initial_state)
        for _ in range(2):
            whole.run_step(batch)
            parts.run_step(batch)
        a, b = whole.get_state(), parts.get_state()
    for k in a:
        assert np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k


def test_a_part_reads_only_its_micro_batchs_rows() -> None:
    job = _small()
    for m, s in enumerate(job.segments):
        part = make_part(job.program, s.start, s.stop)
        assert part.spec.windows["batch.x"] == (m * 8, (m + 1) * 8)  # 2 rows of 4
        assert part.spec.windows["batch.y"] == (m * 2, (m + 1) * 2)


# -- acceptance: the small GPT, 4 micro-batches, no Ray / 1 worker / 2 workers


@pytest.fixture(scope="module")
def small_gpt_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from small_gpt import factory

    model, opt, loss, example, sched = factory(2)
    job = trainproof.compile(
        model, opt, loss, example, lr_schedule=sched, schedule_steps=2, micro_batches=4
    )
    assert job.micro_batches == 4 and len(job.segments) == 4
    folder = tmp_path_factory.mktemp("gpt") / "job"
    job.save(folder)
    return folder


def _roots(run: object) -> list[str]:
    return [r.state_root for r in run.results]  # type: ignore[attr-defined]


def test_small_gpt_micro_batches_same_roots_without_ray_and_on_1_or_2_workers(
    small_gpt_job: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(EXAMPLES))
    from small_gpt import dataset

    job = CompiledJob.load(small_gpt_job)
    data = dataset()
    t0 = time.perf_counter()
    plain = train(job, data, 2, 1, tmp_path / "plain")
    timings = {"plain": time.perf_counter() - t0}
    runs = {}
    for cpus in (1, 2):
        t0 = time.perf_counter()
        with LocalCluster(cpus=cpus) as cluster:
            with open_executor(job.program, job.segments, cluster.address) as ex:
                assert ex.parallel and ex.workers == cpus
            runs[cpus] = trainproof.train(
                job, data, 2, 1, tmp_path / f"ray{cpus}", ray=cluster.address
            )
            if cpus == 2:  # the prover's way: checkpoints seeded into its Computation
                comp = Computation(job.program, data, job.initial_state, 1, 1)
                segments = [s.model_dump() for s in job.segments]
                train_on_ray(comp, segments, cluster.address)
                prover_roots = [to_hex(r) for r in comp.checkpoint_roots()]
        timings[f"ray{cpus}"] = time.perf_counter() - t0
    assert len(_roots(plain)) == 3
    assert _roots(runs[1]) == _roots(plain), timings
    assert _roots(runs[2]) == _roots(plain), timings
    assert runs[2].run_root == plain.run_root
    assert [r.loss for r in runs[2].results] == [r.loss for r in plain.results]
    assert prover_roots == _roots(plain)[:2]


# -- one-line errors


def test_a_batch_the_micro_batch_count_does_not_divide_is_refused() -> None:
    torch.manual_seed(0)
    model = _Small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    example = (torch.randn(6, 4), torch.randint(0, 3, (6,)))
    with pytest.raises(CompileError, match=r"6 rows, which micro_batches=4 does not divide"):
        trainproof.compile(model, opt, F.cross_entropy, example, micro_batches=4)
    with pytest.raises(CompileError, match="positive integer"):
        trainproof.compile(model, opt, F.cross_entropy, example, micro_batches=0)


def test_ray_needs_micro_batches_and_a_ray_address(tmp_path: Path) -> None:
    plain, _, _ = _job(1)
    with pytest.raises(
        SpecError, match=r"compiled without them: compile it with .*--micro-batches"
    ):
        open_executor(plain.program, plain.segments, "auto")
    job = _small()
    with pytest.raises(ClusterError, match=r"'nowhere' is not a Ray address"):
        open_executor(job.program, job.segments, "nowhere")
    job.save(tmp_path / "job")
    np.savez(tmp_path / "d.npz", x=np.zeros((12, 4), np.float32), y=np.zeros(12, np.float32))
    from trainproof.cli import app

    result = CliRunner().invoke(app, [
        "train", "--job", str(tmp_path / "job"), "--data", str(tmp_path / "d.npz"), "--steps",
        "1", "--checkpoint-every", "1", "--out", str(tmp_path / "run"), "--ray", "no:where",
    ])  # fmt: skip
    assert result.exit_code == 2
    assert "is not a Ray address" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


FACTORY = """
import torch
import torch.nn.functional as F


def factory():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, F.cross_entropy, (torch.randn(6, 4), torch.randint(0, 3, (6,)))
"""


def test_compile_command_takes_micro_batches(tmp_path: Path) -> None:
    from trainproof.cli import app

    (tmp_path / "m.py").write_text(FACTORY)
    model = f"{tmp_path / 'm.py'}:factory"
    ok = CliRunner().invoke(app, ["compile", "--model", model, "--micro-batches", "3",
                                  "--out", str(tmp_path / "j")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "j" / "job.json").read_text())["micro_batches"] == 3
    bad = CliRunner().invoke(app, ["compile", "--model", model, "--micro-batches", "4",
                                   "--out", str(tmp_path / "k")])  # fmt: skip
    assert bad.exit_code == 2
    assert "error: the example batch has 6 rows, which micro_batches=4 does not divide" in (
        bad.output
    )
    assert not (tmp_path / "k").exists()


def test_prover_ray_option_is_checked() -> None:
    base = {"rpc": "http://127.0.0.1:1", "deployment": "d.json", "db": "p.db", "job": 1,
            "store": ["s"]}  # fmt: skip
    assert ProverConfig(**base, ray="127.0.0.1:6379").ray == "127.0.0.1:6379"
    with pytest.raises(ValidationError, match="--ray trains honestly: drop --fault"):
        ProverConfig(**base, ray="auto", fault="lazy")
    with pytest.raises(ValidationError, match="is not a Ray address"):
        ProverConfig(**base, ray="no:where")
