"""State commitments over a program's slot table, and an incrementally updated state tree.

``state_root = MTH(slot values)`` (docs/protocol.md §2.2): a slot value is the slot's
``tensor_root`` or 32 zero bytes when empty. :class:`IncrementalStateTree` keeps every level of
that RFC 9162 tree, so replacing one slot re-hashes only that slot's tensor and its path to the
root — what the op-level trace needs (one slot changes per op).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol.commitments import slot_value, state_root, tensor_root
from protocol.ir import Program
from protocol.merkle import EMPTY_ROOT, leaf_hash, node_hash


def as_committed(array: np.ndarray) -> np.ndarray:
    """A C-contiguous little-endian float32 array with ``array``'s shape (0-d stays 0-d)."""
    return np.asarray(array, dtype="<f4", order="C")


def slot_roots(program: Program, values: Sequence[np.ndarray | None]) -> list[bytes | None]:
    """tensor_root of every slot (None for an empty slot)."""
    return [None if v is None else tensor_root(as_committed(v)) for v in values]


def state_root_of(program: Program, persistent: Mapping[str, np.ndarray]) -> bytes:
    """state_root at a step boundary: persistent slots by name, ephemeral slots empty."""
    roots: list[bytes | None] = []
    for slot in program.slots:
        roots.append(tensor_root(as_committed(persistent[slot.name])) if slot.persistent else None)
    return state_root(roots)


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
