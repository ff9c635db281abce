"""The native FMA-chain matmul (replay/execute/_kernels.c) against the numpy reference: every tile
shape and tail, R = 0, every thread count gives the same bits (each element is one
accumulator in r order, whoever computes it). ISA paths are compared on whole training
steps in tests/test_replay_training.py (the path is chosen once per process)."""

from __future__ import annotations

import numpy as np
import pytest

from replay.execute import semantics as sem
from replay.execute.native import native_isa, native_matmul

pytestmark = pytest.mark.skipif(native_isa() is None, reason="replay.execute._kernels is not built")

SHAPES = [(1, 1, 1), (4, 3, 32), (37, 50, 45), (8, 0, 33), (5, 64, 16), (3, 7, 0), (0, 3, 4)]


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    with np.errstate(all="ignore"):
        for r in range(a.shape[1]):
            acc = sem.fma(a[:, r : r + 1], b[r : r + 1, :], acc)
    return acc


@pytest.mark.parametrize(("m", "r", "n"), SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_matmul_is_the_fma_chain(m: int, r: int, n: int, threads: int) -> None:
    rng = np.random.default_rng(m * 1000 + r * 10 + n)
    a = (rng.standard_normal((m, r)) * 10.0 ** rng.integers(-20, 20, (m, r))).astype(np.float32)
    b = rng.standard_normal((r, n)).astype(np.float32)
    if a.size and b.size:  # a product whose fused and unfused chains differ
        a.flat[0], b.flat[0] = np.float32(1 + 2**-23), np.float32(1 + 2**-23)
    out = np.full((m, n), np.nan, np.float32)
    native_matmul(a, b, out, m, n, r, threads)
    assert np.array_equal(out.view(np.uint32), reference(a, b).view(np.uint32))


def test_native_matmul_checks_its_buffers() -> None:
    a, b = np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="expected"):
        native_matmul(a, b, np.zeros((2, 5), np.float32), 2, 4, 3)
    with pytest.raises(TypeError, match="float32"):
        native_matmul(a.astype(np.float64), b, np.zeros((2, 4), np.float32), 2, 4, 3)
