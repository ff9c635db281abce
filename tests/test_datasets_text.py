"""The text dataset (torch 2.13.0 sources, byte-level and BPE), the --data forms, and
streaming of memory-mapped .npy datasets (docs/protocol.md §3.10.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainproof
from protocol.commitments import tensor_root
from protocol.merkle import merkle_root
from replay.errors import SpecError
from trainproof import datasets, text_corpus

ROOT = Path(__file__).resolve().parents[1]


def _stream(files: list[bytes], encode) -> np.ndarray:
    out: list[int] = []
    for d in files:
        out += [*encode(d), 0]
    return np.asarray(out, dtype=np.int64)


def _split(seed: int, heldout: int) -> tuple[list[bytes], list[bytes]]:
    files = [d for _, d in text_corpus.corpus_files()]
    held = set(np.random.default_rng(seed).permutation(len(files))[:heldout].tolist())
    return (
        [d for i, d in enumerate(files) if i not in held],
        [d for i, d in enumerate(files) if i in held],
    )


def test_corpus_is_the_pinned_torch_sources() -> None:
    files = text_corpus.corpus_files()
    paths = [p for p, _ in files]
    assert paths == sorted(paths) and len(paths) == 50
    assert all(p.startswith(("nn/modules/", "optim/")) and p.endswith(".py") for p in paths)
    assert sum(len(d) for _, d in files) == 1_410_526
    assert all(b"\x00" not in d and datasets.BPE_SPECIAL.encode() not in d for _, d in files)
    # the same bytes twice, and the per-file hashes are the file's sha256
    assert [d for _, d in text_corpus.corpus_files()] == [d for _, d in files]
    root = text_corpus.torch_dir()
    for rel, want in text_corpus.FILES:
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == want
    assert Path(torch.__file__).parent == root


def test_altered_byte_is_refused(tmp_path, monkeypatch) -> None:
    picked = text_corpus.FILES[:2]
    for rel, _ in picked:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((text_corpus.torch_dir() / rel).read_bytes())
    monkeypatch.setattr(text_corpus, "FILES", picked)
    monkeypatch.setattr(text_corpus, "torch_dir", lambda: tmp_path)
    assert len(text_corpus.corpus_files()) == 2  # an exact copy passes
    victim = tmp_path / picked[1][0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(SpecError, match=r"_functions\.py has sha256 .* not torch 2\.13\.0"):
        text_corpus.corpus_files()
    victim.unlink()
    with pytest.raises(SpecError, match="missing"):
        datasets.text("bytes", context=8, batch_size=2, heldout=0)


def test_byte_windows_shift_by_one_and_batches_commit() -> None:
    ctx, bs, seed, heldout = 16, 4, 3, 5
    d = datasets.text("bytes", context=ctx, batch_size=bs, seed=seed, heldout=heldout)
    train, test = _split(seed, heldout)
    stream = _stream(train, lambda b: np.frombuffer(b, np.uint8))
    n = (len(stream) - 1) // ctx
    xw = stream[: n * ctx].reshape(n, ctx)
    yw = stream[1 : n * ctx + 1].reshape(n, ctx)
    assert np.array_equal(xw[:, 1:], yw[:, :-1])
    assert np.array_equal(d.x_train, datasets.from_arrays(xw, yw, bs, seed).x_train)
    ref = datasets.from_arrays(xw, yw, bs, seed, heldout=0)
    for t in (0, 1, d.per_epoch + 2):
        x, y = d.batch(t)
        assert x.dtype == np.float32 and x.shape == (bs, ctx) and y.shape == (bs, ctx)
        assert np.array_equal(x, ref.batch(t)[0]) and np.array_equal(y, ref.batch(t)[1])
        assert d.leaf(t) == tensor_root(x) + tensor_root(y)
        # each row is a contiguous run of the stream: y is x shifted by one
        assert np.array_equal(x[:, 1:], y[:, :-1])
    assert d.root(3) == merkle_root([d.leaf(t) for t in range(3)])
    ts = _stream(test, lambda b: np.frombuffer(b, np.uint8))
    m = (len(ts) - 1) // ctx
    assert np.array_equal(d.x_test, ts[: m * ctx].reshape(m, ctx).astype(np.float32))
    assert d.spec.vocab == 256 and d.spec.examples == n and d.tokenizer_json is None
    assert d.spec.corpus_sha256 == text_corpus.manifest_sha256()
    assert datasets.text("bytes", context=ctx, batch_size=bs, seed=seed).root(4) == d.root(4)


def test_bpe_is_deterministic_and_trained_on_the_training_files_only() -> None:
    d = datasets.text("bpe", 300, context=12, batch_size=4, seed=1, heldout=5)
    again = datasets.text("bpe", 300, context=12, batch_size=4, seed=1, heldout=5)
    assert d.tokenizer_json == again.tokenizer_json and d.root(3) == again.root(3)
    tok = json.loads(d.tokenizer_json)
    assert tok["model"]["merges"] == json.loads(again.tokenizer_json)["model"]["merges"]
    assert len(tok["model"]["vocab"]) == 300 and d.spec.vocab == 300
    assert d.spec.tokenizer_sha256 == hashlib.sha256(d.tokenizer_json.encode()).hexdigest()
    train, _ = _split(1, 5)
    assert datasets.train_bpe([b.decode() for b in train], 300) == d.tokenizer_json
    assert datasets.train_bpe([b.decode() for b in _split(2, 5)[0]], 300) != d.tokenizer_json
    x, y = d.batch(0)
    assert x.max() < 300 and np.array_equal(x[:, 1:], y[:, :-1])
    # the windows are those of the training files' ids, each file followed by id 0
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(d.tokenizer_json)
    assert t.decode(t.encode(train[0].decode()).ids) == train[0].decode()
    stream = _stream(train, lambda b: t.encode(b.decode()).ids)
    n = (len(stream) - 1) // 12
    xw, yw = stream[: n * 12].reshape(n, 12), stream[1 : n * 12 + 1].reshape(n, 12)
    assert d.root(3) == datasets.from_arrays(xw, yw, 4, 1).root(3)
    # one rayon thread gives the same tokenizer as the default pool
    code = (
        "from trainproof import datasets as d;"
        "print(d.text('bpe', 300, context=12, batch_size=4, seed=1).spec.tokenizer_sha256)"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == d.spec.tokenizer_sha256


def test_text_refusals() -> None:
    with pytest.raises(SpecError, match="vocab 256"):
        datasets.text("bytes", 300)
    with pytest.raises(SpecError, match="below 258"):
        datasets.text("bpe", 200)
    with pytest.raises(SpecError, match="unknown tokenizer"):
        datasets.text("chars", 256)
    with pytest.raises(SpecError, match="heldout 50"):
        datasets.text("bytes", heldout=50)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


@pytest.fixture(scope="module")
def lm_job(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TinyLM(vocab=300)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    example = (torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    job = trainproof.compile(model, opt, lm_loss, example)
    out = tmp_path_factory.mktemp("lm") / "job"
    job.save(out)
    return out


def test_cli_data_forms(lm_job, tmp_path) -> None:
    from typer.testing import CliRunner

    from trainproof.cli import app
    from trainproof.jobcli import load_data

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for form in ("digits", "text:bytes", "text:bpe:VOCAB", "FILE.safetensors", "x.npy"):
        assert form in res.output
    for bad in ("text", "text:bpe", "text:bpe:x", "text:chars", "nosuch.npz"):
        args = ["train", "--job", str(lm_job), "--data", bad, "--steps", "1"]
        res = runner.invoke(app, [*args, "--checkpoint-every", "1", "--out", str(tmp_path / "r")])
        assert res.exit_code == 2, res.output
        err = [line for line in res.output.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: unknown --data form"), res.output
    args = ["train", "--job", str(lm_job), "--data", "text:bpe:400", "--steps", "1"]
    res = runner.invoke(app, [*args, "--checkpoint-every", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "400 token ids but the job's embedding has 300 rows" in res.output
    d = load_data("text:bpe:300", 2, 0, None, (2, 8))
    assert d.spec.tokenizer == "bpe" and d.spec.context == 8 and d.spec.heldout == 5
    with pytest.raises(SpecError, match=r"\[B, context\]"):
        load_data("text:bytes", 2, 0, None, (2, 1, 8, 8))
    for form, vocab in (("text:bytes", 256), ("text:bpe:300", 300)):
        run = tmp_path / form.replace(":", "_")
        args = ["train", "--job", str(lm_job), "--data", form, "--steps", "2"]
        res = runner.invoke(app, [*args, "--checkpoint-every", "1", "--out", str(run)])
        assert res.exit_code == 0, res.output
        lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
        assert [x["step"] for x in lines[:-1]] == [0, 1, 2]
        manifest = json.loads((run / "run.json").read_text())
        assert manifest["data_source"] == form and manifest["dataset_spec"]["vocab"] == vocab
        ref = load_data(form, 2, 0, None, (2, 8))
        assert manifest["dataset_root"] == "0x" + ref.root(2).hex()
        if vocab == 300:
            tok = (run / "tokenizer.json").read_text()
            assert hashlib.sha256(tok.encode()).hexdigest() == ref.spec.tokenizer_sha256
        res = runner.invoke(app, ["replay", "--run", str(run)])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.splitlines()[-1])["mismatches"] == 0


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_npy_larger_than_its_batches_streams(tmp_path) -> None:
    """A 328 MB x.npy (sparse on disk): building the dataset, its root and reading batches
    allocate a few MB, and resident memory grows by far less than the file."""
    n, row, bs, seed, heldout, steps = 20_000, 4096, 8, 0, 4, 40
    (tmp_path / "d").mkdir()
    x = np.lib.format.open_memmap(tmp_path / "d" / "x.npy", "w+", np.float32, (n, row))
    order = np.random.default_rng(seed).permutation(n)
    train = order[heldout:]
    touched = train[np.random.default_rng([seed, 0]).permutation(len(train))[: bs * steps]]
    for i in touched:
        x[i] = i  # only the rows the batches read hold data; the rest is a hole
    x.flush()
    del x
    np.save(tmp_path / "d" / "y.npy", np.arange(n, dtype=np.int32))
    size = (tmp_path / "d" / "x.npy").stat().st_size
    assert size > 300e6
    rss0 = _rss()
    tracemalloc.start()
    try:
        d = datasets.from_files(str(tmp_path / "d"), bs, seed, heldout)
        root = d.root(steps)
        xb, yb = d.batch(steps - 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grew = _rss() - rss0
    assert peak < size / 50, (peak, size)  # ~ one batch (128 KB) + the held-out rows
    assert grew < size / 10, (grew, size)
    assert np.array_equal(yb, touched[(steps - 1) * bs :].astype(np.float32))
    assert np.array_equal(xb[:, :3], np.repeat(yb[:, None], 3, axis=1))
    assert root == merkle_root([d.leaf(t) for t in range(steps)])
    assert d.x_test.shape == (heldout, row)
