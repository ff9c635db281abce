"""Checkpoints are untrusted input: every malformed or tampered file is rejected, nothing loaded."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from protocol.ir import Program
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import DIGITS_MLP
from replay.data.checkpoint import from_hex, load_checkpoint, save_checkpoint
from replay.errors import CheckpointError
from replay.execute.state import state_root_of


@pytest.fixture(scope="module")
def program() -> Program:
    return compile_train(DIGITS_MLP.model)


@pytest.fixture
def saved(tmp_path: Path, program: Program) -> tuple[Path, dict[str, np.ndarray]]:
    state = initial_state(DIGITS_MLP.model, program)
    save_checkpoint(tmp_path / "ckpt", 0, program, state)
    return tmp_path / "ckpt" / "step_00000000.json", state


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_manifest(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_round_trip(saved, program: Program) -> None:
    path, state = saved
    manifest, loaded = load_checkpoint(path, program, state_root_of(program, state))
    assert from_hex(manifest.state_root) == state_root_of(program, state)
    assert set(loaded) == set(state)
    for k in state:
        assert np.array_equal(loaded[k].view(np.uint32), state[k].view(np.uint32))


def test_tampered_tensor_is_rejected(saved, program: Program) -> None:
    path, _ = saved
    data = bytearray((path.parent / "step_00000000.safetensors").read_bytes())
    data[-5] ^= 0x01  # a data byte of the last tensor
    (path.parent / "step_00000000.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(path, program)


def test_truncated_file_is_rejected(saved, program: Program) -> None:
    path, _ = saved
    f = path.parent / "step_00000000.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path, program)


def test_garbage_header_is_rejected(saved, program: Program) -> None:
    path, _ = saved
    (path.parent / "step_00000000.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path, program)


def test_wrong_shape_is_rejected_even_with_consistent_manifest(saved, program: Program) -> None:
    """An attacker rewrites the file and the manifest together: the shape check still holds."""
    path, state = saved
    bad = dict(state)
    bad["layer0.bias"] = np.zeros((64,), np.float32)
    f = path.parent / "step_00000000.safetensors"
    f.write_bytes(safetensors.numpy.save(bad))
    m = _manifest(path)
    for e in m["slots"]:
        if e["name"] == "layer0.bias":
            e["shape"] = [64]
    _write_manifest(path, m)
    with pytest.raises(CheckpointError, match=r"tensor layer0.bias has shape \[64\]"):
        load_checkpoint(path, program)


def test_missing_or_extra_tensor_is_rejected(saved, program: Program) -> None:
    path, state = saved
    f = path.parent / "step_00000000.safetensors"
    extra = dict(state) | {"evil": np.zeros(3, np.float32)}
    f.write_bytes(safetensors.numpy.save(extra))
    with pytest.raises(CheckpointError, match="not in the program"):
        load_checkpoint(path, program)
    missing = {k: v for k, v in state.items() if k != "loss"}
    f.write_bytes(safetensors.numpy.save(missing))
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path, program)


def test_wrong_dtype_is_rejected(saved, program: Program) -> None:
    path, state = saved
    f = path.parent / "step_00000000.safetensors"
    bad = dict(state) | {"loss": np.zeros((), np.float64)}
    f.write_bytes(safetensors.numpy.save(bad))
    with pytest.raises(CheckpointError, match="dtype float64"):
        load_checkpoint(path, program)


@pytest.mark.parametrize(
    "target", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"]
)
def test_manifest_pointing_outside_its_folder_is_rejected(
    saved, program: Program, target: str
) -> None:
    path, _ = saved
    (path.parent.parent / "outside.safetensors").write_bytes(
        (path.parent / "step_00000000.safetensors").read_bytes()
    )
    m = _manifest(path)
    m["file"] = target
    _write_manifest(path, m)
    with pytest.raises(CheckpointError, match=r"outside its folder|absolute path"):
        load_checkpoint(path, program)


def test_symlink_out_of_folder_is_rejected(saved, program: Program) -> None:
    path, _ = saved
    real = path.parent.parent / "real.safetensors"
    real.write_bytes((path.parent / "step_00000000.safetensors").read_bytes())
    os.symlink(real, path.parent / "link.safetensors")
    m = _manifest(path)
    m["file"] = "link.safetensors"
    _write_manifest(path, m)
    with pytest.raises(CheckpointError, match="outside its folder"):
        load_checkpoint(path, program)


class _Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["state.pkl", "state.pt", "sneaky.safetensors"])
def test_pickle_is_refused_and_never_unpickled(
    saved, program: Program, tmp_path: Path, name: str
) -> None:
    path, _ = saved
    marker = tmp_path / "unpickled"
    (path.parent / name).write_bytes(pickle.dumps(_Boom(str(marker)), protocol=4))
    m = _manifest(path)
    m["file"] = name
    _write_manifest(path, m)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path, program)
    assert not marker.exists()


def test_manifest_root_and_expected_root_are_checked(saved, program: Program) -> None:
    path, _ = saved
    good = _manifest(path)
    with pytest.raises(CheckpointError, match="the run committed"):
        load_checkpoint(path, program, b"\x11" * 32)
    bad = dict(good) | {"state_root": "0x" + "22" * 32}
    _write_manifest(path, bad)
    with pytest.raises(CheckpointError, match="differs from the manifest"):
        load_checkpoint(path, program)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m | {"state_root": "0x1234"},
        lambda m: m | {"step": -1},
        lambda m: m | {"extra": 1},
        lambda m: {k: v for k, v in m.items() if k != "file"},
    ],
)
def test_malformed_manifest_is_rejected(saved, program: Program, edit) -> None:
    path, _ = saved
    _write_manifest(path, edit(_manifest(path)))
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path, program)


def test_missing_manifest_and_not_json(saved, program: Program) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(path.parent / "nope.json", program)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path, program)
