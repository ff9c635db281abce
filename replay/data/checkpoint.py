"""Checkpoints: safetensors files of the persistent slots plus a JSON manifest (pydantic).

Saving writes ``step_XXXXXXXX.safetensors`` and ``step_XXXXXXXX.json`` into a folder.
Loading treats both files as untrusted: the manifest must parse, name a ``.safetensors`` file
inside its own folder, the file must not be a pickle, must parse as safetensors, hold exactly
the program's persistent slots as float32 of the right shapes, and re-hash to the manifest's
tensor roots and ``state_root`` (and to the caller's expected root). Any failure raises
:class:`CheckpointError` naming the problem, and nothing is returned.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import safetensors.numpy
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from protocol.commitments import state_root, tensor_root
from protocol.ir import Program
from replay.errors import CheckpointError
from replay.execute.state import as_committed

Hex32 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{64}$")]
CHECKPOINT_FORMAT = "trainproof-checkpoint/v0"
MAX_MANIFEST_BYTES = 4 << 20
#: Headroom over the raw tensor bytes a safetensors file may have (its JSON header).
MAX_HEADER_BYTES = 1 << 20
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz"})


def to_hex(b: bytes) -> str:
    return "0x" + b.hex()


def from_hex(s: str) -> bytes:
    return bytes.fromhex(s.removeprefix("0x"))


class SlotEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shape: tuple[int, ...] = Field(max_length=4)
    tensor_root: Hex32


class CheckpointManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trainproof-checkpoint/v0"] = CHECKPOINT_FORMAT
    step: int = Field(ge=0)
    state_root: Hex32
    file: str = Field(min_length=1, max_length=255)
    slots: tuple[SlotEntry, ...]


def checkpoint_stem(step: int) -> str:
    return f"step_{step:08d}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    folder: Path, step: int, program: Program, state: Mapping[str, np.ndarray]
) -> CheckpointManifest:
    """Write the persistent slots of ``state`` at ``step``; returns the manifest written."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    entries: list[SlotEntry] = []
    roots: list[bytes | None] = []
    for slot in program.slots:
        if not slot.persistent:
            roots.append(None)
            continue
        arr = as_committed(state[slot.name])
        if tuple(arr.shape) != slot.shape:
            raise CheckpointError(f"slot {slot.name} has shape {arr.shape}, expected {slot.shape}")
        root = tensor_root(arr)
        roots.append(root)
        tensors[slot.name] = arr
        entries.append(SlotEntry(name=slot.name, shape=slot.shape, tensor_root=to_hex(root)))
    root = state_root(roots)
    stem = checkpoint_stem(step)
    # One metadata key: safetensors writes its metadata map in hash order, and a
    # checkpoint's bytes (C_0 in a job bundle is content-addressed) must not vary.
    note = f"step={step} state_root={to_hex(root)}"
    data = safetensors.numpy.save(tensors, metadata={"trainproof": note})
    _write_atomic(folder / f"{stem}.safetensors", data)
    manifest = CheckpointManifest(
        step=step, state_root=to_hex(root), file=f"{stem}.safetensors", slots=tuple(entries)
    )
    _write_atomic(folder / f"{stem}.json", manifest.model_dump_json(indent=1).encode())
    return manifest


def read_manifest(path: Path) -> CheckpointManifest:
    if not path.is_file():
        raise CheckpointError(f"checkpoint manifest {path} does not exist")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(
            f"checkpoint manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes"
        )
    try:
        return CheckpointManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise CheckpointError(
            f"checkpoint manifest {path} is malformed: {exc.errors()[0]['msg']} "
            f"at {'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from None


def resolve_inside(folder: Path, name: str, what: str) -> Path:
    """``folder/name`` if it is a plain file inside ``folder`` (no absolute paths, no ``..``)."""
    if os.path.isabs(name) or Path(name).is_absolute():
        raise CheckpointError(f"{what} {name!r} is an absolute path; it must lie inside {folder}")
    base = folder.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise CheckpointError(f"{what} {name!r} points outside its folder {folder}")
    if not target.is_file():
        raise CheckpointError(f"{what} {name!r} does not exist in {folder}")
    return target


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A u64 little-endian header length that fits the file, followed by a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def _reject_pickle(path: Path, head: bytes, size: int | None = None) -> None:
    # a pickle starts with 0x80 (protocol 2+), a torch.save zip with "PK"; a safetensors
    # header length can start with the same bytes (e.g. 0x...80), so those are told apart
    magic = head[:1] == b"\x80" or head[:2] == b"PK"
    if magic and size is not None and _looks_like_safetensors(head, size):
        magic = False
    if path.suffix.lower() in PICKLE_SUFFIXES or magic:
        raise CheckpointError(
            f"{path.name} looks like a pickle / torch.save file; trainproof never unpickles "
            "checkpoints: only .safetensors files are accepted"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name}: checkpoints are .safetensors files")


def load_checkpoint(
    manifest_path: Path, program: Program, expected_root: bytes | None = None
) -> tuple[CheckpointManifest, dict[str, np.ndarray]]:
    """Verify and load a checkpoint; see the module docstring for every check."""
    manifest = read_manifest(manifest_path)
    path = resolve_inside(manifest_path.parent, manifest.file, "checkpoint file")
    persistent = [program.slots[i] for i in program.persistent_slots]
    limit = sum(4 * s.numel for s in persistent) + MAX_HEADER_BYTES
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        _reject_pickle(path, head, size)
        if size > limit:
            raise CheckpointError(f"{path.name} is {size} bytes; this program's state fits {limit}")
        data = head + f.read()
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError on any malformed file
        raise CheckpointError(
            f"{path.name} is not a valid safetensors file (truncated or corrupt?): {exc}"
        ) from None
    names = {s.name for s in persistent}
    if set(tensors) != names:
        raise CheckpointError(
            f"{path.name} holds tensors {sorted(set(tensors) - names)[:5]} not in the program and "
            f"lacks {sorted(names - set(tensors))[:5]}"
        )
    entries = {e.name: e for e in manifest.slots}
    if set(entries) != names or len(entries) != len(manifest.slots):
        raise CheckpointError(
            f"manifest {manifest_path.name} does not list exactly the program's slots"
        )
    roots: list[bytes | None] = []
    for slot in program.slots:
        if not slot.persistent:
            roots.append(None)
            continue
        arr = tensors[slot.name]
        if arr.dtype != np.dtype("<f4"):
            raise CheckpointError(
                f"{path.name}: tensor {slot.name} has dtype {arr.dtype}, not float32"
            )
        if tuple(arr.shape) != slot.shape or entries[slot.name].shape != slot.shape:
            raise CheckpointError(
                f"{path.name}: tensor {slot.name} has shape {list(arr.shape)}, the program's slot "
                f"has shape {list(slot.shape)}"
            )
        root = tensor_root(as_committed(arr))
        if to_hex(root) != entries[slot.name].tensor_root:
            raise CheckpointError(
                f"{path.name}: tensor {slot.name} hashes to {to_hex(root)}, the manifest says "
                f"{entries[slot.name].tensor_root} (tampered?)"
            )
        roots.append(root)
    root = state_root(roots)
    if to_hex(root) != manifest.state_root:
        raise CheckpointError(
            f"{path.name}: state root {to_hex(root)} differs from the manifest's "
            f"{manifest.state_root}"
        )
    if expected_root is not None and root != expected_root:
        raise CheckpointError(
            f"checkpoint of step {manifest.step} has state root {to_hex(root)}, but the run "
            f"committed {to_hex(expected_root)}"
        )
    return manifest, {k: np.array(v, dtype=np.float32, order="C") for k, v in tensors.items()}


def manifest_json(manifest: CheckpointManifest) -> str:
    return json.dumps({"step": manifest.step, "state_root": manifest.state_root})
