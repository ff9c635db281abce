"""Element semantics of every IR opcode, in one place (docs/protocol.md §3.3).

Each function takes float32 numpy arrays of one shape and returns the float32 result array,
element by element. numpy's float32 ``+ - * /`` and ``sqrt`` are IEEE correctly rounded
(round-to-nearest-even, subnormals kept), so each primitive is one numpy call plus the
protocol's two fix-ups: every NaN result becomes the canonical ``0x7FC00000``, and MAX/MIN
follow IEEE 754-2019 maximum/minimum (NaN-propagating, -0 < +0).

This is the reference: the torch backend must agree with it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protocol.ir import CANONICAL_NAN_BITS, Opcode

F32 = np.float32
CANONICAL_NAN = np.array([CANONICAL_NAN_BITS], dtype=np.uint32).view(np.float32)[0]
#: LDEXP clamps its integer exponent to ±LDEXP_CLAMP (see :func:`ldexp`).
LDEXP_CLAMP = 300

Array = np.ndarray


def canon(x: Array) -> Array:
    """``x`` with every NaN replaced by the canonical NaN (a new float32 array)."""
    out = np.array(x, dtype=F32, copy=True)
    out[np.isnan(out)] = CANONICAL_NAN
    return out


def bits(x: Array) -> Array:
    return np.array(x, dtype=F32, order="C").view(np.uint32)


def add(a: Array, b: Array) -> Array:
    return canon(np.add(a, b, dtype=F32))


def sub(a: Array, b: Array) -> Array:
    return canon(np.subtract(a, b, dtype=F32))


def mul(a: Array, b: Array) -> Array:
    return canon(np.multiply(a, b, dtype=F32))


def div(a: Array, b: Array) -> Array:
    return canon(np.divide(a, b, dtype=F32))


def maximum(a: Array, b: Array) -> Array:
    """IEEE 754-2019 maximum: NaN if either is NaN; +0 > -0."""
    r = np.maximum(a, b, dtype=F32)
    both_zero = (a == 0) & (b == 0)
    r = np.where(both_zero, (bits(a) & bits(b)).view(F32), r)  # -0 only if both are -0
    return canon(r)


def minimum(a: Array, b: Array) -> Array:
    """IEEE 754-2019 minimum: NaN if either is NaN; -0 < +0."""
    r = np.minimum(a, b, dtype=F32)
    both_zero = (a == 0) & (b == 0)
    r = np.where(both_zero, (bits(a) | bits(b)).view(F32), r)  # -0 if either is -0
    return canon(r)


def _flag(mask: Array) -> Array:
    return mask.astype(F32)


def gt(a: Array, b: Array) -> Array:
    """1.0 where a > b, else 0.0 (any NaN compares false)."""
    return _flag(np.greater(a, b))


def ge(a: Array, b: Array) -> Array:
    return _flag(np.greater_equal(a, b))


def eq(a: Array, b: Array) -> Array:
    """1.0 where a == b (so -0 == +0, NaN != NaN), else 0.0."""
    return _flag(np.equal(a, b))


def ldexp(x: Array, n: Array) -> Array:
    """``x · 2^n`` rounded once to float32, where ``n`` holds an integer.

    NaN when x is NaN or n is not a finite integral value (NaN, ±inf, fractional). Otherwise
    ±0 and ±inf are unchanged and a finite x is scaled with one rounding: exact in float64
    (|x·2^k| stays inside float64's normal range for |k| ≤ 300), then one float64→float32
    rounding — correct RNE including subnormal results and overflow to ±inf. Clamping k to
    ±300 changes nothing: any non-zero float32 times 2^±300 overflows / rounds to ±0.
    """
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(n) & (np.trunc(n) == n)
    k = np.clip(np.where(valid, n, F32(0)), -LDEXP_CLAMP, LDEXP_CLAMP).astype(np.int32)
    r = np.ldexp(x.astype(np.float64), k).astype(F32)
    return canon(np.where(valid, r, CANONICAL_NAN))


def neg(x: Array) -> Array:
    return canon(np.negative(x, dtype=F32))


def absolute(x: Array) -> Array:
    return canon(np.abs(x, dtype=F32))


def sqrt(x: Array) -> Array:
    """Correctly rounded; sqrt(-0) = -0, sqrt(negative) = NaN."""
    return canon(np.sqrt(x, dtype=F32))


def round_even(x: Array) -> Array:
    """Round to integral, ties to even; keeps the sign of zero (round(-0.4) = -0)."""
    return canon(np.rint(x, dtype=F32))


def frexp_exp(x: Array) -> Array:
    """``e`` with ``x = m·2^e``, ``0.5 ≤ |m| < 1`` (numpy/C frexp); +0.0 for ±0, ±inf and NaN."""
    _, e = np.frexp(x.astype(F32))
    return np.where(np.isfinite(x), e.astype(F32), F32(0))


def frexp_mant(x: Array) -> Array:
    """``m`` with ``x = m·2^e``, ``0.5 ≤ |m| < 1``; ±0, ±inf unchanged; NaN for NaN."""
    m, _ = np.frexp(x.astype(F32))
    return canon(m.astype(F32))


def copy(x: Array) -> Array:
    return canon(x)


def fma(a: Array, b: Array, c: Array) -> Array:
    """``a·b + c`` rounded once (IEEE 754 fusedMultiplyAdd, RNE), exactly.

    The float64 product of two float32 values is exact (48 ≤ 53 significant bits). The sum
    ``p + c`` is formed in float64 with its exact rounding error (TwoSum) and then rounded
    *to odd*: when the float64 sum is inexact and its last bit is even, it is moved one
    float64 ulp towards the exact value. Rounding that round-to-odd value to float32 (RNE) is
    the correctly rounded result, because float64 carries at least two more bits than float32
    (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
    rounding to odd", IEEE TC 2008). No step overflows or underflows in float64: |a·b| <
    2^256 and the smallest non-zero product is 2^-298. Zero signs follow IEEE (``p + c`` of
    exact zeros is -0 only for (-0) + (-0)); inf·0 and inf - inf give NaN.
    """
    p = np.multiply(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    c64 = np.asarray(c, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        even = (s.view(np.int64) & 1) == 0
        fix = np.isfinite(s) & (err != 0) & even
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return canon(s.astype(F32))


def index_rows(x: Array, rows: int) -> tuple[Array, Array]:
    """(valid, row) for float32 index values ``x`` selecting one of ``rows`` rows.

    Valid iff ``x`` is finite, integral, ``≥ 0`` (``-0`` is row 0) and ``< rows``; ``row`` is
    0 where invalid (protocol.ir.index_value is the scalar rule).
    """
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(x64) & (x64 >= 0) & (np.floor(x64) == x64) & (x64 < rows)
    return valid, np.where(valid, x64, 0).astype(np.int64)


def gather_value(valid: Array, table_value: Array) -> Array:
    """GATHER's element: the selected table element (NaN canonical), +0.0 for no row."""
    return canon(np.where(valid, table_value, F32(0)))


def index_term(index: Array, value: Array, row: Array) -> Array:
    """INDEX_ADD's term r for an output element of row ``row``: ``value`` where the index
    equals the row exactly (compared as real numbers), else +0.0 (adding +0.0 to an
    accumulator that started at +0.0 changes nothing)."""
    hit = np.asarray(index, dtype=np.float64) == np.asarray(row, dtype=np.float64)
    return np.where(hit, value, F32(0)).astype(F32)


def select(c: Array, a: Array, b: Array) -> Array:
    """``a`` where ``c != 0`` (NaN counts as non-zero), else ``b``."""
    return canon(np.where(c != 0, a, b))


ELEMENTWISE: dict[Opcode, Callable[..., Array]] = {
    Opcode.ADD: add,
    Opcode.SUB: sub,
    Opcode.MUL: mul,
    Opcode.DIV: div,
    Opcode.MAX: maximum,
    Opcode.MIN: minimum,
    Opcode.GT: gt,
    Opcode.GE: ge,
    Opcode.EQ: eq,
    Opcode.LDEXP: ldexp,
    Opcode.NEG: neg,
    Opcode.ABS: absolute,
    Opcode.SQRT: sqrt,
    Opcode.ROUND: round_even,
    Opcode.FREXP_EXP: frexp_exp,
    Opcode.FREXP_MANT: frexp_mant,
    Opcode.COPY: copy,
    Opcode.SELECT: select,
    Opcode.FMA: fma,
}

#: Reductions: the initial accumulator acc_0.
REDUCE_INIT: dict[Opcode, float] = {
    Opcode.REDUCE_SUM: 0.0,
    Opcode.MATMUL: 0.0,
    Opcode.INDEX_ADD: 0.0,
    Opcode.REDUCE_MAX: float("-inf"),
}


def reduce_step(opcode: Opcode, acc: Array, operands: list[Array], row: Array | None) -> Array:
    """``acc_{r+1}`` from ``acc_r`` and the r-th term's operand values (docs/protocol.md §3.7).

    REDUCE_SUM ``acc + x``; REDUCE_MAX ``maximum(acc, x)``; MATMUL ``fma(x, y, acc)`` (the
    exact product added with one rounding); INDEX_ADD ``acc + (x == row ? y : +0)`` with
    ``row`` the output element's first index.
    """
    if opcode == Opcode.MATMUL:
        return fma(operands[0], operands[1], acc)
    if opcode == Opcode.REDUCE_MAX:
        return maximum(acc, operands[0])
    if opcode == Opcode.INDEX_ADD:
        assert row is not None
        return add(acc, index_term(operands[0], operands[1], row))
    return add(acc, operands[0])
