"""State commitments over a program's slot table, and an incrementally updated state tree.

``state_root = MTH(slot values)`` (docs/protocol.md §2.2): a slot value is the slot's
``tensor_root`` or 32 zero bytes when empty. :class:`IncrementalStateTree` (from
``protocol.commitments``) keeps every level of that RFC 9162 tree, so replacing one slot
re-hashes only that slot's tensor and its path to the root — what the op-level trace needs
(one slot changes per op); ``state_roots_after`` computes a whole trace's roots natively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol.commitments import (  # noqa: F401  (re-exported)
    IncrementalStateTree,
    state_root,
    state_roots_after,
    tensor_root,
)
from protocol.ir import Program


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
