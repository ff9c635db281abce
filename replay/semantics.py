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
}

#: Reductions: (initial accumulator, accumulate(acc, term)). MATMUL's term is mul(a, b).
REDUCE_INIT: dict[Opcode, float] = {
    Opcode.REDUCE_SUM: 0.0,
    Opcode.MATMUL: 0.0,
    Opcode.REDUCE_MAX: float("-inf"),
}
REDUCE_STEP: dict[Opcode, Callable[[Array, Array], Array]] = {
    Opcode.REDUCE_SUM: add,
    Opcode.MATMUL: add,
    Opcode.REDUCE_MAX: maximum,
}


def reduce_term(opcode: Opcode, operands: list[Array]) -> Array:
    """The r-th term of a reduction from its gathered operand values."""
    if opcode == Opcode.MATMUL:
        return mul(operands[0], operands[1])
    return operands[0]
