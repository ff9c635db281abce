"""The native FMA-chain GEMM (replay/execute/_kernels.c) against the numpy reference.

Every tile shape and edge, several k-blocks (R > 256) and column blocks (N > 2048), R = 0,
strided (transposed) operand maps and batches: each output element is one accumulator in r
order, so every thread count and ISA path gives the same bits. ISA paths are forced per
process (TRAINPROOF_ISA, read once), so they are compared in subprocesses here and on whole
training steps in tests/test_replay_training.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.execute import semantics as sem
from replay.execute.native import native_gemm, native_isa, native_matmul

pytestmark = pytest.mark.skipif(native_isa() is None, reason="replay.execute._kernels is not built")

SHAPES = [
    (1, 1, 1), (4, 3, 32), (37, 50, 45), (8, 0, 33), (5, 64, 16), (3, 7, 0), (0, 3, 4),
    (13, 600, 40), (7, 9, 2100), (100, 257, 33),
]  # fmt: skip


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    with np.errstate(all="ignore"):
        for r in range(a.shape[1]):
            acc = sem.fma(a[:, r : r + 1], b[r : r + 1, :], acc)
    return acc


def operands(m: int, r: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, r)) * 10.0 ** rng.integers(-20, 20, (m, r))).astype(np.float32)
    b = rng.standard_normal((r, n)).astype(np.float32)
    if a.size and b.size:  # a product whose fused and unfused chains differ
        a.flat[0], b.flat[0] = np.float32(1 + 2**-23), np.float32(1 + 2**-23)
    if a.size > 3:  # subnormals must survive (no FTZ/DAZ)
        a.flat[1], a.flat[2] = np.float32(1e-40), np.float32(-3e-39)
    return a, b


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32)


@pytest.mark.parametrize(("m", "r", "n"), SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_native_matmul_is_the_fma_chain(m: int, r: int, n: int, threads: int) -> None:
    a, b = operands(m, r, n, m * 1000 + r * 10 + n)
    out = np.full((m, n), np.nan, np.float32)
    native_matmul(a, b, out, m, n, r, threads)
    assert np.array_equal(bits(out), bits(reference(a, b)))


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40), r=st.integers(0, 300), n=st.integers(1, 70),
    batches=st.integers(1, 3), transpose_a=st.booleans(), transpose_b=st.booleans(),
    threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_gemm_reads_any_affine_map(
    m: int, r: int, n: int, batches: int, transpose_a: bool, transpose_b: bool,
    threads: int, seed: int,
) -> None:  # fmt: skip
    """Transposed operands, offsets into a larger buffer and per-batch offsets: read in place."""
    mats = [operands(m, r, n, seed + i) for i in range(batches)]
    pad = 5
    a_store = [np.ascontiguousarray(x.T if transpose_a else x) for x, _ in mats]
    b_store = [np.ascontiguousarray(y.T if transpose_b else y) for _, y in mats]
    a_flat = np.concatenate([np.zeros(pad, np.float32)] + [x.reshape(-1) for x in a_store])
    b_flat = np.concatenate([np.zeros(pad, np.float32)] + [y.reshape(-1) for y in b_store])
    a_map = (pad, 1, m) if transpose_a else (pad, r, 1)
    b_map = (pad, 1, r) if transpose_b else (pad, n, 1)
    offsets = np.array([(i * m * r, i * r * n, i * m * n) for i in range(batches)], np.int64)
    out = np.full(batches * m * n, np.nan, np.float32)
    native_gemm(a_flat, b_flat, out, (m, n, r), a_map, b_map, offsets, threads)
    want = np.concatenate([reference(x, y).reshape(-1) for x, y in mats])
    assert np.array_equal(bits(out), bits(want))


def test_gemm_checks_its_buffers() -> None:
    a, b = np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="reaches past its buffers"):
        native_matmul(a, b, np.zeros((2, 3), np.float32), 2, 4, 3)
    with pytest.raises(ValueError, match="reaches past its buffers"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (1, 3, 1), (0, 4, 1))
    with pytest.raises(ValueError, match="reaches past its buffers"):
        offsets = np.array([[0, 0, 0], [0, 0, 8]], np.int64)
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, 3, 1), (0, 4, 1), offsets)
    with pytest.raises(ValueError, match=">= 0"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, -3, 1), (0, 4, 1))
    with pytest.raises(TypeError, match="float32"):
        native_matmul(a.astype(np.float64), b, np.zeros((2, 4), np.float32), 2, 4, 3)
    with pytest.raises(TypeError, match="int64"):
        native_gemm(a, b, np.zeros(8, np.float32), (2, 4, 3), (0, 3, 1), (0, 4, 1),
                    np.zeros(3, np.int32))  # fmt: skip


_ISA_SCRIPT = """
import json, sys
import numpy as np
from replay.execute.native import native_isa, native_matmul
rng = np.random.default_rng(7)
a = rng.standard_normal((61, 700)).astype(np.float32)
b = rng.standard_normal((700, 75)).astype(np.float32)
a[0, :3] = [1e-40, -2e-39, 1 + 2**-23]
out = np.empty((61, 75), np.float32)
native_matmul(a, b, out, 61, 75, 700, int(sys.argv[1]))
print(json.dumps({"isa": native_isa(), "bits": out.view(np.uint32).tolist()}))
"""


def test_every_isa_path_gives_the_same_bits() -> None:
    """Each path this CPU has (a path it lacks falls back, and says so through isa())."""
    seen: dict[str, list[int]] = {}
    for isa in ("portable", "avx2", "avx512"):
        for threads in (1, 2):
            env = {**os.environ, "TRAINPROOF_ISA": isa}
            done = subprocess.run(
                [sys.executable, "-c", _ISA_SCRIPT, str(threads)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout)
            seen[f"{got['isa']}/{threads}"] = got["bits"]
    assert "portable/1" in seen
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), sorted(seen)
