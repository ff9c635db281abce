"""The optional native kernels (``replay/execute/_kernels.c``, built by ``make`` with the package).

They compute exactly the canonical semantics (docs/protocol.md §3.7), so whether they are
built changes speed, never bits; ``TRAINPROOF_NATIVE=0`` turns them off (tests compare both),
``TRAINPROOF_ISA=avx512|avx2|portable`` forces an ISA path (all bit-identical).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch

try:
    from replay.execute import _kernels
except ImportError:  # pragma: no cover - built by `make`; the torch path is the fallback
    _kernels = None  # type: ignore[assignment]


def native_available(device: torch.device) -> bool:
    """Whether the native kernels run here (CPU, built, not disabled by TRAINPROOF_NATIVE=0)."""
    return (
        _kernels is not None
        and device.type == "cpu"
        and os.environ.get("TRAINPROOF_NATIVE", "1") != "0"
    )


def native_isa() -> str | None:
    """The kernel's ISA path (``avx512``, ``avx2``, ``portable``), or None when not built."""
    return None if _kernels is None else str(_kernels.isa())


def native_kernels() -> ModuleType:
    """The built extension module (``replay.execute._kernels``); raises if it is not built."""
    return _kernels_or_raise()


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


#: the element ops with a native kernel (their torch form takes several kernels), by code
NATIVE_ELEMENT_CODES = {"SQRT": 0, "MAX": 1, "MIN": 2, "LDEXP": 3, "FMA": 4}


def native_element_op(
    name: str, shape: tuple[int, ...], fallback: Callable[..., torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """The element op ``name`` producing ``shape`` in one native pass when every operand is a
    contiguous float32 CPU tensor of the output's size (or one broadcast element), else
    ``fallback`` (the torch form). Same bits either way."""
    code, n = NATIVE_ELEMENT_CODES[name], math.prod(shape)
    kernels = _kernels_or_raise()
    elementwise, f32 = kernels.elementwise, torch.float32
    #: operand sizes that repeat along the output as one trailing block (a broadcast bias)
    rows = {math.prod(shape[k:]): shape[k:] for k in range(1, len(shape))}

    def kernel(*xs: torch.Tensor) -> torch.Tensor:
        period = 0
        for t in xs:
            if t.dtype is not f32 or t.device.type != "cpu" or not t.is_contiguous():
                return fallback(*xs)
            m = t.numel()
            if m != n and m != 1:
                tail = tuple(t.shape[t.dim() - len(rows.get(m, ())) :])
                if m not in rows or tail != rows[m] or period not in (0, m):
                    return fallback(*xs)
                period = m
        out = torch.empty(shape, dtype=f32)
        elementwise(code, out.numpy(), tuple(t.numpy() for t in xs), torch.get_num_threads())
        return out

    return kernel


def pad4(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An output shape and an operand's strides padded to rank 4 (leading 1s, stride 0)."""
    lead = 4 - len(shape)
    return (1,) * lead + tuple(shape), (0,) * lead + tuple(strides)


def native_gather(
    out: np.ndarray, index: np.ndarray, table: np.ndarray, shape: tuple[int, ...],
    index_map: tuple[int, tuple[int, ...]], table_map: tuple[int, tuple[int, ...], int],
    rows: int, threads: int = 1,
) -> None:  # fmt: skip
    """GATHER (docs/protocol.md §3.4.1) over flat float32 buffers, each element alone."""
    shape4, si = pad4(shape, index_map[1])
    _, st = pad4(shape, table_map[1])
    _kernels_or_raise().gather(
        out, index, table, shape4, (index_map[0], si), (table_map[0], st, table_map[2]),
        rows, threads,
    )  # fmt: skip


def native_reduce_sum(
    out: np.ndarray, x: np.ndarray, shape: tuple[int, ...],
    x_map: tuple[int, tuple[int, ...], int], rows: int, threads: int = 1,
) -> None:  # fmt: skip
    """REDUCE_SUM: every output the sequential sum from +0.0 of its ``rows`` terms, in order."""
    shape4, sx = pad4(shape, x_map[1])
    _kernels_or_raise().reduce_sum(out, x, shape4, (x_map[0], sx, x_map[2]), rows, threads)


def native_reduce_max(
    out: np.ndarray, x: np.ndarray, shape: tuple[int, ...],
    x_map: tuple[int, tuple[int, ...], int], rows: int, threads: int = 1,
) -> None:  # fmt: skip
    """REDUCE_MAX: every output the IEEE 754-2019 maximum of its terms folded from -inf."""
    shape4, sx = pad4(shape, x_map[1])
    _kernels_or_raise().reduce_max(out, x, shape4, (x_map[0], sx, x_map[2]), rows, threads)
