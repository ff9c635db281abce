"""replay/execute/semantics.py (the numpy reference) against the float32 contract's exact oracles.

The oracles in tests/float32_oracle.py (exact rational arithmetic, written for the Vyper
float32 library) are independent of numpy's arithmetic: agreement here means the off-chain
reference and the on-chain primitive define the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest

from replay.execute import semantics as sem

try:  # pytest's rootdir-relative import: tests/ itself is on sys.path
    import float32_oracle as orc
except ModuleNotFoundError:  # pragma: no cover - tests/ is a package
    from tests import float32_oracle as orc

SPECIAL = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FC00001,
    0x7F800001, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00800000, 0x80800000,
    0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0xBF800000, 0x3F000000, 0x3FC00000, 0x40200000,
    0xC0200000, 0x4B000000, 0x4B7FFFFF, 0x3EFFFFFF, 0x40000000, 0x42F60000, 0xC3480000,
    0x43960000, 0xC3960000, 0x3F800001, 0x34000000, 0x3F7FFFFF,
]  # fmt: skip


def _pool(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rand_bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    small_ints = rng.integers(-160, 160, n).astype(np.float32).view(np.uint32)
    return np.concatenate([np.array(SPECIAL, dtype=np.uint32), rand_bits, small_ints])


def _pairs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    base = _pool(300, seed)
    sp = np.array(SPECIAL, dtype=np.uint32)
    a = np.concatenate(
        [np.repeat(sp, len(sp)), base, np.random.default_rng(seed + 1).permutation(base)]
    )
    b = np.concatenate(
        [np.tile(sp, len(sp)), np.random.default_rng(seed + 2).permutation(base), base]
    )
    return a, b


def f(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def b32(x: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(x, dtype=np.float32).view(np.uint32)]


@pytest.mark.parametrize(
    ("ours", "oracle"),
    [
        (sem.add, orc.exact_add),
        (sem.sub, orc.exact_sub),
        (sem.mul, orc.exact_mul),
        (sem.div, orc.exact_div),
        (sem.ldexp, orc.exact_ldexp),
    ],
    ids=["add", "sub", "mul", "div", "ldexp"],
)
def test_binary_ops_match_exact_oracle(ours, oracle) -> None:
    a, b = _pairs(1)
    with np.errstate(all="ignore"):
        got = b32(ours(f(a), f(b)))
    want = [oracle(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    bad = [
        (hex(x), hex(y), hex(g), hex(w))
        for x, y, g, w in zip(a, b, got, want, strict=True)
        if g != w
    ]
    assert not bad, bad[:5]


@pytest.mark.parametrize(
    ("ours", "oracle"),
    [
        (sem.maximum, orc.np_maximum),
        (sem.minimum, orc.np_minimum),
        (sem.gt, lambda a, b: orc.np_compare("gt", a, b)),
        (sem.ge, lambda a, b: orc.np_compare("ge", a, b)),
        (sem.eq, lambda a, b: orc.np_compare("eq", a, b)),
    ],
    ids=["max", "min", "gt", "ge", "eq"],
)
def test_compare_ops_match_oracle(ours, oracle) -> None:
    a, b = _pairs(2)
    with np.errstate(all="ignore"):
        assert b32(ours(f(a), f(b))) == [int(v) for v in oracle(a, b)]


@pytest.mark.parametrize(
    ("ours", "oracle"),
    [
        (sem.sqrt, orc.exact_sqrt),
        (sem.round_even, orc.exact_round_even),
    ],
    ids=["sqrt", "round"],
)
def test_unary_ops_match_exact_oracle(ours, oracle) -> None:
    a = _pool(2000, 3)
    with np.errstate(all="ignore"):
        got = b32(ours(f(a)))
    assert got == [oracle(int(x)) for x in a]


def test_neg_abs_frexp_select_match_oracle() -> None:
    a = _pool(2000, 4)
    canon = lambda bits: [orc.NAN if orc.is_nan(int(v)) else int(v) for v in bits]  # noqa: E731
    assert b32(sem.neg(f(a))) == canon(orc.np_neg(a))
    assert b32(sem.absolute(f(a))) == canon(orc.np_abs(a))
    mant, exp = orc.np_frexp(a)
    assert b32(sem.frexp_mant(f(a))) == canon(mant)
    assert b32(sem.frexp_exp(f(a))) == [int(v) for v in exp]
    c = np.random.default_rng(5).permutation(a)
    x = np.random.default_rng(6).permutation(a)
    assert b32(sem.select(f(c), f(a), f(x))) == [int(v) for v in orc.np_select(c, a, x)]


def test_every_nan_result_is_canonical() -> None:
    a, b = _pairs(7)
    with np.errstate(all="ignore"):
        for fn in (sem.add, sem.sub, sem.mul, sem.div, sem.maximum, sem.minimum, sem.ldexp):
            r = b32(fn(f(a), f(b)))
            assert all(v == orc.NAN for v in r if orc.is_nan(v))
        for fn1 in (sem.neg, sem.absolute, sem.sqrt, sem.round_even, sem.copy, sem.frexp_mant):
            r = b32(fn1(f(a)))
            assert all(v == orc.NAN for v in r if orc.is_nan(v))


def test_signed_zero_rules() -> None:
    pz, nz = np.float32(0.0), np.float32(-0.0)
    arr = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    assert b32(sem.maximum(arr(nz, pz, nz), arr(pz, nz, nz))) == [0, 0, 0x80000000]
    assert b32(sem.minimum(arr(nz, pz, pz), arr(pz, nz, pz))) == [0x80000000, 0x80000000, 0]
    assert b32(sem.add(arr(nz, nz), arr(nz, pz))) == [0x80000000, 0]
    assert b32(sem.round_even(arr(-0.4, -0.5, 0.5, 1.5, 2.5))) == b32(
        arr(-0.0, -0.0, 0.0, 2.0, 2.0)
    )
    assert b32(sem.sqrt(arr(nz))) == [0x80000000]
    assert b32(sem.eq(arr(nz), arr(pz))) == [0x3F800000]
