"""Reference oracles for the binary32 primitives of ``contracts/softfloat.vy``.

Two independent oracles:

- ``np_*``: numpy float32 (x86 SSE arithmetic is correctly rounded with RNE and keeps
  subnormals), with every NaN result canonicalised to ``0x7FC00000``. Where numpy does not
  implement the IEEE 754-2019 semantics we need (maximum/minimum with -0 < +0, ldexp with a
  float exponent), the oracle is written out here on top of numpy comparisons.
- ``exact_*``: exact rational arithmetic with :class:`fractions.Fraction`, rounded to binary32
  (nearest, ties to even, gradual underflow, overflow to infinity) by :func:`round_fraction`,
  which uses neither numpy nor the contract's algorithm. Square roots are rounded exactly
  with integer square roots and rational comparisons.

All functions take and return raw bit patterns (Python ``int`` or ``np.uint32`` arrays).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

NAN = 0x7FC00000
POS_INF = 0x7F800000
NEG_INF = 0xFF800000
SIGN = 0x80000000
ABS = 0x7FFFFFFF
ONE = 0x3F800000

#: max finite binary32 as an exact rational
MAX_FINITE = Fraction((2**24 - 1) * 2**104)
#: the rounding threshold above which results are +inf (max finite + half an ulp)
OVERFLOW_THRESHOLD = Fraction((2**25 - 1) * 2**103)


# ---------------------------------------------------------------------------------------------
# bit helpers
# ---------------------------------------------------------------------------------------------


def is_nan(b: int) -> bool:
    return (b & ABS) > POS_INF


def is_inf(b: int) -> bool:
    return (b & ABS) == POS_INF


def f32(bits):
    """uint32 bit pattern(s) -> np.float32 value(s)."""
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bits_of(x) -> np.ndarray:
    """float32 value(s) -> uint32 bit patterns, NaNs canonicalised."""
    x = np.asarray(x, dtype=np.float32)
    out = x.view(np.uint32).copy()
    out[np.isnan(x)] = NAN
    return out


def to_fraction(b: int) -> Fraction:
    """Exact value of a finite binary32 bit pattern (decoded by hand, not by numpy)."""
    assert not is_nan(b) and not is_inf(b)
    sign = -1 if b & SIGN else 1
    biased = (b >> 23) & 0xFF
    frac = b & 0x7FFFFF
    if biased == 0:
        return sign * Fraction(frac, 2**149)
    return sign * Fraction(frac | 0x800000) * Fraction(2) ** (biased - 150)


def _encode(n: int, q: int, negative: bool) -> int:
    """Bits of (-1)**negative * n * 2**q for an already rounded n (n <= 2**24, q >= -149)."""
    sign = SIGN if negative else 0
    if n == 0:
        return sign
    # normalise n to 24 bits (exact: n is a multiple of the needed power of two or small)
    while n >= 2**24:
        assert n % 2 == 0
        n //= 2
        q += 1
    while n < 2**23 and q > -149:
        n *= 2
        q -= 1
    if n < 2**23:  # subnormal
        assert q == -149
        return sign | n
    biased = q + 150
    if biased >= 255:
        return sign | POS_INF
    return sign | (biased << 23) | (n - 2**23)


def _floor_log2(x: Fraction) -> int:
    """floor(log2(x)) for a positive rational."""
    k = x.numerator.bit_length() - x.denominator.bit_length()
    while Fraction(2) ** k > x:
        k -= 1
    while Fraction(2) ** (k + 1) <= x:
        k += 1
    return k


def _round_half_even(n: int, cmp_half: int) -> int:
    """n rounded up iff the discarded part exceeds 1/2, or equals it and n is odd."""
    if cmp_half > 0 or (cmp_half == 0 and n % 2 == 1):
        return n + 1
    return n


def round_fraction(x: Fraction, zero_negative: bool = False) -> int:
    """Round an exact rational to binary32 bits (RNE, subnormals, overflow to inf).

    ``zero_negative`` gives the sign of an exactly-zero ``x`` (a Fraction has no -0).
    """
    if x == 0:
        return SIGN if zero_negative else 0
    negative = x < 0
    ax = -x if negative else x
    q = max(_floor_log2(ax) - 23, -149)
    scaled = ax / Fraction(2) ** q
    n = math.floor(scaled)
    rest = scaled - n
    n = _round_half_even(n, (rest > Fraction(1, 2)) - (rest < Fraction(1, 2)))
    return _encode(n, q, negative)


def round_sqrt(x: Fraction) -> int:
    """Bits of sqrt(x) for a rational x > 0, correctly rounded (RNE), computed exactly."""
    assert x > 0
    q = max(_floor_log2(x) // 2 - 23, -149)
    scaled = x / Fraction(4) ** q  # sqrt(x) / 2**q == sqrt(scaled)
    n = math.isqrt(math.floor(scaled))  # floor(sqrt(scaled))
    half_sq = Fraction(2 * n + 1, 2) ** 2
    n = _round_half_even(n, (scaled > half_sq) - (scaled < half_sq))
    return _encode(n, q, False)


# ---------------------------------------------------------------------------------------------
# exact (Fraction) oracles; special values handled explicitly per IEEE 754
# ---------------------------------------------------------------------------------------------


def _sign(b: int) -> int:
    return 1 if b & SIGN else 0


def exact_add(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    if is_inf(a) and is_inf(b):
        return a if a == b else NAN
    if is_inf(a):
        return a
    if is_inf(b):
        return b
    s = to_fraction(a) + to_fraction(b)
    if s == 0:
        # exact zero: -0 only if both operands are -0 (RNE)
        return SIGN if (a == SIGN and b == SIGN) else 0
    return round_fraction(s)


def exact_sub(a: int, b: int) -> int:
    if is_nan(b):
        return NAN
    return exact_add(a, b ^ SIGN)


def exact_mul(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    neg = bool(_sign(a) ^ _sign(b))
    zero_a, zero_b = (a & ABS) == 0, (b & ABS) == 0
    if is_inf(a) or is_inf(b):
        if zero_a or zero_b:
            return NAN
        return NEG_INF if neg else POS_INF
    return round_fraction(to_fraction(a) * to_fraction(b), zero_negative=neg)


def exact_div(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    neg = bool(_sign(a) ^ _sign(b))
    zero_a, zero_b = (a & ABS) == 0, (b & ABS) == 0
    if is_inf(a):
        if is_inf(b):
            return NAN
        return NEG_INF if neg else POS_INF
    if is_inf(b):
        return SIGN if neg else 0
    if zero_b:
        if zero_a:
            return NAN
        return NEG_INF if neg else POS_INF
    return round_fraction(to_fraction(a) / to_fraction(b), zero_negative=neg)


def exact_sqrt(a: int) -> int:
    if is_nan(a):
        return NAN
    if (a & ABS) == 0:
        return a
    if a & SIGN:
        return NAN
    if a == POS_INF:
        return a
    return round_sqrt(to_fraction(a))


def exact_ldexp(a: int, n: int) -> int:
    """x * 2**n with n a float32 holding a finite integer; otherwise NaN (see softfloat.vy)."""
    if is_nan(a) or is_nan(n) or is_inf(n):
        return NAN
    fn = to_fraction(n)
    if fn.denominator != 1:
        return NAN
    if is_inf(a) or (a & ABS) == 0:
        return a
    k = int(fn)
    k = max(-100_000, min(100_000, k))  # exact enough: |k| > 300 already saturates
    return round_fraction(to_fraction(a) * Fraction(2) ** k)


def exact_round_even(a: int) -> int:
    if is_nan(a):
        return NAN
    if is_inf(a):
        return a
    x = to_fraction(a)
    n = math.floor(x)
    rest = x - n
    n = _round_half_even(n, (rest > Fraction(1, 2)) - (rest < Fraction(1, 2)))
    return round_fraction(Fraction(n), zero_negative=bool(a & SIGN))


# ---------------------------------------------------------------------------------------------
# numpy oracles (vectorised over uint32 arrays)
# ---------------------------------------------------------------------------------------------


def _u32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint64).astype(np.uint32)


def np_binary(op: str, a, b) -> np.ndarray:
    fa, fb = f32(_u32(a)), f32(_u32(b))
    with np.errstate(all="ignore"):
        r = {
            "add": np.add,
            "sub": np.subtract,
            "mul": np.multiply,
            "div": np.divide,
        }[op](fa, fb)
    assert r.dtype == np.float32
    return bits_of(r)


def np_sqrt(a) -> np.ndarray:
    with np.errstate(all="ignore"):
        r = np.sqrt(f32(_u32(a)))
    assert r.dtype == np.float32
    return bits_of(r)


def np_neg(a) -> np.ndarray:
    return bits_of(np.negative(f32(_u32(a))))


def np_abs(a) -> np.ndarray:
    return bits_of(np.abs(f32(_u32(a))))


def _nan_mask(*arrays: np.ndarray) -> np.ndarray:
    m = np.zeros(arrays[0].shape, dtype=bool)
    for x in arrays:
        m |= np.isnan(f32(x))
    return m


def np_maximum(a, b) -> np.ndarray:
    """IEEE 754-2019 maximum: numpy's np.maximum plus -0 < +0 and NaN propagation."""
    a, b = _u32(a), _u32(b)
    fa, fb = f32(a), f32(b)
    both_zero = (fa == 0) & (fb == 0)
    r = np.where(fa > fb, a, b)
    # among equal values (only ±0 pairs can differ in bits), +0 wins
    r = np.where(both_zero, np.where((a == 0) | (b == 0), np.uint32(0), np.uint32(SIGN)), r)
    r = np.where(_nan_mask(a, b), np.uint32(NAN), r)
    return r.astype(np.uint32)


def np_minimum(a, b) -> np.ndarray:
    """IEEE 754-2019 minimum: NaN propagation and -0 < +0."""
    a, b = _u32(a), _u32(b)
    fa, fb = f32(a), f32(b)
    both_zero = (fa == 0) & (fb == 0)
    r = np.where(fa < fb, a, b)
    r = np.where(both_zero, np.where((a == SIGN) | (b == SIGN), np.uint32(SIGN), np.uint32(0)), r)
    r = np.where(_nan_mask(a, b), np.uint32(NAN), r)
    return r.astype(np.uint32)


def np_compare(op: str, a, b) -> np.ndarray:
    fa, fb = f32(_u32(a)), f32(_u32(b))
    with np.errstate(all="ignore"):
        r = {"gt": np.greater, "ge": np.greater_equal, "eq": np.equal}[op](fa, fb)
    return np.where(r, np.uint32(ONE), np.uint32(0)).astype(np.uint32)


def np_select(c, a, b) -> np.ndarray:
    """a where c is not ±0 (NaN c counts as not ±0), else b; NaN results canonical."""
    c, a, b = _u32(c), _u32(a), _u32(b)
    r = np.where(f32(c) != 0, a, b)  # NaN != 0 is True
    return bits_of(f32(r))


def np_round_even(a) -> np.ndarray:
    with np.errstate(all="ignore"):
        r = np.rint(f32(_u32(a)))
    assert r.dtype == np.float32
    return bits_of(r)


def np_ldexp(a, n) -> np.ndarray:
    """np.ldexp on float32 with the float32 exponent converted to an integer when it is a
    finite integral value; otherwise (NaN, inf, fractional n) the result is NaN."""
    a, n = _u32(a), _u32(n)
    with np.errstate(all="ignore"):
        fn = f32(n).astype(np.float64)
        valid = np.isfinite(fn) & (np.floor(fn) == fn)
        k = np.clip(np.where(valid, fn, 0.0), -100_000, 100_000).astype(np.int32)
        r = np.ldexp(f32(a), k)
    assert r.dtype == np.float32
    out = bits_of(r)
    out[~valid] = NAN
    return out


def np_frexp(a) -> tuple[np.ndarray, np.ndarray]:
    """numpy.frexp: (mantissa bits, exponent as float32 bits)."""
    m, e = np.frexp(f32(_u32(a)))
    assert m.dtype == np.float32
    return bits_of(m), bits_of(e.astype(np.float32))
