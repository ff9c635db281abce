"""exp, log, tanh and GELU lowered into float32 IR primitives (docs/protocol.md §3.8).

Every function here only emits primitive ops through a :class:`ProgramBuilder`; nothing calls a
library transcendental. Each multiply and add is its own op (two roundings, never fused).
Polynomials are the single-precision Cephes approximations (S. L. Moshier), evaluated by
Horner's rule; the measured worst-case errors against float64 are asserted in
``tests/test_replay_lowering.py`` and listed in docs/protocol.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from replay.compile.builder import ProgramBuilder, View

LOG2E = 1.44269504088896341
#: ln 2 split so that k·LN2_HI is exact for |k| < 2**9 (LN2_HI has 15 significant bits).
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
SQRT_HALF = 0.707106781186547524
#: exp's input clamp: exp(89) overflows float32 and exp(-104) rounds to +0.
EXP_HI, EXP_LO = 89.0, -104.0
#: Cephes expf: exp(r) ≈ 1 + r + r²·P(r) on |r| ≤ ln2/2.
EXP_POLY = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
#: Cephes logf: log(1+f) ≈ f - f²/2 + f³·P(f) on sqrt(1/2)-1 ≤ f < sqrt(2)-1.
LOG_POLY = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)
#: Cephes tanhf: tanh(x) ≈ x + x·z·P(z), z = x², for |x| < TANH_SMALL.
TANH_POLY = (
    -5.70498872745e-3,
    2.06390887954e-2,
    -5.37397155531e-2,
    1.33314422036e-1,
    -3.33332819422e-1,
)
TANH_SMALL = 0.625
#: GELU (tanh form): 0.5·x·(1 + tanh(GELU_C·(x + GELU_K·x³))), see :func:`gelu_parts`.
GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def horner(b: ProgramBuilder, x: View, coefficients: Sequence[float], hint: str) -> View:
    """c0·x^(n-1) + ... + c_{n-1}, one MUL and one ADD per step."""
    acc = b.const(coefficients[0])
    for c in coefficients[1:]:
        acc = b.add(b.mul(acc, x, hint=hint), b.const(c), hint=hint)
    return acc


def exp(b: ProgramBuilder, x: View) -> View:
    """exp(x): k = round(x·log2 e), r = x - k·ln2 (Cody-Waite), exp(r) by polynomial, ·2^k."""
    xc = b.minimum(
        b.maximum(x, b.const(EXP_LO), hint="exp.clamp"), b.const(EXP_HI), hint="exp.clamp"
    )
    k = b.round(b.mul(xc, b.const(LOG2E), hint="exp.k"), hint="exp.k")
    r = b.sub(xc, b.mul(k, b.const(LN2_HI), hint="exp.r"), hint="exp.r")
    r = b.sub(r, b.mul(k, b.const(LN2_LO), hint="exp.r"), hint="exp.r")
    z = b.mul(r, r, hint="exp.z")
    p = horner(b, r, EXP_POLY, "exp.poly")
    p = b.add(b.mul(p, z, hint="exp.poly"), r, hint="exp.poly")
    p = b.add(p, b.const(1.0), hint="exp.poly")
    return b.ldexp(p, k, hint="exp")


def log(b: ProgramBuilder, x: View) -> View:
    """log(x): x = m·2^e with m in [sqrt(1/2), sqrt(2)), log(1+f) by polynomial, + e·ln2.

    log(±0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN.
    """
    m = b.frexp_mant(x, hint="log.m")
    e = b.frexp_exp(x, hint="log.e")
    low = b.gt(b.const(SQRT_HALF), m, hint="log.low")
    f = b.select(low, b.add(m, m, hint="log.f"), m, hint="log.f")
    f = b.sub(f, b.const(1.0), hint="log.f")
    e = b.select(low, b.sub(e, b.const(1.0), hint="log.e"), e, hint="log.e")
    z = b.mul(f, f, hint="log.z")
    y = horner(b, f, LOG_POLY, "log.poly")
    y = b.mul(b.mul(y, f, hint="log.poly"), z, hint="log.poly")
    y = b.add(y, b.mul(e, b.const(LN2_LO), hint="log.poly"), hint="log.poly")
    y = b.sub(y, b.mul(z, b.const(0.5), hint="log.poly"), hint="log.poly")
    y = b.add(f, y, hint="log.poly")
    y = b.add(y, b.mul(e, b.const(LN2_HI), hint="log.poly"), hint="log")
    zero = b.const(0.0)
    y = b.select(b.eq(x, b.const(math.inf), hint="log.inf"), b.const(math.inf), y, hint="log")
    y = b.select(b.gt(zero, x, hint="log.neg"), b.const(math.nan), y, hint="log")
    return b.select(b.eq(x, zero, hint="log.zero"), b.const(-math.inf), y, hint="log")


def tanh(b: ProgramBuilder, x: View) -> View:
    """tanh(x): odd polynomial for |x| < 0.625, else sign(x)·(1 - 2/(exp(2|x|) + 1))."""
    z = b.mul(x, x, hint="tanh.z")
    p = horner(b, z, TANH_POLY, "tanh.poly")
    small = b.add(b.mul(b.mul(p, z, hint="tanh.poly"), x, hint="tanh.poly"), x, hint="tanh.small")
    a = b.abs(x, hint="tanh.abs")
    # x + x·z·P(z) turns -0 into +0; tanh(±0) = ±0
    small = b.select(b.eq(a, b.const(0.0), hint="tanh.zero"), x, small, hint="tanh.small")
    e = exp(b, b.add(a, a, hint="tanh.2a"))
    one = b.const(1.0)
    t = b.sub(
        one, b.div(b.const(2.0), b.add(e, one, hint="tanh.big"), hint="tanh.big"), hint="tanh.big"
    )
    t = b.select(
        b.gt(b.const(0.0), x, hint="tanh.sign"), b.neg(t, hint="tanh.big"), t, hint="tanh.big"
    )
    return b.select(b.gt(b.const(TANH_SMALL), a, hint="tanh.which"), small, t, hint="tanh")


def gelu_parts(b: ProgramBuilder, x: View) -> tuple[View, View]:
    """(gelu(x), s) for the GELU tanh form, s = sigmoid(2u), u = GELU_C·(x + GELU_K·x³).

    0.5·x·(1 + tanh(u)) is computed as the algebraically identical x·s = x / (1 + exp(-2u)):
    1 + tanh(u) cancels catastrophically for x ≪ 0 (tanh(u) → -1), x / (1 + exp(-2u)) does not,
    and it needs one exp instead of a tanh. ``s`` is reused by :func:`gelu_grad`.
    """
    x2 = b.mul(x, x, hint="gelu.x2")
    cubic = b.mul(b.mul(x2, x, hint="gelu.x3"), b.const(GELU_K), hint="gelu.in")
    inner = b.add(x, cubic, hint="gelu.in")
    minus_2u = b.mul(inner, b.const(-2.0 * GELU_C), hint="gelu.u")
    one = b.const(1.0)
    s = b.div(one, b.add(one, exp(b, minus_2u), hint="gelu.den"), hint="gelu.s")
    return b.mul(x, s, hint="gelu"), s


def gelu_grad(b: ProgramBuilder, x: View, s: View) -> View:
    """d gelu / dx = s + x·2s(1-s)·GELU_C·(1 + 3·GELU_K·x²)   (s = sigmoid(2u))."""
    one = b.const(1.0)
    x2 = b.mul(x, x, hint="dgelu.x2")
    du = b.add(one, b.mul(x2, b.const(3.0 * GELU_K), hint="dgelu.du"), hint="dgelu.du")
    du = b.mul(du, b.const(2.0 * GELU_C), hint="dgelu.du")
    slope = b.mul(s, b.sub(one, s, hint="dgelu.1s"), hint="dgelu.ss")
    right = b.mul(b.mul(x, slope, hint="dgelu.r"), du, hint="dgelu.r")
    return b.add(s, right, hint="dgelu")
