# pragma version ~=0.4.3
"""
@title Float32
@license Apache-2.0
@notice Deployable wrapper exposing the `softfloat` module's IEEE 754 binary32 primitives on
        raw bit patterns (`uint32`): add sub mul div sqrt neg abs maximum minimum gt ge eq
        select round_even ldexp frexp_exp frexp_mant. See contracts/softfloat.vy for the exact
        semantics (RNE, subnormals kept, signed zeros, canonical NaN 0x7FC00000).
@dev `batch` evaluates one primitive over arrays, for off-chain cross-checks and tests; it is
     not part of the dispute protocol.
"""

import softfloat

# op codes of `batch`, in the order of the external functions below
OP_ADD: constant(uint256) = 0
OP_SUB: constant(uint256) = 1
OP_MUL: constant(uint256) = 2
OP_DIV: constant(uint256) = 3
OP_SQRT: constant(uint256) = 4
OP_NEG: constant(uint256) = 5
OP_ABS: constant(uint256) = 6
OP_MAXIMUM: constant(uint256) = 7
OP_MINIMUM: constant(uint256) = 8
OP_GT: constant(uint256) = 9
OP_GE: constant(uint256) = 10
OP_EQ: constant(uint256) = 11
OP_SELECT: constant(uint256) = 12
OP_ROUND_EVEN: constant(uint256) = 13
OP_LDEXP: constant(uint256) = 14
OP_FREXP_EXP: constant(uint256) = 15
OP_FREXP_MANT: constant(uint256) = 16
BATCH_MAX: constant(uint256) = 512


@external
@pure
def add(a: uint32, b: uint32) -> uint32:
    """
    @notice a + b, correctly rounded (round to nearest, ties to even).
    @dev NaN in -> NaN; inf + -inf -> NaN; exact zero sums are +0 except (-0) + (-0) = -0.
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the sum (canonical NaN for any NaN result).
    """
    return softfloat.add(a, b)


@external
@pure
def sub(a: uint32, b: uint32) -> uint32:
    """
    @notice a - b, correctly rounded (round to nearest, ties to even).
    @dev add(a, -b): x - x = +0, (-0) - (+0) = -0, inf - inf -> NaN.
    @param a Bit pattern of the minuend.
    @param b Bit pattern of the subtrahend.
    @return Bit pattern of the difference (canonical NaN for any NaN result).
    """
    return softfloat.sub(a, b)


@external
@pure
def mul(a: uint32, b: uint32) -> uint32:
    """
    @notice a * b, correctly rounded (round to nearest, ties to even).
    @dev inf * 0 -> NaN; the sign is the XOR of the operand signs, also for zero results.
    @param a Bit pattern of the first factor.
    @param b Bit pattern of the second factor.
    @return Bit pattern of the product (canonical NaN for any NaN result).
    """
    return softfloat.mul(a, b)


@external
@pure
def div(a: uint32, b: uint32) -> uint32:
    """
    @notice a / b, correctly rounded (round to nearest, ties to even).
    @dev 0/0 and inf/inf -> NaN; x/±0 -> ±inf with the XOR sign; finite/inf -> signed zero.
    @param a Bit pattern of the dividend.
    @param b Bit pattern of the divisor.
    @return Bit pattern of the quotient (canonical NaN for any NaN result).
    """
    return softfloat.div(a, b)


@external
@pure
def sqrt(a: uint32) -> uint32:
    """
    @notice Square root, correctly rounded; sqrt(-0) = -0, sqrt(negative) = NaN.
    @dev +inf -> +inf; every other negative input (including -inf) -> NaN.
    @param a Bit pattern of the operand.
    @return Bit pattern of the square root (canonical NaN for any NaN result).
    """
    return softfloat.sqrt(a)


@external
@pure
def neg(a: uint32) -> uint32:
    """
    @notice -a (sign flip); a NaN gives the canonical NaN.
    @dev Pure sign-bit flip for every non-NaN input (including ±0 and ±inf).
    @param a Bit pattern of the operand.
    @return Bit pattern of -a.
    """
    return softfloat.neg(a)


@external
@pure
def abs(a: uint32) -> uint32:
    """
    @notice |a| (sign clear); a NaN gives the canonical NaN.
    @dev Pure sign-bit clear for every non-NaN input (including -0 and -inf).
    @param a Bit pattern of the operand.
    @return Bit pattern of |a|.
    """
    return softfloat.abs(a)


@external
@pure
def maximum(a: uint32, b: uint32) -> uint32:
    """
    @notice IEEE 754-2019 maximum: NaN-propagating, -0 < +0.
    @dev maximum(-0, +0) = +0; any NaN operand -> NaN; otherwise one operand's bits.
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the maximum.
    """
    return softfloat.maximum(a, b)


@external
@pure
def minimum(a: uint32, b: uint32) -> uint32:
    """
    @notice IEEE 754-2019 minimum: NaN-propagating, -0 < +0.
    @dev minimum(-0, +0) = -0; any NaN operand -> NaN; otherwise one operand's bits.
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the minimum.
    """
    return softfloat.minimum(a, b)


@external
@pure
def gt(a: uint32, b: uint32) -> uint32:
    """
    @notice a > b as 1.0 (0x3F800000) or 0.0; NaN compares false.
    @dev gt(+0, -0) = 0.0; gt with a NaN operand = 0.0.
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return 0x3F800000 or 0.
    """
    return softfloat.gt(a, b)


@external
@pure
def ge(a: uint32, b: uint32) -> uint32:
    """
    @notice a >= b as 1.0 (0x3F800000) or 0.0; NaN compares false.
    @dev ge(-0, +0) = 1.0; ge with a NaN operand = 0.0.
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return 0x3F800000 or 0.
    """
    return softfloat.ge(a, b)


@external
@pure
def eq(a: uint32, b: uint32) -> uint32:
    """
    @notice a == b as 1.0 (0x3F800000) or 0.0; NaN compares false, -0 == +0.
    @dev eq(-0, +0) = 1.0; eq(NaN, NaN) = 0.0.
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return 0x3F800000 or 0.
    """
    return softfloat.eq(a, b)


@external
@pure
def select(c: uint32, a: uint32, b: uint32) -> uint32:
    """
    @notice `a` if `c` is not ±0 (a NaN `c` selects `a`), else `b`; NaN canonicalised.
    @dev The chosen operand's bits are returned as is, except that a NaN is canonical.
    @param c Bit pattern of the condition.
    @param a Bit pattern chosen when `c` is not ±0.
    @param b Bit pattern chosen when `c` is ±0.
    @return Bit pattern of the chosen operand.
    """
    return softfloat.select(c, a, b)


@external
@pure
def round_even(a: uint32) -> uint32:
    """
    @notice Round to integral, ties to even (numpy.rint); keeps the sign of zero results.
    @dev round_even(-0.4) = -0.0, round_even(2.5) = 2.0; ±inf unchanged; NaN -> NaN.
    @param a Bit pattern of the operand.
    @return Bit pattern of the rounded value.
    """
    return softfloat.round_even(a)


@external
@pure
def ldexp(a: uint32, n: uint32) -> uint32:
    """
    @notice a * 2**n correctly rounded; `n` must be a float32 holding a finite integer, else
            the result is NaN.
    @dev NaN if a is NaN or n is NaN, ±inf or fractional; ±0, ±inf returned unchanged; one
         rounding (gradual underflow, overflow to inf); |n| saturates at 512.
    @param a Bit pattern of the value.
    @param n Bit pattern of the integral exponent.
    @return Bit pattern of a * 2**n.
    """
    return softfloat.ldexp(a, n)


@external
@pure
def frexp_exp(a: uint32) -> uint32:
    """
    @notice Exponent of numpy.frexp(a) as a float32 (0.0 for ±0, ±inf, NaN).
    @dev For finite nonzero a, the exponent is in [-148, 128] (exact in float32).
    @param a Bit pattern of the operand.
    @return Bit pattern of the exponent.
    """
    return softfloat.frexp_exp(a)


@external
@pure
def frexp_mant(a: uint32) -> uint32:
    """
    @notice Mantissa of numpy.frexp(a), 0.5 <= |m| < 1 (±0, ±inf kept; NaN canonical).
    @dev Subnormal inputs are normalised exactly; the mantissa keeps a's sign.
    @param a Bit pattern of the operand.
    @return Bit pattern of the mantissa.
    """
    return softfloat.frexp_mant(a)


@external
@pure
def batch(
    op: uint256,
    a: DynArray[uint32, BATCH_MAX],
    b: DynArray[uint32, BATCH_MAX],
    c: DynArray[uint32, BATCH_MAX],
) -> DynArray[uint32, BATCH_MAX]:
    """
    @notice Evaluate one primitive elementwise over arrays (testing and off-chain cross-checks).
    @dev `op` is an OP_* code (0 add, 1 sub, 2 mul, 3 div, 4 sqrt, 5 neg, 6 abs, 7 maximum,
         8 minimum, 9 gt, 10 ge, 11 eq, 12 select, 13 round_even, 14 ldexp, 15 frexp_exp,
         16 frexp_mant). Operands a primitive does not use are ignored and may be empty; the
         used ones must be as long as `a` (select reads `a` as the condition, `b` and `c` as
         the choices). Reverts with "unknown op" or "length of b"/"length of c".
    @param op The primitive's OP_* code.
    @param a First operands.
    @param b Second operands (ignored by unary primitives).
    @param c Third operands (select only).
    @return The results, one per element of `a`.
    """
    n: uint256 = len(a)
    out: DynArray[uint32, BATCH_MAX] = []
    if op == OP_SQRT or op == OP_NEG or op == OP_ABS or op >= OP_ROUND_EVEN and op != OP_LDEXP:
        assert op <= OP_FREXP_MANT, "unknown op"
        for i: uint256 in range(n, bound=BATCH_MAX):
            x: uint32 = a[i]
            if op == OP_SQRT:
                out.append(softfloat.sqrt(x))
            elif op == OP_NEG:
                out.append(softfloat.neg(x))
            elif op == OP_ABS:
                out.append(softfloat.abs(x))
            elif op == OP_ROUND_EVEN:
                out.append(softfloat.round_even(x))
            elif op == OP_FREXP_EXP:
                out.append(softfloat.frexp_exp(x))
            else:
                out.append(softfloat.frexp_mant(x))
        return out
    assert len(b) == n, "length of b"
    if op == OP_SELECT:
        assert len(c) == n, "length of c"
        for i: uint256 in range(n, bound=BATCH_MAX):
            out.append(softfloat.select(a[i], b[i], c[i]))
        return out
    for i: uint256 in range(n, bound=BATCH_MAX):
        x: uint32 = a[i]
        y: uint32 = b[i]
        if op == OP_ADD:
            out.append(softfloat.add(x, y))
        elif op == OP_SUB:
            out.append(softfloat.sub(x, y))
        elif op == OP_MUL:
            out.append(softfloat.mul(x, y))
        elif op == OP_DIV:
            out.append(softfloat.div(x, y))
        elif op == OP_MAXIMUM:
            out.append(softfloat.maximum(x, y))
        elif op == OP_MINIMUM:
            out.append(softfloat.minimum(x, y))
        elif op == OP_GT:
            out.append(softfloat.gt(x, y))
        elif op == OP_GE:
            out.append(softfloat.ge(x, y))
        elif op == OP_EQ:
            out.append(softfloat.eq(x, y))
        else:
            out.append(softfloat.ldexp(x, y))
    return out
