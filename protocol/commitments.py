"""Tensor and state commitments (DESIGN §4.2).

- tensor: float32 little-endian, C order, cut in ``CHUNK_BYTES`` chunks (last zero-padded);
  ``data_root = MTH(chunks)``; ``tensor_root = H(0x02 || dtype:u8 || numel:u64be || data_root)``.
- state: ``state_root = MTH(slot values)``, a slot value being its tensor_root or 32 zero
  bytes when the slot is empty.

``data_root`` of a large tensor is hashed by the native extension ``protocol._treehash``,
which releases the GIL and uses every core; :func:`data_root_reference` is the plain-Python
definition it is tested against (and the fallback where the extension could not be built).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from protocol.constants import (
    CHUNK_BYTES,
    DTYPE_FLOAT32,
    DTYPE_ITEMSIZE,
    EMPTY_SLOT,
    MAX_NUMEL,
    TENSOR_PREFIX,
)
from protocol.errors import CommitmentInputError
from protocol.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, merkle_root, node_hash

try:  # the native hasher; optional at build time, always tested where present
    from protocol import _treehash
except ImportError:  # pragma: no cover - exercised only on machines without a C compiler
    _treehash = None

NATIVE_HASHER: bool = _treehash is not None
FLOAT32_LE = np.dtype("<f4")


def hash_threads() -> int:
    """Threads used for hashing: ``TRAINPROOF_HASH_THREADS`` or every core this process may use."""
    env = os.environ.get("TRAINPROOF_HASH_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


def as_float32_bytes(array: Any) -> memoryview:
    """The committed byte layout of ``array``, or a CommitmentInputError saying what is wrong.

    Accepts a numpy array of dtype float32 (little-endian), C-contiguous, any shape.
    """
    if not isinstance(array, np.ndarray):
        raise CommitmentInputError(
            f"expected a numpy.ndarray, got {type(array).__name__}; convert with np.asarray(...)"
        )
    if array.dtype != FLOAT32_LE:
        raise CommitmentInputError(
            f"tensor dtype is {array.dtype.str!r}; commitments are float32 little-endian ('<f4'): "
            "convert with array.astype('<f4')"
        )
    if not array.flags.c_contiguous:
        raise CommitmentInputError(
            "tensor is not C-contiguous (a transposed or strided view?): "
            "pass np.ascontiguousarray(array)"
        )
    return memoryview(array).cast("B")


def chunk_count(numel: int, itemsize: int = 4) -> int:
    """Number of ``CHUNK_BYTES`` chunks of a tensor of ``numel`` elements."""
    return -(-numel * itemsize // CHUNK_BYTES)


def chunks_of(data: bytes | memoryview) -> list[bytes]:
    """The chunk leaves of raw tensor bytes, the last zero-padded to ``CHUNK_BYTES``."""
    raw = bytes(data)
    out = [raw[i : i + CHUNK_BYTES] for i in range(0, len(raw), CHUNK_BYTES)]
    if out and len(out[-1]) < CHUNK_BYTES:
        out[-1] = out[-1].ljust(CHUNK_BYTES, b"\x00")
    return out


def data_root_reference(data: bytes | memoryview) -> bytes:
    """Plain-Python ``MTH(chunks)``: the definition, single-threaded."""
    return merkle_root(chunks_of(data))


def data_root(data: bytes | memoryview, threads: int | None = None) -> bytes:
    """``MTH(chunks)`` of raw tensor bytes, on all cores when the native hasher is built."""
    if _treehash is None:
        return data_root_reference(data)
    return _treehash.mth_chunks(data, CHUNK_BYTES, threads or hash_threads())


def tensor_root_from_fields(dtype: int, numel: int, data_root_: bytes) -> bytes:
    """``H(0x02 || dtype:u8 || numel:u64be || data_root)``."""
    if dtype not in DTYPE_ITEMSIZE:
        raise CommitmentInputError(f"unknown dtype code {dtype}; v0 knows {sorted(DTYPE_ITEMSIZE)}")
    if not 0 <= numel <= MAX_NUMEL:
        raise CommitmentInputError(f"numel {numel} does not fit a u64")
    if len(data_root_) != 32:
        raise CommitmentInputError(f"data_root is {len(data_root_)} bytes, expected 32")
    return hashlib.sha256(
        TENSOR_PREFIX + bytes([dtype]) + numel.to_bytes(8, "big") + data_root_
    ).digest()


def tensor_root(array: np.ndarray, threads: int | None = None) -> bytes:
    """The commitment of a float32 tensor (DESIGN §4.2)."""
    raw = as_float32_bytes(array)
    return tensor_root_from_fields(DTYPE_FLOAT32, array.size, data_root(raw, threads))


def tensor_roots(
    arrays: Sequence[np.ndarray], threads: int | None = None, nan_bits: int | None = None
) -> list[bytes]:
    """``tensor_root`` of each float32 tensor, in one native call when the hasher is built:
    the chunk trees of all of them shared by ``threads`` threads (one Python call for a
    whole trace's op outputs instead of one per output). With ``nan_bits`` every NaN is
    hashed as that float32 bit pattern (the arrays are not changed)."""
    if nan_bits is not None and not 0 <= nan_bits <= 0xFFFFFFFF:
        raise CommitmentInputError(f"nan_bits {nan_bits} is not a float32 bit pattern")
    if _treehash is not None and sys.byteorder == "little":
        try:  # the native side checks every buffer: C-contiguous float32 (no Python per array)
            raw = _treehash.tensor_roots(
                arrays, CHUNK_BYTES, threads or hash_threads(), TENSOR_PREFIX[0], DTYPE_FLOAT32,
                "f", DTYPE_ITEMSIZE[DTYPE_FLOAT32], -1 if nan_bits is None else nan_bits,
            )  # fmt: skip
        except (TypeError, ValueError, BufferError):
            for a in arrays:
                as_float32_bytes(a)  # says what is wrong
            raise
        return [raw[i : i + 32] for i in range(0, len(raw), 32)]
    out = []
    for a in arrays:
        as_float32_bytes(a)
        if nan_bits is not None and np.isnan(a).any():
            bits = a.view("<u4").copy()  # set bit patterns, never through a float NaN
            bits[np.isnan(a)] = nan_bits
            a = bits.view(FLOAT32_LE)
        out.append(tensor_root(a, threads))
    return out


def chunk_tree(array: np.ndarray) -> MerkleTree:
    """The full chunk tree of a tensor, for chunk inclusion proofs (disputes, level 4)."""
    return MerkleTree([leaf_hash(c) for c in chunks_of(as_float32_bytes(array))])


def chunk(array: np.ndarray, index: int) -> bytes:
    """Chunk ``index`` of a tensor: ``CHUNK_BYTES`` bytes, zero-padded if it is the last."""
    raw = as_float32_bytes(array)
    n = chunk_count(array.size)
    if not 0 <= index < n:
        raise CommitmentInputError(f"chunk index {index} out of range: the tensor has {n} chunks")
    return bytes(raw[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]).ljust(CHUNK_BYTES, b"\x00")


def slot_value(root: bytes | None) -> bytes:
    """A state slot's leaf data: its tensor_root, or 32 zero bytes when the slot is empty."""
    if root is None:
        return EMPTY_SLOT
    if len(root) != 32:
        raise CommitmentInputError(f"slot value is {len(root)} bytes, expected a 32-byte root")
    return root


def state_tree(slots: Sequence[bytes | None]) -> MerkleTree:
    """The tree over a state's slot values (for slot inclusion proofs)."""
    return MerkleTree.from_leaves([slot_value(s) for s in slots])


def state_root(slots: Sequence[bytes | None]) -> bytes:
    """``MTH(slot values)`` of a state given each slot's tensor_root (None = empty).

    Most slots are empty at a step boundary (every ephemeral one), so a subtree without a
    filled slot is taken from a cache by its size, and only the paths from filled slots up
    are hashed: the same RFC 9162 root as ``merkle_root`` over all values, in
    O(filled · log n) hashes."""
    values = [slot_value(s) for s in slots]
    filled = [i for i, s in enumerate(slots) if s is not None]
    if not values:
        return merkle_root([])
    return _sparse_mth(values, filled, 0, len(values))


def _sparse_mth(values: list[bytes], filled: list[int], lo: int, hi: int) -> bytes:
    """MTH of ``values[lo:hi]`` (non-empty), ``filled`` the sorted indices of filled slots."""
    first = bisect.bisect_left(filled, lo)
    if first == len(filled) or filled[first] >= hi:
        return _empty_subtree(hi - lo)
    if hi - lo == 1:
        return leaf_hash(values[lo])
    k = 1 << ((hi - lo - 1).bit_length() - 1)  # the largest power of two below the size
    return node_hash(
        _sparse_mth(values, filled, lo, lo + k), _sparse_mth(values, filled, lo + k, hi)
    )


@functools.lru_cache(maxsize=4096)
def _empty_subtree(size: int) -> bytes:
    """MTH of ``size`` (≥ 1) empty slot values."""
    if size == 1:
        return leaf_hash(EMPTY_SLOT)
    k = 1 << ((size - 1).bit_length() - 1)
    return node_hash(_empty_subtree(k), _empty_subtree(size - k))


class IncrementalStateTree:
    """RFC 9162 tree over slot values with O(log n) single-leaf updates."""

    def __init__(self, roots: Sequence[bytes | None]) -> None:
        self._levels: list[list[bytes]] = [[leaf_hash(slot_value(r)) for r in roots]]
        while len(self._levels[-1]) > 1:
            below = self._levels[-1]
            up = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                up.append(below[-1])
            self._levels.append(up)

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else EMPTY_ROOT

    def update(self, index: int, root: bytes | None) -> bytes:
        """Set slot ``index``'s value to ``root`` (None = empty); returns the new state root."""
        self._levels[0][index] = leaf_hash(slot_value(root))
        i = index
        for depth in range(len(self._levels) - 1):
            below = self._levels[depth]
            parent = i // 2
            left = 2 * parent
            if left + 1 < len(below):
                value = node_hash(below[left], below[left + 1])
            else:
                value = below[left]
            self._levels[depth + 1][parent] = value
            i = parent
        return self.root


def state_roots_after(
    slots: Sequence[bytes | None], updates: Sequence[tuple[int, bytes | None]]
) -> list[bytes]:
    """The state root of ``slots``, then the root after each ``(slot, tensor_root)`` update
    in turn (None = empty): ``len(updates) + 1`` roots, in one native call when the hasher is
    built (a dispute trace's op-level roots)."""
    values = [slot_value(s) for s in slots]
    index = np.fromiter((i for i, _ in updates), dtype=np.int64, count=len(updates))
    if index.size and not (0 <= index.min() and index.max() < len(values)):
        bad = int(index[(index < 0) | (index >= len(values))][0])
        raise CommitmentInputError(f"update names slot {bad} of a {len(values)}-slot state")
    if _treehash is None or not hasattr(_treehash, "state_roots"):
        tree = IncrementalStateTree(slots)
        return [tree.root] + [tree.update(i, r) for i, r in updates]
    # the (u32 little-endian index, 32-byte value) records, built as one array
    records = np.empty((len(updates), 36), dtype=np.uint8)
    records[:, :4] = index.astype("<u4").view(np.uint8).reshape(-1, 4)
    roots = b"".join([EMPTY_SLOT if r is None else r for _, r in updates])
    if len(roots) != 32 * len(updates):
        for _, r in updates:
            slot_value(r)  # says which value is not a 32-byte root
    records[:, 4:] = np.frombuffer(roots, dtype=np.uint8).reshape(-1, 32)
    raw = _treehash.state_roots(b"".join(values), records.tobytes())
    return [raw[k : k + 32] for k in range(0, len(raw), 32)]
