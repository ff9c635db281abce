"""Bit-exact tests of contracts/softfloat.vy (through contracts/Float32.vy) under titanoboa.

Each property test runs >= 10,240 cases per primitive: every hypothesis example evaluates
512 inputs in one `batch` call -- 256 from the cross product of two hypothesis-drawn lists of
16 values (every special class: ±0, subnormal edges, smallest normal, max finite, ±inf,
NaNs with random payloads and signs, boundary exponents, random bit patterns) and 256
structured cases generated from a hypothesis-drawn seed (exact ties, cancellation,
near-overflow, gradual underflow, near-midpoint hard cases). Results are compared bit for bit
with numpy float32 (NaNs canonicalised) and, for every rounding operation, with the exact
Fraction oracle of tests/float32_oracle.py.

fma (a * b + c, one rounding) has the same property test over three lists (8 x 8 x 4 drawn
values) plus 256 cases of its structured families (FMA_FAMILIES: exact and rounded
cancellation, ties and near-ties decided by the product's low bits or by a tiny c, sticky
bits on both sides of the alignment window, a power-of-two c, subnormal results, overflow),
each family on its own (1,024 cases), every special triple (5,832), and the numpy oracle
there is float64 TwoSum + round-to-odd (np_fma), independent of the Fraction one. Planted
bugs (no sticky bit, truncation, two roundings, a too narrow alignment window) compiled
from mutated module source must be caught by the same structured generator.

Also: named edge cases on each external function, the externals against `batch`, the same
module compiled with Venom (as contracts/Executor.vy uses it) on 2,048 cases per primitive,
and agreement with the replay reference semantics (replay/execute/semantics.py) when it is present.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import boa
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

try:  # pytest's default rootdir-relative import: tests/ itself is on sys.path
    import float32_oracle as orc
except ModuleNotFoundError:  # tests/ is a package
    from tests import float32_oracle as orc

ABS, NAN, ONE, SIGN = orc.ABS, orc.NAN, orc.ONE, orc.SIGN
POS_INF, NEG_INF = orc.POS_INF, orc.NEG_INF

CONTRACT = "contracts/Float32.vy"
OPS = [
    "add",
    "sub",
    "mul",
    "div",
    "sqrt",
    "neg",
    "abs",
    "maximum",
    "minimum",
    "gt",
    "ge",
    "eq",
    "select",
    "round_even",
    "ldexp",
    "frexp_exp",
    "frexp_mant",
    "fma",
]
OP = {name: i for i, name in enumerate(OPS)}
BATCH = 512
EXAMPLES = 20  # x 512 cases = 10,240 cases per primitive

MIN_SUB = 0x00000001
MAX_SUB = 0x007FFFFF
MIN_NORMAL = 0x00800000
MAX_FINITE = 0x7F7FFFFF

# No shrinking: one example is a 512-case batch, and a failure message already lists the
# exact failing inputs (assert_bits), so shrinking would only cost minutes.
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def b(x: float) -> int:
    """float -> binary32 bits (x must be exactly representable or is rounded by struct)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


@pytest.fixture(scope="module")
def c():
    return boa.load(CONTRACT)


# ---------------------------------------------------------------------------------------------
# strategies (single values)
# ---------------------------------------------------------------------------------------------

SPECIAL_MAGS = [
    0,
    MIN_SUB,
    2,
    3,
    0x00400000,  # 2**-127
    MAX_SUB - 1,
    MAX_SUB,
    MIN_NORMAL,
    MIN_NORMAL + 1,
    0x00FFFFFF,
    0x3F000000,  # 0.5
    0x3F7FFFFF,  # 1 - 2**-24
    0x3F800000,  # 1
    0x3F800001,  # 1 + 2**-23
    0x3FC00000,  # 1.5
    0x40000000,  # 2
    0x40200000,  # 2.5
    0x40400000,  # 3
    0x4B000000,  # 2**23
    0x4B000001,
    0x4AFFFFFF,
    0x4B800000,  # 2**24
    0x7F000000,  # 2**127
    MAX_FINITE - 1,
    MAX_FINITE,
    POS_INF,
    NAN,
    POS_INF + 1,  # signalling NaN
    0x7FFFFFFF,
]

signs = st.sampled_from([0, SIGN])
fracs = st.one_of(
    st.integers(0, 0x7FFFFF),
    st.sampled_from([0, 1, 2, 0x400000, 0x400001, 0x3FFFFF, 0x7FFFFE, 0x7FFFFF]),
)
# biased exponents at the edges of the range and around 1.0 / 2**23 (rounding to integral)
EDGE_EXPS = [0, 1, 2, 3, 22, 23, 24, 25, 26, 125, 126, 127, 128, 149, 150, 151, 152, 200, 230]
edge_exps = st.sampled_from([*EDGE_EXPS, 252, 253, 254])


@st.composite
def f32_bits(draw) -> int:
    kind = draw(st.integers(0, 6))
    s = draw(signs)
    if kind == 0:
        return s | draw(st.sampled_from(SPECIAL_MAGS))
    if kind == 1:
        return draw(st.integers(0, 2**32 - 1))
    if kind == 2:  # NaN, random payload and sign
        return s | POS_INF | draw(st.integers(1, 0x7FFFFF))
    if kind == 3:
        return s | (draw(edge_exps) << 23) | draw(fracs)
    if kind == 4:  # any finite exponent, edge or random fraction
        return s | (draw(st.integers(0, 254)) << 23) | draw(fracs)
    if kind == 5:  # small multiples of 1/4 (rounding ties, integers)
        return b(draw(st.integers(-(2**24), 2**24)) / 4.0) | s
    return s | (draw(st.integers(0, 3)) << 23) | draw(fracs)  # subnormal and tiny normal


value_lists = st.lists(f32_bits(), min_size=16, max_size=16)


# ---------------------------------------------------------------------------------------------
# structured cases (numpy, from a hypothesis-drawn seed)
# ---------------------------------------------------------------------------------------------


def _finite(rng, n, lo=0, hi=254) -> np.ndarray:
    """Random finite bits with biased exponent in [lo, hi], random sign."""
    e = rng.integers(lo, hi + 1, n, dtype=np.uint64)
    f = rng.integers(0, 2**23, n, dtype=np.uint64)
    s = rng.integers(0, 2, n, dtype=np.uint64) << 31
    return (s | (e << 23) | f).astype(np.uint64)


def _pow2(k) -> np.ndarray:
    """Bits of 2**k (k integer array, -149 <= k <= 127)."""
    k = np.asarray(k, dtype=np.int64)
    assert np.all((k >= -149) & (k <= 127))
    normal = (k + 127).clip(1, 254).astype(np.uint64) << 23
    sub = np.left_shift(np.uint64(1), (k + 149).clip(0, 22).astype(np.uint64))
    return np.where(k >= -126, normal, sub).astype(np.uint64)


def _exp_of(bits) -> np.ndarray:
    """Exponent of the ulp of finite bits (ea with value = m * 2**ea)."""
    e = (np.asarray(bits, dtype=np.uint64) >> np.uint64(23)) & np.uint64(0xFF)
    return np.where(e == 0, -149, e.astype(np.int64) - 150)


def _from_f64(x) -> np.ndarray:
    """float64 values -> float32 bits (numpy rounding; only used to build inputs)."""
    with np.errstate(all="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float32).view(np.uint32).astype(np.uint64)


def _split(rng, n, parts):
    sizes = [n // parts] * parts
    sizes[-1] += n - sum(sizes)
    return sizes


def structured_add(rng, n):
    k1, k2, k3, k4, k5, k6 = _split(rng, n, 6)
    out_a, out_b = [], []
    # exact ties: b = ±(2j+1)/2 ulp(a) for small j
    a = _finite(rng, k1, 2, 254)
    ea = _exp_of(a)
    j = rng.integers(0, 2, k1)
    half = _pow2(np.clip(ea - 1, -149, 127))
    bb = np.where(j == 0, half, _from_f64(3.0 * orc.f32(half.astype(np.uint32)).astype(float)))
    bb |= rng.integers(0, 2, k1, dtype=np.uint64) << np.uint64(31)
    out_a.append(a)
    out_b.append(bb)
    # exponent differences 0..60
    a = _finite(rng, k2, 0, 254)
    d = rng.integers(0, 61, k2)
    eb = np.clip(((a >> np.uint64(23)) & np.uint64(0xFF)).astype(np.int64) - d, 0, 254)
    bb = _finite(rng, k2, 0, 0) | (eb.astype(np.uint64) << np.uint64(23))
    out_a.append(a)
    out_b.append(bb)
    # cancellation: b = -(a + t ulps)
    a = _finite(rng, k3, 0, 254)
    t = rng.integers(-3, 4, k3)
    mag = np.clip((a & np.uint64(ABS)).astype(np.int64) + t, 0, MAX_FINITE).astype(np.uint64)
    out_a.append(a)
    out_b.append(mag | ((a & np.uint64(SIGN)) ^ np.uint64(SIGN)))
    # near overflow
    a = _finite(rng, k4, 250, 254) & np.uint64(ABS)
    bb = _finite(rng, k4, 225, 254) & np.uint64(ABS)
    bb[: k4 // 4] = 0x73000000  # 2**103: half an ulp of max finite
    a[: k4 // 4] = MAX_FINITE - rng.integers(0, 2, k4 // 4, dtype=np.uint64)
    sgn = rng.integers(0, 2, k4, dtype=np.uint64) << np.uint64(31)
    out_a.append(a | sgn)
    out_b.append(bb | sgn)
    # gradual underflow: subnormals and tiny normals
    out_a.append(_finite(rng, k5, 0, 2))
    out_b.append(_finite(rng, k5, 0, 2))
    # anything
    out_a.append(rng.integers(0, 2**32, k6, dtype=np.uint64))
    out_b.append(rng.integers(0, 2**32, k6, dtype=np.uint64))
    return np.concatenate(out_a), np.concatenate(out_b)


def _odd_pairs(rng, k):
    """Odd p, q < 2**24 with p*q odd and in [2**24, 2**25): p*q is a binary32 tie."""
    p = rng.integers(1, 2**11, k) * 2 + 1
    lo = -(-(2**24) // p)
    hi = (2**25 - 1) // p
    q = lo + (rng.random(k) * (hi - lo + 1)).astype(np.int64)
    q = np.where(q % 2 == 0, np.where(q + 1 <= hi, q + 1, q - 1), q)
    q = np.minimum(q, 2**24 - 1)
    return p.astype(np.int64), q.astype(np.int64)


def _scaled(m, k) -> np.ndarray:
    """Bits of integer m (< 2**24) times 2**k, exact (k chosen in range by the caller)."""
    return _from_f64(np.ldexp(m.astype(np.float64), np.asarray(k, dtype=np.int64)))


def structured_mul(rng, n):
    k1, k2, k3, k4, k5 = _split(rng, n, 5)
    out_a, out_b = [], []
    # ties in the normal range: p*q odd with 25 bits
    p, q = _odd_pairs(rng, k1)
    s1 = rng.integers(-60, 60, k1)
    s2 = rng.integers(-60, 60, k1)
    out_a.append(_scaled(p, s1))
    out_b.append(_scaled(q, s2) | (rng.integers(0, 2, k1, dtype=np.uint64) << np.uint64(31)))
    # ties and near-ties in the subnormal range: product's lsb at 2**-150 .. 2**-148
    p = rng.integers(1, 2**12, k2)
    q = rng.integers(1, 2**12, k2)
    total = -150 + rng.integers(-2, 3, k2)
    s1 = rng.integers(-120, -20, k2)
    s1 = np.maximum(s1, total + 20)
    out_a.append(_scaled(p, s1))
    out_b.append(_scaled(q, total - s1))
    # exponent sums around underflow and overflow
    ea = rng.integers(1, 255, k3)
    target = np.where(
        rng.integers(0, 2, k3) == 0, rng.integers(-30, 3, k3), rng.integers(252, 258, k3)
    )
    eb = np.clip(target - ea + 127, 0, 254)
    a = _finite(rng, k3, 0, 0) | (ea.astype(np.uint64) << np.uint64(23))
    bb = _finite(rng, k3, 0, 0) | (eb.astype(np.uint64) << np.uint64(23))
    out_a.append(a)
    out_b.append(bb)
    # subnormal times anything
    out_a.append(_finite(rng, k4, 0, 0))
    out_b.append(_finite(rng, k4, 100, 254))
    out_a.append(rng.integers(0, 2**32, k5, dtype=np.uint64))
    out_b.append(rng.integers(0, 2**32, k5, dtype=np.uint64))
    return np.concatenate(out_a), np.concatenate(out_b)


def structured_div(rng, n):
    k0, k1, k2, k3, k4, k5 = _split(rng, n, 6)
    out_a, out_b = [], []
    # quotients within 2**-25 ulp of a midpoint (the sticky bit decides)
    a, b_ = _div_hard_pairs(rng, k0)
    shift = rng.integers(-120, 100, k0)
    out_a.append(_scaled(a, shift + rng.integers(-20, 20, k0)))
    out_b.append(_scaled(b_, shift) | (rng.integers(0, 2, k0, dtype=np.uint64) << np.uint64(31)))
    # division by powers of two (and 3 * 2**k) into the subnormal range: exact ties there
    a = _finite(rng, k1, 0, 30)
    kk = rng.integers(-5, 40, k1)
    mult = rng.choice([1, 3], k1)
    out_a.append(a)
    out_b.append(_scaled(mult, kk) | (rng.integers(0, 2, k1, dtype=np.uint64) << np.uint64(31)))
    # exact quotients: a = p*q
    p = rng.integers(1, 2**12, k2)
    q = rng.integers(1, 2**12, k2)
    out_a.append(_scaled(p * q, rng.integers(-100, 80, k2)))
    out_b.append(_scaled(q, rng.integers(-100, 80, k2)))
    # near midpoints: a ~= b * (2t+1)/2 ulp
    bb = _finite(rng, k3, 100, 150) & np.uint64(ABS)
    t = rng.integers(2**23, 2**24, k3)
    mid = (2 * t + 1).astype(np.float64) * 2.0**-24
    a = _from_f64(orc.f32(bb.astype(np.uint32)).astype(np.float64) * mid)
    out_a.append(a)
    out_b.append(bb)
    # quotients around underflow / overflow
    ea = rng.integers(0, 255, k4)
    target = np.where(
        rng.integers(0, 2, k4) == 0, rng.integers(-30, 3, k4), rng.integers(252, 258, k4)
    )
    eb = np.clip(ea - target + 127, 0, 254)
    out_a.append(_finite(rng, k4, 0, 0) | (ea.astype(np.uint64) << np.uint64(23)))
    out_b.append(_finite(rng, k4, 0, 0) | (eb.astype(np.uint64) << np.uint64(23)))
    out_a.append(rng.integers(0, 2**32, k5, dtype=np.uint64))
    out_b.append(rng.integers(0, 2**32, k5, dtype=np.uint64))
    return np.concatenate(out_a), np.concatenate(out_b)


def _sqrt_mod_pow2(w: int, n: int) -> int:
    """r with r*r = w (mod 2**n), for w = 1 (mod 8) and n >= 3 (Hensel lifting)."""
    r = 1
    for i in range(3, n):
        if (r * r - w) % (1 << (i + 1)):
            r += 1 << (i - 1)
    return r % (1 << n)


def _sqrt_hard_radicands(cmax: int) -> np.ndarray:
    """Integers x = t*t + t + c (24 significant bits) with sqrt(x) within ~c/2**25 ulp of the
    midpoint t + 1/2, above it for c > 0 and below for c < 0. No radicand hits a midpoint
    exactly; for |c| < ~20 the root is closer to one than the ~20 bits the contract keeps
    below the result's last bit, so the sticky bit alone decides the rounding."""
    out = set()
    for ulp_log in (23, 24):  # x in [2**46, 2**47) has ulp 2**23, [2**47, 2**48) has 2**24
        n = ulp_log + 2
        for c in [*range(2, cmax + 1, 2), *range(-cmax, 0, 2)]:
            r = _sqrt_mod_pow2((1 - 4 * c) % (1 << n), n)  # (2t+1)**2 = 1 - 4c (mod 2**n)
            for u in (r, -r, r + (1 << (n - 1)), -r + (1 << (n - 1))):
                t0 = ((u % (1 << n)) - 1) // 2 % (1 << ulp_log)
                for t in (t0, t0 + (1 << ulp_log), t0 + (2 << ulp_log)):
                    x = t * t + t + c
                    in_binade = x.bit_length() == ulp_log + 24
                    if 2**23 <= t < 2**24 and in_binade and x % (1 << ulp_log) == 0:
                        out.add(x)
    assert len(out) > cmax // 2
    return np.array([math.ldexp(float(v), -46) for v in sorted(out)])  # [1, 4), exact


SQRT_CLOSE = _sqrt_hard_radicands(20)  # the sticky bit decides
SQRT_NEAR = _sqrt_hard_radicands(200)


def _div_hard_pairs(rng, k):
    """a/b just above or below a midpoint: a*2**24 = b*(2t+1) + d with small odd d, b odd."""
    b_ = rng.integers(2**21, 2**22, k) * 2 + 1  # odd, in [2**22, 2**23)
    d = rng.choice([1, -1, 3, -3, 5, -5], k)
    a = np.zeros(k, dtype=np.int64)
    for i in range(k):
        u = (-int(d[i]) * pow(int(b_[i]), -1, 2**24)) % 2**24  # 2t+1 = u (mod 2**24), odd
        a[i] = (int(b_[i]) * (u + 2**24) + int(d[i])) // 2**24  # a/b in [1, 2)
    return a, b_


def structured_sqrt(rng, n):
    k0, k1, k2, k3, k4 = _split(rng, n, 5)
    pool = np.concatenate([rng.choice(SQRT_CLOSE, k0 - k0 // 2), rng.choice(SQRT_NEAR, k0 // 2)])
    hard = _from_f64(np.ldexp(pool, 2 * rng.integers(-73, 62, k0)))
    # exact squares, scaled by even powers (into subnormals too)
    m = rng.integers(1, 2**12, k1)
    sq = _scaled(m * m, 2 * rng.integers(-80, 40, k1))
    # near-midpoint radicands: ((t + 1/2) * 2**k)**2 rounded to float32
    t = rng.integers(2**23, 2**24, k2).astype(np.float64)
    k = rng.integers(-90, 40, k2)
    near = _from_f64(np.ldexp((t + 0.5) ** 2, 2 * k - 48))
    # squares of 24-bit numbers rounded (nearby ulps)
    t = rng.integers(2**23, 2**24, k3).astype(np.float64)
    sq24 = _from_f64(np.ldexp(t * t, 2 * rng.integers(-90, 40, k3) - 46))
    sq24 = sq24 + rng.integers(-1, 2, k3).astype(np.uint64)
    anyv = np.concatenate(
        [
            _finite(rng, k4 // 2, 0, 254) & np.uint64(ABS),
            rng.integers(0, 2**32, k4 - k4 // 2, dtype=np.uint64),
        ]
    )
    return np.concatenate([hard, sq, near, sq24 & np.uint64(0xFFFFFFFF), anyv]), None


def structured_round(rng, n):
    k1, k2, k3, k4 = _split(rng, n, 4)
    s = rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(31)
    halves = _from_f64(rng.integers(0, 2**24, k1) / 2.0)
    quarters = _from_f64(rng.integers(0, 2**10, k2) / 4.0)
    near = _finite(rng, k3, 120, 152) & np.uint64(ABS)
    anyv = _finite(rng, k4, 0, 254) & np.uint64(ABS)
    return np.concatenate([halves, quarters, near, anyv]) | s, None


def structured_ldexp(rng, n):
    k1, k2, k3, k4 = _split(rng, n, 4)
    out_a, out_n = [], []
    # land results around the subnormal range and around overflow
    a = _finite(rng, k1, 0, 254)
    ea = ((a >> np.uint64(23)) & np.uint64(0xFF)).astype(np.int64)
    target = np.where(
        rng.integers(0, 2, k1) == 0, rng.integers(-25, 3, k1), rng.integers(250, 258, k1)
    )
    out_a.append(a)
    out_n.append(_from_f64((target - ea).astype(np.float64)))
    # small integral n
    out_a.append(_finite(rng, k2, 0, 254))
    out_n.append(_from_f64(rng.integers(-300, 301, k2).astype(np.float64)))
    # huge, infinite, NaN, fractional and signed-zero n
    a = _finite(rng, k3, 0, 254)
    special_n = [0.5, -0.5, 1.5, 2.5, -3.25, 1e-45, -1e-45, 0.0, -0.0, 2.0**23, -(2.0**23)]
    special_n += [2.0**23 + 2, 1e30, -1e30, 8388607.5, -8388607.5, 512.0, -512.0, 513.0]
    special_n += [-513.0, math.inf, -math.inf]
    choices = np.array([*map(b, special_n), NAN, 0xFFC00001, POS_INF + 5], dtype=np.uint64)
    out_a.append(a)
    out_n.append(rng.choice(choices, k3))
    out_a.append(rng.integers(0, 2**32, k4, dtype=np.uint64))
    out_n.append(rng.integers(0, 2**32, k4, dtype=np.uint64))
    return np.concatenate(out_a), np.concatenate(out_n)


def structured_compare(rng, n):
    k1, k2, k3 = _split(rng, n, 3)
    a = rng.integers(0, 2**32, n, dtype=np.uint64)
    b_ = rng.integers(0, 2**32, n, dtype=np.uint64)
    # equal values, ±0 pairs, neighbours and sign flips
    b_[:k1] = a[:k1]
    b_[k1 : k1 + k2] = a[k1 : k1 + k2] ^ np.uint64(SIGN)
    a[k1 : k1 + k2 // 4] &= np.uint64(SIGN)  # ±0 against ∓0
    b_[k1 : k1 + k2 // 4] = a[k1 : k1 + k2 // 4] ^ np.uint64(SIGN)
    nb = k1 + k2
    step = rng.integers(0, 3, k3, dtype=np.uint64) - np.uint64(1)
    b_[nb : nb + k3] = (a[nb : nb + k3] + step) & np.uint64(0xFFFFFFFF)
    return a, b_


def structured_unary(rng, n):
    return np.concatenate(
        [_finite(rng, n // 2, 0, 254), rng.integers(0, 2**32, n - n // 2, dtype=np.uint64)]
    ), None


# ---------------------------------------------------------------------------------------------
# structured fma cases: a * b + c with one rounding
# ---------------------------------------------------------------------------------------------


def _f64_of(bits) -> np.ndarray:
    """float32 bits -> their exact float64 values."""
    with np.errstate(all="ignore"):
        return orc.f32(np.asarray(bits, dtype=np.uint64).astype(np.uint32)).astype(np.float64)


def _signs(rng, k) -> np.ndarray:
    return rng.integers(0, 2, k, dtype=np.uint64) << np.uint64(31)


def _with_exp(rng, k, biased) -> np.ndarray:
    """Random sign and fraction with the given biased exponents (clipped to [0, 254])."""
    e = np.clip(np.asarray(biased, dtype=np.int64), 0, 254).astype(np.uint64)
    return _finite(rng, k, 0, 0) | (e << np.uint64(23))


def _biased(bits) -> np.ndarray:
    return ((np.asarray(bits, dtype=np.uint64) >> np.uint64(23)) & np.uint64(0xFF)).astype(np.int64)


def _factors(rng, k, lo=64, hi=190):
    """Random finite a, b whose exact product lies inside the normal range."""
    return _finite(rng, k, lo, hi), _finite(rng, k, lo, hi)


def fma_cancel_rounded(rng, k):
    """c = -round(a*b): the result is the product's rounding error (massive cancellation)."""
    a, b_ = _factors(rng, k)
    c_ = _from_f64(-(_f64_of(a) * _f64_of(b_)))  # the f64 product is exact; cast is RNE
    return a, b_, c_


def fma_cancel_exact(rng, k):
    """a*b has <= 24 bits and c = -a*b exactly (result +0), or c a few ulps away from it."""
    p = rng.integers(1, 2**12, k)
    q = rng.integers(1, 2**12, k)
    s1 = rng.integers(-60, 60, k)
    s2 = rng.integers(-60, 60, k)
    a = _scaled(p, s1) | _signs(rng, k)
    b_ = _scaled(q, s2) | _signs(rng, k)
    c_ = _from_f64(-(_f64_of(a) * _f64_of(b_)))  # exact: p*q < 2**24
    step = np.where(rng.integers(0, 2, k) == 0, 0, rng.integers(-2, 3, k))
    c_ = ((c_ & np.uint64(ABS)).astype(np.int64) + step).clip(0, MAX_FINITE).astype(np.uint64)
    return a, b_, c_ | (_from_f64(-(_f64_of(a) * _f64_of(b_))) & np.uint64(SIGN))


def fma_tie_product_half_ulp(rng, k):
    """a*b = odd * ulp(c)/2 exactly: c + a*b is an exact tie (while it stays in c's binade)."""
    c_ = _finite(rng, k, 40, 200)
    ec = _exp_of(c_)
    m1 = rng.integers(0, 2**6, k) * 2 + 1
    m2 = rng.integers(0, 2**6, k) * 2 + 1
    m2 = np.where(rng.integers(0, 2, k) == 0, 1, m2)  # product exactly half an ulp, often
    m1 = np.where(m2 == 1, np.where(rng.integers(0, 2, k) == 0, 1, m1), m1)
    k1 = rng.integers(-20, 20, k)
    a = _scaled(m1, k1) | _signs(rng, k)
    b_ = _scaled(m2, ec - 1 - k1) | _signs(rng, k)
    return a, b_, c_


def fma_near_half_ulp_product(rng, k):
    """a*b = ±ulp(c)/2 * (1 + delta) with |delta| ~ 2**-24 decided by the product's low bits."""
    c_ = _finite(rng, k, 40, 200)
    ec = _exp_of(c_)
    x = _finite(rng, k, 127, 127) & np.uint64(ABS)  # x in [1, 2)
    y = _from_f64(1.0 / _f64_of(x))  # 1/x rounded: x*y = 1 + O(2**-24)
    y = y + rng.integers(-1, 2, k).astype(np.uint64)
    k1 = rng.integers(-20, 20, k)
    a = _from_f64(np.ldexp(_f64_of(x), k1)) | _signs(rng, k)
    b_ = _from_f64(np.ldexp(_f64_of(y), ec - 1 - k1)) | _signs(rng, k)
    return a, b_, c_


def fma_power_of_two_c(rng, k):
    """c = ±2**k and a*b of the other sign near a quarter or half of c's ulp: the result drops
    into the binade below c, where the rounding boundary is c - ulp(c)/4 (a product just
    under half an ulp of c must not be mistaken for a sticky bit)."""
    c_ = _with_exp(rng, k, rng.integers(40, 200, k)) & np.uint64(0xFF800000)  # ±2**k
    ec = _exp_of(c_)
    x = _finite(rng, k, 127, 127) & np.uint64(ABS)  # x in [1, 2)
    y = _from_f64(1.0 / _f64_of(x))
    y = np.where(rng.integers(0, 4, k) == 0, ONE, y + rng.integers(-1, 2, k).astype(np.uint64))
    x = np.where(y == ONE, ONE, x)  # some exact quarter / half ulps (ties)
    k1 = rng.integers(-20, 20, k)
    target = ec - rng.integers(1, 4, k)  # ulp/2, ulp/4 or ulp/8 of c
    a = _from_f64(np.ldexp(_f64_of(x), k1)) | _signs(rng, k)
    b_ = _from_f64(np.ldexp(_f64_of(y), target - k1))
    b_ |= (a ^ c_ ^ np.uint64(SIGN)) & np.uint64(SIGN)  # product and c of opposite signs
    return a, b_, c_


def fma_tie_product_tiny_c(rng, k):
    """a*b an exact binary32 tie (odd, 25 bits) and c tiny next to it: only c's sign (the
    sticky bit, beyond the alignment window or inside it) decides the rounding direction."""
    p, q = _odd_pairs(rng, k)
    s1 = rng.integers(-50, 50, k)
    s2 = rng.integers(-50, 50, k)
    a = _scaled(p, s1) | _signs(rng, k)
    b_ = _scaled(q, s2) | _signs(rng, k)
    top = 24 + s1 + s2 + 127  # biased exponent of the product's leading bit
    off = rng.integers(20, 110, k)
    return a, b_, _with_exp(rng, k, top - off)


def fma_tiny_product(rng, k):
    """|a*b| far below |c|: alignments around and beyond the sticky window, both signs."""
    c_ = _finite(rng, k, 60, 240)
    a = _finite(rng, k, 20, 140)
    target = _biased(c_) - rng.integers(10, 90, k)  # biased exponent of the product
    return a, _with_exp(rng, k, target - _biased(a) + 127), c_


def fma_tiny_c(rng, k):
    """|c| far below |a*b| (random product, not a tie): alignment gaps 0 .. 100."""
    a, b_ = _factors(rng, k, 40, 210)
    top = _biased(a) + _biased(b_) - 127
    return a, b_, _with_exp(rng, k, top - rng.integers(0, 100, k))


def fma_near_midpoint_c(rng, k):
    """c = (m - a*b) rounded, for m a midpoint next to round(a*b): a*b + c lies within about
    2**-48 of m (often exactly on it), so the product's lowest bits decide."""
    a, b_ = _factors(rng, k, 70, 180)
    p = _f64_of(a) * _f64_of(b_)
    r = p.astype(np.float32)
    u = np.spacing(np.abs(r)).astype(np.float64)
    m = r.astype(np.float64) + np.where(rng.integers(0, 2, k) == 0, 0.5, -0.5) * u
    return a, b_, _from_f64(m - p)


def fma_subnormal(rng, k):
    """Products and sums in the subnormal range: gradual underflow, ties at 2**-150,
    cancellation into subnormals, subnormal operands."""
    k1, k2, k3 = _split(rng, k, 3)
    out = []
    # product around 2**-160 .. 2**-120, c subnormal or tiny normal
    a = _finite(rng, k1, 1, 200)
    target = rng.integers(-35, 8, k1)  # biased exponent of the product (<= 0: subnormal)
    out.append((a, _with_exp(rng, k1, target - _biased(a) + 127), _finite(rng, k1, 0, 3)))
    # a subnormal factor
    out.append((_finite(rng, k2, 0, 0), _finite(rng, k2, 100, 170), _finite(rng, k2, 0, 8)))
    # c = -round(a*b) with a subnormal product: the error is far below 2**-149
    a = _finite(rng, k3, 40, 110)
    bb = _with_exp(rng, k3, rng.integers(-10, 20, k3) - _biased(a) + 127)
    out.append((a, bb, _from_f64(-(_f64_of(a) * _f64_of(bb)))))
    return tuple(np.concatenate(x) for x in zip(*out, strict=True))


def fma_overflow(rng, k):
    """Products and sums around the overflow threshold (max finite + half an ulp = tie)."""
    k1, k2 = _split(rng, k, 2)
    a = _finite(rng, k1, 127, 254)
    target = rng.integers(250, 258, k1)
    bb = _with_exp(rng, k1, target - _biased(a) + 127)
    c1 = _finite(rng, k1, 200, 254)
    # a = max finite (or one below), b = ±1, c = ±2**103 (half an ulp of max finite) or so
    a2 = MAX_FINITE - rng.integers(0, 2, k2, dtype=np.uint64)
    b2 = np.full(k2, ONE, dtype=np.uint64) | _signs(rng, k2)
    c2 = rng.choice(np.array([0x73000000, 0x72FFFFFF, 0x73000001, 0x72800000]), k2)
    c2 = c2.astype(np.uint64) | np.where(rng.integers(0, 4, k2) == 0, _signs(rng, k2), b2 & SIGN)
    return np.concatenate([a, a2]), np.concatenate([bb, b2]), np.concatenate([c1, c2])


def fma_random(rng, k):
    """Random finite operands, and random bit patterns (every class)."""
    k1, k2 = _split(rng, k, 2)
    return (
        np.concatenate([_finite(rng, k1, 0, 254), rng.integers(0, 2**32, k2, dtype=np.uint64)]),
        np.concatenate([_finite(rng, k1, 0, 254), rng.integers(0, 2**32, k2, dtype=np.uint64)]),
        np.concatenate([_finite(rng, k1, 0, 254), rng.integers(0, 2**32, k2, dtype=np.uint64)]),
    )


FMA_FAMILIES = {
    "cancel_rounded": fma_cancel_rounded,
    "cancel_exact": fma_cancel_exact,
    "tie_product_half_ulp": fma_tie_product_half_ulp,
    "near_half_ulp_product": fma_near_half_ulp_product,
    "power_of_two_c": fma_power_of_two_c,
    "tie_product_tiny_c": fma_tie_product_tiny_c,
    "tiny_product": fma_tiny_product,
    "tiny_c": fma_tiny_c,
    "near_midpoint_c": fma_near_midpoint_c,
    "subnormal": fma_subnormal,
    "overflow": fma_overflow,
    "random": fma_random,
}


def structured_fma(rng, n):
    """n fma cases (a, b, c) spread over FMA_FAMILIES."""
    sizes = _split(rng, n, len(FMA_FAMILIES))
    parts = [fam(rng, k) for fam, k in zip(FMA_FAMILIES.values(), sizes, strict=True)]
    return tuple(np.concatenate(x) & np.uint64(0xFFFFFFFF) for x in zip(*parts, strict=True))


# ---------------------------------------------------------------------------------------------
# running and checking
# ---------------------------------------------------------------------------------------------


def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x, dtype=np.uint64)]


def run(c, op: str, *args) -> np.ndarray:
    arrays = [_ints(x) for x in args] + [[]] * (3 - len(args))
    out = []
    n = len(arrays[0])
    for i in range(0, n, BATCH):
        out += c.batch(OP[op], *[a[i : i + BATCH] for a in arrays])
    return np.array(out, dtype=np.uint64)


def assert_bits(op: str, inputs: tuple, got, want) -> None:
    got = np.asarray(got, dtype=np.uint64)
    want = np.asarray(want, dtype=np.uint64)
    bad = np.nonzero(got != want)[0]
    if len(bad):
        lines = []
        for i in bad[:10]:
            ins = ", ".join(f"0x{int(x[i]):08x}" for x in inputs)
            lines.append(f"{op}({ins}) = 0x{int(got[i]):08x}, want 0x{int(want[i]):08x}")
        raise AssertionError(f"{len(bad)} of {len(got)} wrong:\n" + "\n".join(lines))


def cross(xs, ys):
    a = np.repeat(np.array(xs, dtype=np.uint64), len(ys))
    b_ = np.tile(np.array(ys, dtype=np.uint64), len(xs))
    return a, b_


EXACT = {
    "add": orc.exact_add,
    "sub": orc.exact_sub,
    "mul": orc.exact_mul,
    "div": orc.exact_div,
    "ldexp": orc.exact_ldexp,
    "fma": orc.exact_fma,
}
STRUCTURED = {
    "add": structured_add,
    "sub": structured_add,
    "mul": structured_mul,
    "div": structured_div,
    "ldexp": structured_ldexp,
    "maximum": structured_compare,
    "minimum": structured_compare,
    "gt": structured_compare,
    "ge": structured_compare,
    "eq": structured_compare,
}


def numpy_binary(op: str, a, b_):
    if op in ("add", "sub", "mul", "div"):
        return orc.np_binary(op, a, b_)
    if op == "maximum":
        return orc.np_maximum(a, b_)
    if op == "minimum":
        return orc.np_minimum(a, b_)
    if op in ("gt", "ge", "eq"):
        return orc.np_compare(op, a, b_)
    assert op == "ldexp"
    return orc.np_ldexp(a, b_)


# ---------------------------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------------------------


UNARY_STRUCTURED = {
    "sqrt": structured_sqrt,
    "round_even": structured_round,
    "neg": structured_unary,
    "abs": structured_unary,
    "frexp_exp": structured_unary,
    "frexp_mant": structured_unary,
}
EXACT_UNARY = {"sqrt": orc.exact_sqrt, "round_even": orc.exact_round_even}


def numpy_oracle(op: str, *ins) -> np.ndarray:
    if op in UNARY_STRUCTURED:
        (a,) = ins
        if op in ("frexp_exp", "frexp_mant"):
            mant, exp = orc.np_frexp(a)
            return exp if op == "frexp_exp" else mant
        unary = {"sqrt": orc.np_sqrt, "round_even": orc.np_round_even}
        return {**unary, "neg": orc.np_neg, "abs": orc.np_abs}[op](a)
    if op == "select":
        return orc.np_select(*ins)
    if op == "fma":
        return orc.np_fma(*ins)
    return numpy_binary(op, *ins)


def check(op: str, ins: tuple, got) -> None:
    """The contract's results `got` on inputs `ins` equal the numpy oracle and, for every
    rounding primitive, the exact Fraction oracle, bit for bit."""
    assert_bits(op, ins, got, numpy_oracle(op, *ins))
    exact = EXACT.get(op) or EXACT_UNARY.get(op)
    if exact is not None:
        want = [exact(*map(int, args)) for args in zip(*ins, strict=True)]
        assert_bits(op + " (exact)", ins, got, want)


@pytest.mark.slow
@pytest.mark.parametrize(
    "op", ["add", "sub", "mul", "div", "ldexp", "maximum", "minimum", "gt", "ge", "eq"]
)
@PROPERTY
@given(xs=value_lists, ys=value_lists, seed=st.integers(0, 2**63))
def test_binary_property(c, op, xs, ys, seed):
    a1, b1 = cross(xs, ys)
    a2, b2 = STRUCTURED[op](np.random.default_rng(seed), BATCH - len(a1))
    a = np.concatenate([a1, a2]) & np.uint64(0xFFFFFFFF)
    b_ = np.concatenate([b1, b2]) & np.uint64(0xFFFFFFFF)
    check(op, (a, b_), run(c, op, a, b_))


@pytest.mark.slow
@pytest.mark.parametrize("op", ["sqrt", "round_even", "neg", "abs", "frexp_exp", "frexp_mant"])
@PROPERTY
@given(xs=st.lists(f32_bits(), min_size=256, max_size=256), seed=st.integers(0, 2**63))
def test_unary_property(c, op, xs, seed):
    a2, _ = UNARY_STRUCTURED[op](np.random.default_rng(seed), BATCH - len(xs))
    a = np.concatenate([np.array(xs, dtype=np.uint64), a2]) & np.uint64(0xFFFFFFFF)
    check(op, (a,), run(c, op, a))


def select_inputs(rng, cs, xs):
    conds = np.array(
        [*cs, 0, SIGN, NAN, 0xFFC00001, MIN_SUB, SIGN | MIN_SUB, ONE, POS_INF], dtype=np.uint64
    )
    a1, b1 = cross(xs, xs)
    cond = rng.choice(conds, BATCH)
    a = np.concatenate([a1, rng.integers(0, 2**32, BATCH - len(a1), dtype=np.uint64)])
    b_ = np.concatenate([b1, rng.integers(0, 2**32, BATCH - len(b1), dtype=np.uint64)])
    a[-32:] = POS_INF | (rng.integers(1, 2**23, 32, dtype=np.uint64))  # NaN payloads
    return cond, a, b_


@pytest.mark.slow
@PROPERTY
@given(cs=st.lists(f32_bits(), min_size=8, max_size=8), xs=value_lists, seed=st.integers(0, 2**63))
def test_select_property(c, cs, xs, seed):
    ins = select_inputs(np.random.default_rng(seed), cs, xs)
    check("select", ins, run(c, "select", *ins))


def cross3(xs, ys, zs):
    """Every (x, y, z) of three lists."""
    a, b_ = cross(xs, ys)
    zs = np.array(zs, dtype=np.uint64)
    return np.repeat(a, len(zs)), np.repeat(b_, len(zs)), np.tile(zs, len(a))


@pytest.mark.slow
@PROPERTY
@given(
    xs=st.lists(f32_bits(), min_size=8, max_size=8),
    ys=st.lists(f32_bits(), min_size=8, max_size=8),
    zs=st.lists(f32_bits(), min_size=4, max_size=4),
    seed=st.integers(0, 2**63),
)
def test_fma_property(c, xs, ys, zs, seed):
    """10,240 cases: 256 from the cross product of hypothesis-drawn specials (8 x 8 x 4), 256
    from the structured fma families, per example."""
    a1, b1, c1 = cross3(xs, ys, zs)
    a2, b2, c2 = structured_fma(np.random.default_rng(seed), BATCH - len(a1))
    ins = tuple(
        np.concatenate([u, v]) & np.uint64(0xFFFFFFFF) for u, v in ((a1, a2), (b1, b2), (c1, c2))
    )
    check("fma", ins, run(c, "fma", *ins))


FMA_FAMILY_CASES = 1024  # per family (two batches)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FMA_FAMILIES))
def test_fma_families(c, family):
    """Each hard-case family on its own (fixed seeds), against both oracles."""
    rng = np.random.default_rng(sorted(FMA_FAMILIES).index(family))
    ins = tuple(
        np.asarray(x, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
        for x in FMA_FAMILIES[family](rng, FMA_FAMILY_CASES)
    )
    check("fma", ins, run(c, "fma", *ins))


#: every class fma distinguishes, with both signs: 18**3 = 5,832 triples
FMA_SPECIAL_MAGS = [0, MIN_SUB, MAX_SUB, MIN_NORMAL, ONE, 0x3FC00000, MAX_FINITE, POS_INF]
FMA_SPECIAL_MAGS += [NAN, POS_INF + 1]


@pytest.mark.slow
def test_fma_all_special_triples(c):
    """Every combination of ±0, subnormals, 1, 1.5, max finite, ±inf and NaNs (quiet,
    signalling, both signs) as a, b and c: inf * 0, inf - inf, signed zero sums, overflow."""
    mags = np.array(FMA_SPECIAL_MAGS, dtype=np.uint64)
    vals = np.concatenate([mags, mags | np.uint64(SIGN)])
    ins = cross3(vals, vals, vals)
    assert len(ins[0]) == len(vals) ** 3
    check("fma", ins, run(c, "fma", *ins))


# ---------------------------------------------------------------------------------------------
# planted bugs: mutants of the fma path must be caught by the hard-case generator
# ---------------------------------------------------------------------------------------------

SOFTFLOAT = "contracts/softfloat.vy"


def _function(src: str, name: str) -> tuple[int, int]:
    """(start, end) of the text of `def name(...)` up to the next decorated function."""
    start = src.index(f"\ndef {name}(") + 1
    end = src.index("\n@internal", start)
    return start, end


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"mutation site {old!r} found {text.count(old)} times"
    return text.replace(old, new)


def _mutate_fma(src: str, old: str, new: str, count: int = 1) -> str:
    """Replace `old` by `new` inside the body of fma only (exactly `count` occurrences)."""
    start, end = _function(src, "fma")
    body = src[start:end]
    assert body.count(old) == count, f"mutation site {old!r} found {body.count(old)} times"
    return src[:start] + body.replace(old, new) + src[end:]


def mutant_no_sticky(src: str) -> str:
    """Drop the sticky bit: an addend beyond the alignment window is ignored."""
    return _mutate_fma(src, "        mz = 1\n", "        mz = 0\n")


def mutant_truncate(src: str) -> str:
    """fma rounds toward zero (truncates) instead of to nearest-even: its four `_pack`
    calls go to copies of `_pack`/`_round` without the round-up step."""
    start, end = _function(src, "_round")
    round_rz = _replace_once(src[start:end], "def _round(", "def _round_rz(")
    round_rz = _replace_once(
        round_rz,
        "    if rem > half or (rem == half and kept & 1 == 1):\n"
        "        kept = unsafe_add(kept, 1)\n",
        "",
    )
    start, end = _function(src, "_pack")
    pack_rz = _replace_once(src[start:end], "def _pack(", "def _pack_rz(")
    pack_rz = _replace_once(pack_rz, "self._round(", "self._round_rz(")
    src = _mutate_fma(src, "self._pack(", "self._pack_rz(", count=4)
    return src + "\n\n@internal\n@pure\n" + round_rz + "\n@internal\n@pure\n" + pack_rz


def mutant_unfused(src: str) -> str:
    """fma computed as add(mul(a, b), c): two roundings."""
    src = _mutate_fma(src, "def fma(", "def _fma_fused(")
    return src + (
        "\n\n@internal\n@pure\n"
        "def fma(a: uint32, b: uint32, c: uint32) -> uint32:\n"
        "    return self.add(self.mul(a, b), c)\n"
    )


def mutant_narrow_window(src: str) -> str:
    """An alignment window of 48 instead of 50 bits: a product just below half an ulp of a
    power-of-two c would be taken for a sticky bit (50 is the smallest safe width but one)."""
    return _replace_once(
        src, "FMA_ALIGN_MAX: constant(int256) = 50", "FMA_ALIGN_MAX: constant(int256) = 48"
    )


MUTANTS = {
    "no_sticky": mutant_no_sticky,
    "truncate": mutant_truncate,
    "unfused": mutant_unfused,
    "narrow_window": mutant_narrow_window,
}


@pytest.mark.slow
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_planted_fma_bug_is_caught(c, tmp_path, mutant):
    """Compile Float32.vy against a mutated softfloat module (a planted rounding bug in fma)
    and check that comparing with the exact oracle over structured_fma finds it, while the
    real module agrees with the oracle on the same cases."""
    original = Path(SOFTFLOAT).read_text()
    mutated = MUTANTS[mutant](original)
    assert mutated != original
    (tmp_path / "softfloat.vy").write_text(mutated)
    (tmp_path / "Float32.vy").write_text(Path(CONTRACT).read_text())
    bad = boa.load(str(tmp_path / "Float32.vy"))
    ins = structured_fma(np.random.default_rng(0), BATCH)
    want = np.array([orc.fma(*map(int, t)) for t in zip(*ins, strict=True)], dtype=np.uint64)
    assert_bits("fma", ins, run(c, "fma", *ins), want)  # control: the real module
    wrong = int(np.count_nonzero(run(bad, "fma", *ins) != want))
    assert wrong > 0, f"mutant {mutant} not caught by {BATCH} structured fma cases"
    with pytest.raises(AssertionError):
        check("fma", ins, run(bad, "fma", *ins))


# ---------------------------------------------------------------------------------------------
# the same module compiled by Venom (contracts/Executor.vy, the on-chain verdict, uses
# `# pragma experimental-codegen`): a smaller cross-check against the same oracles
# ---------------------------------------------------------------------------------------------

VENOM_BATCHES = 4  # x 512 = 2,048 cases per primitive


@pytest.fixture(scope="module")
def c_venom():
    return boa.load(CONTRACT, compiler_args={"experimental_codegen": True})


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_venom_build_matches_oracles(c_venom, op):
    rng = np.random.default_rng(1000 + OP[op])
    mags = np.array(SPECIAL_MAGS, dtype=np.uint64)
    specials = np.concatenate([mags, mags | np.uint64(SIGN)])
    for i in range(VENOM_BATCHES):
        if op == "select":
            xs = [int(x) for x in rng.choice(specials, 16)]
            ins = select_inputs(rng, [int(x) for x in rng.choice(specials, 8)], xs)
        elif op == "fma":
            ins = structured_fma(rng, BATCH)
        elif op in UNARY_STRUCTURED:
            ins = (UNARY_STRUCTURED[op](rng, BATCH)[0],)
        else:
            ins = STRUCTURED.get(op, structured_compare)(rng, BATCH)
        ins = tuple(np.asarray(x, dtype=np.uint64) & np.uint64(0xFFFFFFFF) for x in ins)
        if i == 0 and op != "select":  # specials against specials
            ins = tuple(rng.choice(specials, BATCH) for _ in ins)
        check(op, ins, run(c_venom, op, *ins))


# ---------------------------------------------------------------------------------------------
# the externals: each named function agrees with batch (wiring) on a spread of inputs
# ---------------------------------------------------------------------------------------------


def test_external_functions_match_batch(c):
    rng = np.random.default_rng(1234)
    mags = np.array(SPECIAL_MAGS, dtype=np.uint64)
    a = np.concatenate([mags, mags | np.uint64(SIGN), rng.integers(0, 2**32, 16, dtype=np.uint64)])
    b_ = rng.permutation(a)
    cc = rng.permutation(a)
    arity = {
        "sqrt": 1,
        "neg": 1,
        "abs": 1,
        "round_even": 1,
        "frexp_exp": 1,
        "frexp_mant": 1,
        "select": 3,
        "fma": 3,
    }
    for op in OPS:
        k = arity.get(op, 2)
        ins = (a, b_, cc)[:k]
        want = run(c, op, *ins)
        fn = getattr(c, op)
        for i in range(len(a)):
            args = [int(x[i]) for x in ins]
            assert fn(*args) == int(want[i]), (op, [hex(x) for x in args])


def test_batch_rejects_mismatched_lengths(c):
    with boa.reverts("length of b"):
        c.batch(OP["add"], [1, 2], [1], [])
    with boa.reverts("length of b"):
        c.batch(OP["fma"], [1, 2], [1], [1, 2])
    with boa.reverts("length of c"):
        c.batch(OP["fma"], [1, 2], [1, 2], [1])
    with boa.reverts("unknown op"):
        c.batch(99, [1], [1], [])


# ---------------------------------------------------------------------------------------------
# named edge cases (unit tests on the external functions)
# ---------------------------------------------------------------------------------------------

P0, N0 = 0, SIGN


@pytest.mark.parametrize(
    ("op", "args", "want"),
    [
        # add / sub
        ("add", (b(1.0), b(2.0**-24)), b(1.0)),  # exact tie 1 + 2**-24 -> even (1.0)
        ("add", (b(1.0 + 2.0**-23), b(2.0**-24)), b(1.0 + 2.0**-22)),  # tie rounds up to even
        ("add", (b(1.0), b(2.0**-24 + 2.0**-40)), b(1.0 + 2.0**-23)),  # just above the tie
        ("add", (MAX_FINITE, MAX_FINITE), POS_INF),
        ("add", (MAX_FINITE, b(2.0**103)), POS_INF),  # tie at overflow rounds to inf (odd max)
        ("add", (MAX_FINITE, b(2.0**102)), MAX_FINITE),
        ("add", (POS_INF, NEG_INF), NAN),
        ("sub", (POS_INF, POS_INF), NAN),
        ("add", (POS_INF, MAX_FINITE), POS_INF),
        ("add", (b(1.5), b(-1.5)), P0),  # x + (-x) = +0
        ("sub", (b(1.5), b(1.5)), P0),
        ("add", (N0, N0), N0),  # -0 + -0 = -0
        ("add", (N0, P0), P0),
        ("sub", (N0, P0), N0),  # -0 - +0 = -0
        ("sub", (P0, P0), P0),
        ("add", (MIN_SUB, MIN_SUB), 2),
        ("add", (MAX_SUB, MIN_SUB), MIN_NORMAL),  # subnormal sum carries into the normals
        ("sub", (MIN_NORMAL, MIN_SUB), MAX_SUB),
        ("add", (b(1.0), MIN_SUB), b(1.0)),
        ("sub", (b(1.0), MIN_SUB), b(1.0)),
        ("sub", (b(2.0**24), b(1.0)), b(2.0**24 - 1)),
        ("add", (0x7FC12345, b(1.0)), NAN),  # NaN payload not propagated
        ("add", (0xFFC00000, b(1.0)), NAN),  # negative NaN -> canonical
        ("add", (POS_INF + 1, NEG_INF), NAN),  # signalling NaN
        # mul
        ("mul", (MAX_FINITE, b(2.0)), POS_INF),
        ("mul", (MAX_FINITE, b(-2.0)), NEG_INF),
        ("mul", (P0, POS_INF), NAN),
        ("mul", (NEG_INF, N0), NAN),
        ("mul", (N0, b(3.0)), N0),
        ("mul", (b(-1.0), P0), N0),
        ("mul", (MIN_SUB, b(0.5)), P0),  # 2**-150: tie between 0 and min subnormal -> 0
        ("mul", (3, b(0.5)), 2),  # 1.5 * 2**-149 -> 2 * 2**-149 (even)
        ("mul", (5, b(0.5)), 2),  # 2.5 -> 2
        ("mul", (MIN_SUB, b(-0.5)), N0),
        ("mul", (MIN_SUB, b(0.75)), MIN_SUB),
        ("mul", (MIN_NORMAL, b(0.5)), 0x00400000),
        ("mul", (b(2.0**-75), b(2.0**-75)), P0),  # 2**-150: tie -> 0 (even)
        ("mul", (b(2.0**-75), b(1.5 * 2.0**-75)), MIN_SUB),  # 1.5 * 2**-150 -> 2**-149
        ("mul", (b(3.0), b(1.0 / 3.0)), b(1.0)),
        # div
        ("div", (MIN_SUB, b(2.0)), P0),  # smallest subnormal / 2 -> 0 (ties to even)
        ("div", (3, b(2.0)), 2),
        ("div", (MIN_SUB, b(-2.0)), N0),
        ("div", (P0, P0), NAN),
        ("div", (N0, P0), NAN),
        ("div", (POS_INF, NEG_INF), NAN),
        ("div", (b(1.0), P0), POS_INF),
        ("div", (b(1.0), N0), NEG_INF),
        ("div", (b(-1.0), P0), NEG_INF),
        ("div", (b(-1.0), N0), POS_INF),
        ("div", (P0, b(-5.0)), N0),
        ("div", (b(5.0), NEG_INF), N0),
        ("div", (NEG_INF, b(5.0)), NEG_INF),
        ("div", (b(1.0), b(3.0)), b(1.0 / 3.0)),
        ("div", (MAX_FINITE, b(0.5)), POS_INF),
        ("div", (MIN_SUB, MAX_FINITE), P0),
        ("div", (MIN_NORMAL, b(2.0**24)), P0),  # 2**-150: tie -> 0 (even)
        ("div", (MIN_NORMAL, b(2.0**23)), MIN_SUB),  # 2**-149 exactly
        ("div", (MAX_SUB, MAX_SUB), b(1.0)),
        ("div", (MIN_SUB, MIN_SUB), b(1.0)),
        ("div", (b(1.0), MIN_SUB), POS_INF),  # 2**149 overflows
        # sqrt
        ("sqrt", (MIN_SUB,), 0x1A3504F3),  # sqrt(2**-149) = sqrt(2) * 2**-75, rounded
        ("sqrt", (0x00000004,), 0x1AB504F3),  # sqrt(2**-147) = sqrt(2) * 2**-74
        ("sqrt", (0x00000002,), b(2.0**-74)),  # sqrt(2**-148) = 2**-74 exactly
        ("sqrt", (MAX_SUB,), None),
        ("sqrt", (N0,), N0),
        ("sqrt", (P0,), P0),
        ("sqrt", (b(-1.0),), NAN),
        ("sqrt", (SIGN | MIN_SUB,), NAN),
        ("sqrt", (NEG_INF,), NAN),
        ("sqrt", (POS_INF,), POS_INF),
        ("sqrt", (b(4.0),), b(2.0)),
        ("sqrt", (b(2.0),), 0x3FB504F3),
        ("sqrt", (b(2.0),), None),
        ("sqrt", (MAX_FINITE,), None),
        ("sqrt", (0xFFC00000,), NAN),
        # neg / abs
        ("neg", (P0,), N0),
        ("neg", (N0,), P0),
        ("neg", (POS_INF,), NEG_INF),
        ("neg", (NAN,), NAN),
        ("neg", (0xFFC00000,), NAN),
        ("neg", (0x7F800001,), NAN),
        ("abs", (N0,), P0),
        ("abs", (NEG_INF,), POS_INF),
        ("abs", (0xFFC00000,), NAN),
        ("abs", (0xFF812345,), NAN),
        ("abs", (b(-3.5),), b(3.5)),
        # maximum / minimum
        ("maximum", (N0, P0), P0),
        ("maximum", (P0, N0), P0),
        ("minimum", (N0, P0), N0),
        ("minimum", (P0, N0), N0),
        ("maximum", (NAN, b(1.0)), NAN),
        ("maximum", (b(1.0), 0xFFC00001), NAN),
        ("minimum", (NEG_INF, 0x7F800001), NAN),
        ("maximum", (NEG_INF, b(-3.0)), b(-3.0)),
        ("minimum", (NEG_INF, b(-3.0)), NEG_INF),
        ("maximum", (b(-1.0), b(-2.0)), b(-1.0)),
        ("minimum", (b(-1.0), b(-2.0)), b(-2.0)),
        # compares
        ("gt", (b(2.0), b(1.0)), ONE),
        ("gt", (b(1.0), b(1.0)), 0),
        ("gt", (P0, N0), 0),
        ("ge", (N0, P0), ONE),
        ("eq", (N0, P0), ONE),
        ("eq", (NAN, NAN), 0),
        ("ge", (NAN, b(1.0)), 0),
        ("gt", (POS_INF, NAN), 0),
        ("gt", (b(-1.0), b(-2.0)), ONE),
        ("gt", (b(-2.0), b(-1.0)), 0),
        ("ge", (NEG_INF, NEG_INF), ONE),
        ("eq", (POS_INF, POS_INF), ONE),
        ("gt", (MIN_SUB, N0), ONE),
        # select
        ("select", (P0, b(1.0), b(2.0)), b(2.0)),
        ("select", (N0, b(1.0), b(2.0)), b(2.0)),
        ("select", (ONE, b(1.0), b(2.0)), b(1.0)),
        ("select", (MIN_SUB, b(1.0), b(2.0)), b(1.0)),
        ("select", (NAN, b(1.0), b(2.0)), b(1.0)),  # NaN condition is "not ±0": picks a
        ("select", (0xFFC00001, b(1.0), b(2.0)), b(1.0)),
        ("select", (ONE, 0xFFC12345, b(2.0)), NAN),  # chosen NaN canonicalised
        ("select", (P0, b(1.0), 0x7F800001), NAN),
        ("select", (ONE, b(1.0), 0x7F800001), b(1.0)),
        # round_even
        ("round_even", (b(0.5),), P0),
        ("round_even", (b(1.5),), b(2.0)),
        ("round_even", (b(2.5),), b(2.0)),
        ("round_even", (b(-2.5),), b(-2.0)),
        ("round_even", (b(-0.4),), N0),  # sign of small negatives preserved
        ("round_even", (b(-0.5),), N0),
        ("round_even", (b(-0.6),), b(-1.0)),
        ("round_even", (N0,), N0),
        ("round_even", (SIGN | MIN_SUB,), N0),
        ("round_even", (b(0.49999997),), P0),
        ("round_even", (b(8388607.5),), b(8388608.0)),  # 2**23 - 0.5 -> 2**23 (even)
        ("round_even", (b(8388606.5),), b(8388606.0)),
        ("round_even", (b(4194303.75),), b(4194304.0)),
        ("round_even", (0x4B000001,), 0x4B000001),
        ("round_even", (NEG_INF,), NEG_INF),
        ("round_even", (0xFFC00001,), NAN),
        # ldexp
        ("ldexp", (b(1.0), b(-149.0)), MIN_SUB),
        ("ldexp", (b(1.0), b(-150.0)), P0),  # tie -> 0
        ("ldexp", (b(3.0), b(-150.0)), 2),  # 1.5 ulp -> 2 (even)
        ("ldexp", (b(1.5), b(-149.0)), 2),
        ("ldexp", (b(-1.0), b(-150.0)), N0),
        ("ldexp", (b(1.0), b(127.0)), b(2.0**127)),
        ("ldexp", (b(1.0), b(128.0)), POS_INF),
        ("ldexp", (b(-1.0), b(1e30)), NEG_INF),  # huge n saturates
        ("ldexp", (MAX_FINITE, b(-1e30)), P0),
        ("ldexp", (MIN_SUB, b(277.0)), POS_INF),  # 2**128 overflows
        ("ldexp", (MIN_SUB, b(276.0)), b(2.0**127)),
        ("ldexp", (MAX_SUB, b(1.0)), 0x00FFFFFE),
        ("ldexp", (b(1.0), b(0.5)), NAN),  # non-integral n
        ("ldexp", (b(1.0), b(8388607.5)), NAN),
        ("ldexp", (b(1.0), MIN_SUB), NAN),
        ("ldexp", (b(1.0), NAN), NAN),
        ("ldexp", (b(1.0), POS_INF), NAN),  # ±inf is not a finite integer
        ("ldexp", (P0, NEG_INF), NAN),
        ("ldexp", (NAN, b(1.0)), NAN),
        ("ldexp", (POS_INF, b(-1000.0)), POS_INF),
        ("ldexp", (N0, b(1000.0)), N0),
        ("ldexp", (b(5.0), N0), b(5.0)),
        ("ldexp", (b(5.0), b(-2.0)), b(1.25)),
        # frexp (numpy conventions: 0, inf, NaN -> exponent 0)
        ("frexp_exp", (b(8.0),), b(4.0)),
        ("frexp_mant", (b(8.0),), b(0.5)),
        ("frexp_exp", (b(-3.0),), b(2.0)),
        ("frexp_mant", (b(-3.0),), b(-0.75)),
        ("frexp_exp", (MIN_SUB,), b(-148.0)),
        ("frexp_mant", (MIN_SUB,), b(0.5)),
        ("frexp_exp", (MAX_SUB,), b(-126.0)),
        ("frexp_mant", (MAX_SUB,), b(1.0 - 2.0**-23)),
        ("frexp_exp", (MAX_FINITE,), b(128.0)),
        ("frexp_mant", (MAX_FINITE,), b(1.0 - 2.0**-24)),
        ("frexp_exp", (N0,), P0),
        ("frexp_mant", (N0,), N0),
        ("frexp_exp", (NEG_INF,), P0),
        ("frexp_mant", (NEG_INF,), NEG_INF),
        ("frexp_exp", (0xFFC00001,), P0),
        ("frexp_mant", (0xFFC00001,), NAN),
        ("frexp_exp", (b(0.5),), b(0.0)),
        ("frexp_exp", (b(0.25),), b(-1.0)),
        # fma: NaN and infinities
        ("fma", (NAN, b(1.0), b(1.0)), NAN),
        ("fma", (b(1.0), 0xFFC00001, b(1.0)), NAN),
        ("fma", (b(1.0), b(1.0), POS_INF + 1), NAN),  # signalling NaN c
        ("fma", (POS_INF, P0, b(1.0)), NAN),  # inf * 0
        ("fma", (N0, NEG_INF, NEG_INF), NAN),  # inf * 0 + inf: still NaN
        ("fma", (P0, POS_INF, NAN), NAN),
        ("fma", (POS_INF, b(2.0), NEG_INF), NAN),  # inf - inf
        ("fma", (NEG_INF, b(-2.0), NEG_INF), NAN),  # (+inf) + (-inf)
        ("fma", (NEG_INF, b(2.0), NEG_INF), NEG_INF),
        ("fma", (POS_INF, MIN_SUB, b(-1.0)), POS_INF),
        ("fma", (b(-2.0), POS_INF, MAX_FINITE), NEG_INF),
        ("fma", (b(2.0), b(3.0), NEG_INF), NEG_INF),
        ("fma", (MAX_FINITE, MAX_FINITE, NEG_INF), NEG_INF),  # finite product: not NaN
        ("fma", (P0, P0, POS_INF), POS_INF),
        # fma: signed zeros (product sign = sign(a) xor sign(b), also for zero products)
        ("fma", (P0, P0, P0), P0),
        ("fma", (N0, P0, N0), N0),  # (-0) + (-0)
        ("fma", (P0, b(-1.0), N0), N0),
        ("fma", (N0, N0, N0), P0),  # (+0) + (-0)
        ("fma", (N0, b(5.0), P0), P0),  # (-0) + (+0)
        ("fma", (P0, b(-1.0), b(-3.0)), b(-3.0)),
        ("fma", (N0, MAX_FINITE, MIN_SUB), MIN_SUB),
        ("fma", (b(1.5), b(2.0), b(-3.0)), P0),  # exact cancellation: +0
        ("fma", (b(-1.5), b(2.0), b(3.0)), P0),
        ("fma", (b(-1.5), b(-2.0), b(-3.0)), P0),
        ("fma", (MIN_SUB, b(0.5), N0), P0),  # 2**-150 rounds to +0 (the sign of the exact sum)
        ("fma", (MIN_SUB, b(-0.5), P0), N0),  # -2**-150 rounds to -0
        ("fma", (b(2.0**-75), b(-(2.0**-75)), P0), N0),
        # fma: one rounding, not two
        ("fma", (b(1.0 + 2.0**-23), b(1.0 + 2.0**-23), b(-(1.0 + 2.0**-22))), b(2.0**-46)),
        ("fma", (b(1.0 / 3.0), b(3.0), b(-1.0)), b(2.0**-25)),  # mul + add gives +0
        ("fma", (MAX_FINITE, b(2.0), SIGN | MAX_FINITE), MAX_FINITE),  # mul overflows, fma not
        ("fma", (b(2.0**-100), b(2.0**-100), b(1.0)), b(1.0)),
        ("fma", (b(2.0**-100), b(-(2.0**-100)), b(1.0)), b(1.0)),
        # fma: ties and sticky (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 is an exact tie
        ("fma", (b(1 + 2.0**-12), b(1 + 2.0**-12), P0), b(1 + 2.0**-11)),  # to even
        ("fma", (b(1 + 2.0**-12), b(1 + 2.0**-12), b(2.0**-60)), b(1 + 2.0**-11 + 2.0**-23)),
        ("fma", (b(1 + 2.0**-12), b(1 + 2.0**-12), b(2.0**-80)), b(1 + 2.0**-11 + 2.0**-23)),
        ("fma", (b(1 + 2.0**-12), b(1 + 2.0**-12), b(-(2.0**-80))), b(1 + 2.0**-11)),
        ("fma", (b(-1 - 2.0**-12), b(1 + 2.0**-12), b(-(2.0**-149))), b(-1 - 2.0**-11 - 2.0**-23)),
        ("fma", (b(2.0**-24), b(1.0), b(1.0)), b(1.0)),  # c + half an ulp: tie to even
        ("fma", (b(2.0**-24), b(1.0), b(1.0 + 2.0**-23)), b(1.0 + 2.0**-22)),
        ("fma", (b(2.0**-24), b(1.0 + 2.0**-20), b(1.0)), b(1.0 + 2.0**-23)),  # just above
        ("fma", (b(-(2.0**-25)), b(1.0 + 2.0**-20), b(1.0)), b(1.0 - 2.0**-24)),  # below 1
        ("fma", (b(2.0**-25), b(1.0), b(-1.0)), b(-1.0)),  # -1 + 2**-25: tie -> even
        ("fma", (b(1.5 * 2.0**-13), b(-1.5 * 2.0**-13), b(1.0)), 0x3F7FFFFF),  # 1 - 1.125 * 2**-25
        ("fma", (b(2.0**-13), b(-(2.0**-12)), b(1.0)), b(1.0)),  # 1 - 2**-25: tie -> even
        # fma: subnormal results and operands, overflow
        ("fma", (MIN_SUB, b(0.5), MIN_SUB), 2),  # 1.5 * 2**-149: tie -> 2 (even)
        ("fma", (MIN_SUB, b(0.5), SIGN | MIN_SUB), N0),  # -2**-150: tie -> -0
        ("fma", (MIN_NORMAL, b(0.5), SIGN | MIN_SUB), 0x003FFFFF),
        ("fma", (MAX_SUB, b(2.0), MIN_SUB), 0x00FFFFFF),
        ("fma", (MAX_SUB, MAX_SUB, MIN_SUB), MIN_SUB),
        ("fma", (MAX_SUB, MAX_SUB, P0), P0),
        ("fma", (MAX_FINITE, b(1.0), b(2.0**103)), POS_INF),  # tie at overflow -> inf
        ("fma", (MAX_FINITE, b(1.0), b(2.0**102)), MAX_FINITE),
        ("fma", (MAX_FINITE, b(-1.0), b(-(2.0**103))), NEG_INF),
        ("fma", (MAX_FINITE, b(1.0 + 2.0**-23), SIGN | MAX_FINITE), b((2**24 - 1) * 2.0**81)),
        ("fma", (b(2.0**64), b(2.0**64), b(-1.0)), POS_INF),
        ("fma", (b(3.0), b(1.0 / 3.0), b(1e-30)), None),
        ("fma", (b(1.1), b(1.1), b(-1.21)), None),
    ],
)
def test_edge_cases(c, op, args, want):
    got = getattr(c, op)(*args)
    if want is None:  # no closed form: the exact oracle decides
        want = {"sqrt": orc.exact_sqrt, "fma": orc.exact_fma}[op](*args)
    assert got == want, f"{op}({', '.join(hex(x) for x in args)}) = {got:#010x}, want {want:#010x}"


# ---------------------------------------------------------------------------------------------
# the contract agrees with the replay reference semantics (replay/execute/semantics.py)
# ---------------------------------------------------------------------------------------------

REPLAY_NAMES = {"maximum": "MAX", "minimum": "MIN", "round_even": "ROUND", "abs": "ABS"}
#: fma is no elementwise opcode (MATMUL's FMA chain is checked through the executor)
REPLAY_OPS = [op for op in OPS if op != "fma"]


@pytest.mark.slow
@pytest.mark.parametrize("op", REPLAY_OPS)
def test_matches_replay_semantics(c, op):
    semantics = pytest.importorskip("replay.execute.semantics")
    ir = pytest.importorskip("protocol.ir")
    fn = semantics.ELEMENTWISE[ir.Opcode[REPLAY_NAMES.get(op, op.upper())]]
    rng = np.random.default_rng(OP[op])
    mags = np.array(SPECIAL_MAGS, dtype=np.uint64)
    pool = np.concatenate([mags, mags | np.uint64(SIGN), _finite(rng, 64, 0, 254)])
    arity = 3 if op == "select" else 1 if op in UNARY_STRUCTURED else 2
    ins = [rng.choice(pool, BATCH) for _ in range(arity)]
    ins[0][:256] = rng.integers(0, 2**32, 256, dtype=np.uint64)
    got = run(c, op, *ins)
    with np.errstate(all="ignore"):
        want = fn(*[orc.f32(x.astype(np.uint32)) for x in ins])
    assert_bits(op + " (replay.execute.semantics)", tuple(ins), got, orc.bits_of(want))
