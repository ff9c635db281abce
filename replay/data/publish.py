"""Publishing checkpoints to a blob store, and fetching them back verified.

The prover publishes every checkpoint of a run (manifest + safetensors, two blobs) under a
pointer keyed by its state root; a challenger that knows a committed state root from the
chain fetches the two blobs (each re-hashed against its address), loads them with every
check of ``replay.data.checkpoint.load_checkpoint`` and accepts the state only if its root is
the committed one. Anything else — missing, tampered, truncated, substituted — raises, and
the caller falls back to replaying from an earlier verified state.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from protocol.blobs import BlobError, BlobStore, CheckpointPointer, StoreSet, StoreUnreachable
from protocol.ir import Program
from replay.data.checkpoint import (
    CheckpointError,
    from_hex,
    load_checkpoint,
    read_manifest,
    resolve_inside,
    save_checkpoint,
)
from replay.runner import read_run

log = logging.getLogger("trainproof.blobs")


def publish_checkpoint(store: BlobStore, manifest_path: Path) -> CheckpointPointer:
    """Put one checkpoint (a manifest and its safetensors file) into the store."""
    manifest = read_manifest(manifest_path)
    tensors = resolve_inside(manifest_path.parent, manifest.file, "checkpoint file")
    pointer = CheckpointPointer(
        state_root=from_hex(manifest.state_root).hex(),
        step=manifest.step,
        manifest=store.put(manifest_path.read_bytes()),
        tensors=store.put(tensors.read_bytes()),
    )
    store.put_pointer(pointer)
    return pointer


def publish_run(store: BlobStore, run_dir: Path) -> list[CheckpointPointer]:
    """Publish every checkpoint of a run folder written by ``trainproof train``, after
    :func:`verify_run`: nothing of a damaged run is published."""
    run = read_run(run_dir)
    verify_run(run_dir)
    return [publish_checkpoint(store, run_dir / ref.manifest) for ref in run.checkpoints]


def verify_run(run_dir: Path) -> None:
    """Check a run before anyone relies on it: its program and dataset roots recompile from
    its specs, its run root is the tree of its checkpoint roots, and every checkpoint loads
    with all checks and hashes to the root run.json lists. Raises CheckpointError naming the
    first problem."""
    from replay.runner import check_run_commitments

    run = read_run(run_dir)
    try:
        program, _ = check_run_commitments(run)
        for ref in run.checkpoints:
            manifest = resolve_inside(run_dir, ref.manifest, "checkpoint manifest")
            load_checkpoint(manifest, program, expected_root=from_hex(ref.state_root))
    except CheckpointError as e:
        raise CheckpointError(
            f"{run_dir} not published: {e}; train the run again (or restore the damaged files)"
        ) from None


def publish_state(
    store: BlobStore, program: Program, step: int, state: Mapping[str, np.ndarray]
) -> CheckpointPointer:
    """Write a state as a checkpoint and publish it (for provers holding states in memory)."""
    with tempfile.TemporaryDirectory(prefix="trainproof-publish-") as tmp:
        manifest = save_checkpoint(Path(tmp), step, program, state)
        return publish_checkpoint(store, Path(tmp) / f"{Path(manifest.file).stem}.json")


def fetch_checkpoint(
    store: BlobStore, program: Program, state_root: bytes
) -> dict[str, np.ndarray]:
    """The persistent state whose root is ``state_root``, fetched and verified.

    From a :class:`StoreSet`, every member's pointer is tried in turn until one leads to
    blobs that verify (from any member): a store answering with a lying pointer cannot
    shadow an honest one behind it. Raises BlobError (missing or substituted blob; a
    StoreUnreachable when no store answered) or CheckpointError (anything about the
    checkpoint itself, including a state root other than the one asked for).
    """
    root = state_root.hex()
    if not isinstance(store, StoreSet):
        return _fetch_from(store, store.get_pointer(root), program, state_root)
    failures: list[Exception] = []
    unreachable = 0
    for member, name in zip(store.stores, store.names, strict=True):
        try:
            pointer = member.get_pointer(root)
        except StoreUnreachable as e:
            unreachable += 1
            failures.append(e)
            continue
        except (BlobError, OSError) as e:
            failures.append(e)
            continue
        try:
            return _fetch_from(store, pointer, program, state_root)
        except (BlobError, CheckpointError) as e:
            log.warning("event=pointer_rejected store=%s state_root=%s why=%r", name, root, str(e))
            failures.append(e)
    checkpoint = [e for e in failures if isinstance(e, CheckpointError)]
    if checkpoint:
        raise checkpoint[-1]
    why = "; ".join(f"{name}: {e}" for name, e in zip(store.names, failures, strict=False))
    error = StoreUnreachable if unreachable == len(store.stores) else BlobError
    raise error(f"checkpoint {root} not usable from any of {len(store.stores)} stores: {why}")


def _fetch_from(
    store: BlobStore, pointer: CheckpointPointer, program: Program, state_root: bytes
) -> dict[str, np.ndarray]:
    manifest_bytes = store.get(pointer.manifest)
    tensor_bytes = store.get(pointer.tensors)
    with tempfile.TemporaryDirectory(prefix="trainproof-fetch-") as tmp:
        manifest_path = Path(tmp) / "checkpoint.json"
        manifest_path.write_bytes(manifest_bytes)
        manifest = read_manifest(manifest_path)
        name = manifest.file
        if Path(name).name != name or name.startswith(".") or not name.endswith(".safetensors"):
            raise CheckpointError(f"checkpoint manifest names {name!r}: not a .safetensors file")
        (Path(tmp) / name).write_bytes(tensor_bytes)
        _, state = load_checkpoint(manifest_path, program, expected_root=state_root)
    return state


__all__ = [
    "BlobError",
    "CheckpointError",
    "fetch_checkpoint",
    "publish_checkpoint",
    "publish_run",
    "publish_state",
    "verify_run",
]
