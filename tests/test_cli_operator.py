"""The command line as a new user meets it (issue 16): training reports loss and throughput,
an interrupted run says it is incomplete and resumes to the same commitment, bad input ends
in one line saying what to do, and a run is verified before it is published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replay.runner import read_run, replay, resume, train
from trainproof.cli import app

TRAIN = ["train", "--example", "digits-mlp", "--steps", "4", "--checkpoint-every", "2"]


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output, res.output
    text = " ".join(res.output.split())
    for needle in needles:
        assert needle in text, res.output


def test_train_prints_loss_and_throughput_per_checkpoint(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    lines = _lines(res.stdout)[:-1]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert lines[0]["loss"] is None and lines[0]["steps_per_s"] is None  # C_0: nothing trained
    assert all(isinstance(line["loss"], float) and line["loss"] > 0 for line in lines[1:])
    assert all(line["steps_per_s"] > 0 for line in lines[1:])
    assert "checkpoint step 2: loss" in res.stderr


def test_interrupted_run_says_incomplete_and_resumes_to_the_same_root(tmp_path: Path) -> None:
    whole = train("digits-mlp", 6, 2, tmp_path / "whole", backend="numpy")

    def interrupt(t: int) -> None:
        if t == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("digits-mlp", 6, 2, tmp_path / "cut", backend="numpy", on_step=interrupt)
    res = CliRunner().invoke(app, ["replay", "--run", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output  # the finished interval still replays
    assert _lines(res.stdout)[-1]["complete_run"] is False
    assert "incomplete" in res.stderr and "--resume" in res.stderr

    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    assert [line["step"] for line in _lines(res.stdout)[:-1]] == [4, 6]
    done = read_run(tmp_path / "cut")
    assert done.run_root == whole.run_root and done.step_roots == whole.step_roots
    assert all(r.match for r in replay(tmp_path / "cut", backend="numpy"))


def test_run_interrupted_before_its_first_interval(tmp_path: Path) -> None:
    def interrupt(t: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("digits-mlp", 4, 2, tmp_path / "cut", backend="numpy", on_step=interrupt)
    res = CliRunner().invoke(app, ["replay", "--run", str(tmp_path / "cut")])
    _one_line_error(res, "incomplete", "trainproof train --resume --out")
    assert "must be checkpoint steps" not in res.output
    assert resume(tmp_path / "cut").run_root is not None


def test_replay_summary_counts_checkpoints(tmp_path: Path) -> None:
    train("digits-mlp", 4, 2, tmp_path / "run", backend="numpy")
    res = CliRunner().invoke(app, ["replay", "--run", str(tmp_path / "run"), "--backend", "numpy"])
    summary = _lines(res.stdout)[-1]
    assert summary["checkpoints"] == 3 and summary["intervals"] == 2  # C_0, C_2, C_4
    assert summary["complete_run"] is True


def test_malformed_run_json_error_ends_cleanly(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("[1, 2]")
    res = CliRunner().invoke(app, ["replay", "--run", str(tmp_path / "run")])
    _one_line_error(res, "is malformed", "train the run again")
    assert not res.output.rstrip().endswith(" at")
    assert "at )" not in res.output and " at:" not in res.output


def test_out_naming_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(tmp_path / "a-file")])
    _one_line_error(res, "is a file, not a folder")


def test_unknown_device_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(tmp_path / "run"), "--device", "tpu"])
    _one_line_error(res, "unknown --device 'tpu'", "choose cpu or cuda")


def test_blobs_publish_verifies_the_run_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("digits-mlp", 4, 2, run, backend="numpy")
    tensors = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x10  # one flipped bit in a tensor of the last checkpoint
    tensors.write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["blobs", "publish", "--run", str(run), "--store",
                                   str(tmp_path / "store")])  # fmt: skip
    _one_line_error(res, "not published")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))

    clean = tmp_path / "clean"
    train("digits-mlp", 4, 2, clean, backend="numpy")
    res = CliRunner().invoke(app, ["blobs", "publish", "--run", str(clean), "--store",
                                   str(tmp_path / "store")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(_lines(res.stdout)) == 3
