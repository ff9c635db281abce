"""State commitments over a program's slot table, and an incrementally updated state tree.

``state_root = MTH(slot values)`` (docs/protocol.md §2.2): a slot value is the slot's
``tensor_root`` or 32 zero bytes when empty. :class:`IncrementalStateTree` (from
``protocol.commitments``) keeps every level of that RFC 9162 tree, so replacing one slot
re-hashes only that slot's tensor and its path to the root — what the op-level trace needs
(one slot changes per op); ``state_roots_after`` computes a whole trace's roots natively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from protocol.commitments import (  # noqa: F401  (re-exported)
    IncrementalStateTree,
    state_root,
    state_roots_after,
    tensor_root,
)
from protocol.ir import Program
from replay.execute.native import native_available, native_kernels
from replay.execute.semantics import canon

_CPU = torch.device("cpu")


def as_committed(array: np.ndarray) -> np.ndarray:
    """A C-contiguous little-endian float32 array with ``array``'s shape (0-d stays 0-d)."""
    return np.asarray(array, dtype="<f4", order="C")


def canonical_nans(array: np.ndarray) -> np.ndarray:
    """``array`` as committed with every NaN the canonical NaN (docs/protocol.md §3.2): the
    array itself when it has none (the usual case, one native pass), else a copy."""
    a = as_committed(array)
    if native_available(_CPU):
        nan = bool(native_kernels().has_nan(a))
    else:
        nan = bool(np.isnan(a).any())
    return canon(a) if nan else a


def slot_roots(program: Program, values: Sequence[np.ndarray | None]) -> list[bytes | None]:
    """tensor_root of every slot (None for an empty slot)."""
    return [None if v is None else tensor_root(as_committed(v)) for v in values]


def state_root_of(program: Program, persistent: Mapping[str, np.ndarray]) -> bytes:
    """state_root at a step boundary: persistent slots by name, ephemeral slots empty."""
    roots: list[bytes | None] = []
    for slot in program.slots:
        roots.append(tensor_root(as_committed(persistent[slot.name])) if slot.persistent else None)
    return state_root(roots)


class StateRootPipeline:
    """Step-boundary state roots computed on a background thread while the next step runs.

    ``add`` takes a state as the executor returned it (read-only arrays it never writes
    again) and starts hashing it; ``drain`` returns every root added since the last drain,
    in order, waiting for the ones still being hashed. The native hasher releases the GIL, so
    on a machine with a spare core the roots cost the training loop almost nothing."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-root")
        self._pending: list[Future[bytes]] = []

    def add(self, state: Mapping[str, np.ndarray]) -> None:
        self._pending.append(self._pool.submit(state_root_of, self.program, dict(state)))

    def drain(self) -> list[bytes]:
        roots = [f.result() for f in self._pending]
        self._pending = []
        return roots

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> StateRootPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
