"""fma (IEEE 754 fusedMultiplyAdd, binary32, RNE) in the numpy reference and the torch backend,
against the exact rational oracle of tests/float32_oracle.py (``exact_fma``).

MATMUL's FMA chain (docs/protocol.md §3.7) and the FMA opcode are only as exact as this one
function, so it is checked on > 10,000 cases of hard families (exact cancellation, sums a hair
off a float32 rounding midpoint, products exactly on a midpoint with a tiny addend deciding
the direction — the sticky bit —, subnormal results, overflow, every special value with both
signs), not only on random bit patterns, where every approach looks right. The test also
plants the classic bug — rounding the float64 sum to float32 (double rounding, no round to
odd) — and shows that the same cases catch it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.execute import semantics as sem
from replay.execute.torch_kernels import fma as torch_fma

try:  # pytest's rootdir-relative import: tests/ itself is on sys.path
    import float32_oracle as orc
except ModuleNotFoundError:  # pragma: no cover - tests/ is a package
    from tests import float32_oracle as orc

SPECIAL = np.array(
    [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
     0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000,
     0xBF800000, 0x3F000000, 0x33800000, 0x4B000000, 0x1F800000, 0x5F800000],
    dtype=np.uint32,
)  # fmt: skip


def f32(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def hard_cases(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``3 x n`` operand bit patterns from the hard families (see the module docstring)."""
    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 8, n)
    sign = (rng.integers(0, 2, (3, n), dtype=np.uint64) << 31).astype(np.uint32)
    mant = rng.integers(0, 1 << 23, (3, n), dtype=np.uint64).astype(np.uint32)
    expo = rng.integers(100, 155, (3, n)).astype(np.uint32)
    a, b, c = ((expo << 23) | mant | sign).astype(np.uint32)
    with np.errstate(all="ignore"):
        p64 = f32(a).astype(np.float64) * f32(b).astype(np.float64)
        p32 = p64.astype(np.float32)
        e = np.frexp(p32)[1].astype(np.int64)
        # 0: c = -round(a*b): the exact result is the product's rounding error
        c = np.where(fam == 0, bits(-p32), c)
        # 1: c = ±half an ulp of the product (± a few ulps of c): sums near a midpoint
        half = np.ldexp(np.float32(1), (e - 25).clip(-149, 127)).astype(np.float32)
        wiggle = rng.integers(-3, 4, n).astype(np.int64)
        near = (bits(half).astype(np.int64) + wiggle).clip(0, 0x7F7FFFFF).astype(np.uint32)
        c = np.where(fam == 1, near | sign[2], c)
        # 2: the product exactly on a midpoint (1 + i 2^-12)(1 + j 2^-12), c tiny: sticky bit
        i, j = rng.integers(1, 4096, (2, n))
        ma = np.float32(1) + (i * 2.0**-12).astype(np.float32)
        mb = np.float32(1) + (j * 2.0**-12).astype(np.float32)
        scale = rng.integers(-60, 60, n)
        ma = np.ldexp(ma, scale).astype(np.float32)
        tiny = np.ldexp(np.float32(1), (scale - rng.integers(30, 90, n)).clip(-149, 0))
        a = np.where(fam == 2, bits(ma) | sign[0], a)
        b = np.where(fam == 2, bits(mb), b)
        c = np.where(fam == 2, bits(tiny.astype(np.float32)) | sign[2], c)
        # 3: subnormal results: tiny products, subnormal addends
        sub = ((rng.integers(0, 1 << 23, n)).astype(np.uint32)) | sign[2]
        small = ((rng.integers(40, 70, n).astype(np.uint32) << 23) | mant[0]).astype(np.uint32)
        a = np.where(fam == 3, small, a)
        b = np.where(fam == 3, small ^ sign[1], b)
        c = np.where(fam == 3, sub, c)
        # 4: overflow and the largest finite values
        big = ((rng.integers(190, 255, n).astype(np.uint32) << 23) | mant[1]).astype(np.uint32)
        a = np.where(fam == 4, big, a)
        c = np.where(fam == 4, 0x7F7FFFFF | sign[2], c)
        # 5: specials anywhere
        pick = SPECIAL[rng.integers(0, len(SPECIAL), (3, n))]
        a = np.where(fam == 5, pick[0], a)
        b = np.where((fam == 5) & (rng.random(n) < 0.7), pick[1], b)
        c = np.where((fam == 5) & (rng.random(n) < 0.7), pick[2], c)
        # 6: exact cancellation to zero with every sign: exactly representable products
        k1, k2 = rng.integers(-2048, 2048, (2, n)).astype(np.float32)
        prod = (k1 * k2).astype(np.float32)  # exact: < 2^22
        a = np.where(fam == 6, bits(k1), a)
        b = np.where(fam == 6, bits(k2), b)
        c = np.where(fam == 6, bits(-prod) ^ (sign[2] & (prod == 0)), c)
        # 7: plain random bit patterns
        rand = rng.integers(0, 1 << 32, (3, n), dtype=np.uint64).astype(np.uint32)
        a, b, c = (np.where(fam == 7, rand[k], v) for k, v in enumerate((a, b, c)))
    return a.astype(np.uint32), b.astype(np.uint32), c.astype(np.uint32)


def oracle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.array(
        [orc.exact_fma(int(x), int(y), int(z)) for x, y, z in zip(a, b, c, strict=True)],
        dtype=np.uint32,
    )


def double_rounding_fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The planted bug: float64 product (exact) + c rounded to float64, then to float32."""
    with np.errstate(all="ignore"):
        s = f32(a).astype(np.float64) * f32(b).astype(np.float64) + f32(c).astype(np.float64)
    return bits(sem.canon(s.astype(np.float32)))


CASES = 2_600  # x 4 seeds = 10,400 cases


@pytest.mark.parametrize("seed", range(4))
def test_numpy_fma_equals_the_exact_oracle(seed: int) -> None:
    a, b, c = hard_cases(seed, CASES)
    want = oracle(a, b, c)
    with np.errstate(all="ignore"):
        got = bits(sem.fma(f32(a), f32(b), f32(c)))
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [
        (hex(a[i]), hex(b[i]), hex(c[i]), hex(got[i]), hex(want[i])) for i in bad[:5]
    ]


@pytest.mark.parametrize("seed", range(4))
def test_torch_fma_equals_numpy_fma(seed: int) -> None:
    a, b, c = hard_cases(100 + seed, 4 * CASES)
    with np.errstate(all="ignore"):
        want = bits(sem.fma(f32(a), f32(b), f32(c)))
    t = [torch.from_numpy(f32(v).copy()) for v in (a, b, c)]
    got = bits(sem.canon(torch_fma(*t).numpy()))
    assert np.array_equal(got, want)


def test_the_hard_cases_catch_a_double_rounding_fma() -> None:
    """A planted rounding bug (no round to odd) is caught by the same generator: the test
    above would fail for it."""
    a, b, c = hard_cases(0, CASES)
    assert np.count_nonzero(double_rounding_fma(a, b, c) != oracle(a, b, c)) > 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_fma_on_any_bit_patterns(x: int, y: int, z: int) -> None:
    a, b, c = (np.array([v], dtype=np.uint32) for v in (x, y, z))
    with np.errstate(all="ignore"):
        assert int(bits(sem.fma(f32(a), f32(b), f32(c)))[0]) == orc.exact_fma(x, y, z)
