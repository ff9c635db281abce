"""The optional native kernels (``replay/execute/_kernels.c``, built by ``make`` with the package).

They compute exactly the canonical semantics (docs/protocol.md §3.7), so whether they are
built changes speed, never bits; ``TRAINPROOF_NATIVE=0`` turns them off (tests compare both),
``TRAINPROOF_ISA=avx512|avx2|portable`` forces an ISA path (all bit-identical).
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np
import torch

try:
    from replay.execute import _kernels
except ImportError:  # pragma: no cover - built by `make`; the torch path is the fallback
    _kernels = None  # type: ignore[assignment]


def native_matmul_available(device: torch.device) -> bool:
    """Whether MATMUL runs on the native kernel here (CPU, built, not disabled)."""
    return (
        _kernels is not None
        and device.type == "cpu"
        and os.environ.get("TRAINPROOF_NATIVE", "1") != "0"
    )


def native_isa() -> str | None:
    """The kernel's ISA path (``avx512``, ``avx2``, ``portable``), or None when not built."""
    return None if _kernels is None else str(_kernels.isa())


def _kernels_or_raise() -> ModuleType:
    if _kernels is None:  # pragma: no cover
        raise RuntimeError("the native kernels are not built: run `make setup`")
    return _kernels


def native_gemm(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    shape: tuple[int, int, int],
    a_map: tuple[int, int, int],
    b_map: tuple[int, int, int],
    offsets: np.ndarray | None = None,
    threads: int = 1,
) -> None:
    """Batched FMA-chain matrix products read through affine maps of flat float32 buffers.

    ``shape = (m, n, r)``; ``a_map = (offset, row stride, r stride)`` and ``b_map = (offset,
    r stride, column stride)`` index ``a`` and ``b``; ``offsets`` (int64 ``[batches, 3]``) adds
    a per-batch element offset to a, b and ``out`` (whose batches are contiguous ``[m, n]``
    blocks). Every output element is one accumulator in r order, whichever thread computes it.
    """
    m, n, r = shape
    _kernels_or_raise().gemm(
        a, b, out, m, n, r, a_map[0], a_map[1:], b_map[0], b_map[1:], offsets, threads
    )


def native_matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray, m: int, n: int, r: int, threads: int = 1
) -> None:
    """``out[m, n]`` = the sequential FMA chain of contiguous float32 ``a[m, r] @ b[r, n]``,
    split over ``threads`` threads (each element computed by one thread, in r order)."""
    native_gemm(a, b, out, (m, n, r), (0, r, 1), (0, n, 1), None, threads)
