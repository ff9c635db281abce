"""The content-addressed blob store, over the filesystem and HTTP, and checkpoint publication."""

import threading
from pathlib import Path

import pytest

from protocol.blobs import BlobError, CheckpointPointer, FileStore, HttpStore, make_server
from replay.compile.compiler import compile_train
from replay.compile.examples import get_example
from replay.data.checkpoint import CheckpointError, from_hex
from replay.data.publish import fetch_checkpoint, publish_run
from replay.runner import read_run, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "digits"
    train("digits-mlp", steps=4, checkpoint_every=2, out=out, backend="numpy")
    return out


@pytest.fixture(scope="module")
def program():
    return compile_train(get_example("digits-mlp").model)


@pytest.fixture
def served(tmp_path):
    store = FileStore(tmp_path / "store")
    server = make_server(store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield store, HttpStore(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def test_file_store_round_trip_and_rejects_tampering(tmp_path) -> None:
    store = FileStore(tmp_path)
    address = store.put(b"weights")
    assert store.get(address) == b"weights"
    assert store.put(b"weights") == address  # idempotent
    (tmp_path / "blobs" / address[:2] / address[2:]).write_bytes(b"WEIGHTS")
    with pytest.raises(BlobError, match="corrupted or substituted"):
        store.get(address)
    with pytest.raises(BlobError, match="not in the store"):
        store.get("ab" * 32)
    with pytest.raises(BlobError, match="64 hex characters"):
        store.get("../../etc/passwd")


def test_http_store_verifies_what_it_fetches(served) -> None:
    store, remote = served
    address = store.put(b"\x00" * 5000)
    assert remote.get(address) == b"\x00" * 5000
    (store.root / "blobs" / address[:2] / address[2:]).write_bytes(b"\x01" * 5000)
    with pytest.raises(BlobError, match="HTTP 404"):  # the server refuses to serve it ...
        remote.get(address)
    with pytest.raises(BlobError, match="HTTP 404"):
        remote.get_pointer("cd" * 32)
    with pytest.raises(BlobError, match="read-only"):
        remote.put(b"x")


def test_published_checkpoints_come_back_verified(served, run_dir, program) -> None:
    store, remote = served
    pointers = publish_run(store, run_dir)
    run = read_run(run_dir)
    assert [p.step for p in pointers] == [c.step for c in run.checkpoints]
    for ref in run.checkpoints:
        state = fetch_checkpoint(remote, program, from_hex(ref.state_root))
        assert set(state) == {program.slots[i].name for i in program.persistent_slots}


def test_a_pointer_to_another_checkpoint_is_rejected(served, run_dir, program) -> None:
    store, remote = served
    first, second, *_ = publish_run(store, run_dir)
    # a store that answers the root of checkpoint 2 with the blobs of checkpoint 0
    store.put_pointer(CheckpointPointer(
        state_root=second.state_root, step=second.step,
        manifest=first.manifest, tensors=first.tensors,
    ))  # fmt: skip
    with pytest.raises(CheckpointError, match="committed"):
        fetch_checkpoint(remote, program, bytes.fromhex(second.state_root))


def test_truncated_or_missing_checkpoint_is_rejected(served, run_dir, program) -> None:
    store, remote = served
    pointer = publish_run(store, run_dir)[1]
    truncated = store.put(store.get(pointer.tensors)[:-100])
    store.put_pointer(pointer.model_copy(update={"tensors": truncated}))
    with pytest.raises(CheckpointError):
        fetch_checkpoint(remote, program, bytes.fromhex(pointer.state_root))
    with pytest.raises(BlobError, match="HTTP 404"):
        fetch_checkpoint(remote, program, b"\x11" * 32)
