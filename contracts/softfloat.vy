# pragma version ~=0.4.3
"""
@title softfloat
@license Apache-2.0
@notice IEEE 754 binary32 arithmetic on raw bit patterns (`uint32`), bit-exact.
@dev This is a Vyper module: `import softfloat` and call `softfloat.add(a, b)` etc.
     (Named softfloat, not float32, so that it does not collide with the deployable wrapper
     contracts/Float32.vy on case-insensitive file systems.)
     It defines the one-step verdict of the dispute game (DESIGN.md section 4.3), so every
     result is defined bit for bit:

     - round-to-nearest, ties-to-even, for every operation that rounds;
     - subnormals are kept on input and output (no flush-to-zero, no denormals-are-zero);
     - signed zeros per IEEE 754: x + (-x) = +0, (-0) + (-0) = -0, sqrt(-0) = -0, and the
       sign of a zero product or quotient is the XOR of the operand signs;
     - every NaN result is the canonical quiet NaN `0x7FC00000`, whatever the sign and payload
       of the NaN operand(s). This includes neg, abs and select: no operation ever returns a
       non-canonical NaN bit pattern;
     - maximum/minimum are IEEE 754-2019 `maximum`/`minimum`: NaN-propagating, -0 < +0;
     - comparisons gt/ge/eq return 1.0 (`0x3F800000`) or +0.0 (`0`); any NaN compares false,
       and -0 == +0.

     Internal representation: a finite value is `(-1)**sign * m * 2**e` with an integer
     significand `m` (a `uint256`) and exponent `e` (an `int256`). `_unpack` produces it from a
     bit pattern; every rounding happens in the single function `_round` (nearest-even to a
     multiple of `2**q`, `q = max(msb(m) + e - 23, qmin)`), and `_pack` turns the rounded value
     back into bits (subnormal/normal/overflow-to-infinity). Where `m` cannot hold the exact
     result (inexact div and sqrt; add of operands more than 40 binades apart), the discarded
     part is summarised by a sticky 1 ORed into bit 0 of `m`, strictly below the rounding
     position. mul, ldexp, round_even, frexp and nearer adds round exact significands.
"""

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# canonical quiet NaN returned by every operation whose result is NaN
NAN: constant(uint32) = 2143289344  # 0x7FC00000
# +infinity bit pattern, also the threshold: (x & ABS_MASK) > INF_BITS  <=>  x is NaN
INF_BITS: constant(uint256) = 2139095040  # 0x7F800000
# 1.0, the value of a true comparison
ONE: constant(uint32) = 1065353216  # 0x3F800000
# 1 typed as uint256, for variable shifts (`UNIT << s`)
UNIT: constant(uint256) = 1
SIGN_BIT: constant(uint256) = 2147483648  # 0x80000000
ABS_MASK: constant(uint256) = 2147483647  # 0x7FFFFFFF
FRAC_MASK: constant(uint256) = 8388607  # 0x7FFFFF
HIDDEN_BIT: constant(uint256) = 8388608  # 0x800000
# 2**23 as a float32 (0x4B000000): every float32 with |x| >= 2**23 is an integer (or inf)
TWO_POW_23_BITS: constant(uint256) = 1258291200
# exponent of the least significant bit of a subnormal (and of the smallest normal binade)
EMIN_LSB: constant(int256) = -149
# ldexp saturates |n| to this: 2**-149 * 2**512 overflows, (2**128) * 2**-512 rounds to 0
LDEXP_SAT: constant(int256) = 512
# align at most this many bits in add; beyond it the smaller operand only acts as a sticky bit
ADD_ALIGN_MAX: constant(int256) = 40
# extra quotient bits in div: q = (ma << 64) // mb has at least 40 significant bits
DIV_SHIFT: constant(uint256) = 64
# extra radicand bits in sqrt (even): isqrt(m << 64) has at least 32 significant bits
SQRT_SHIFT: constant(uint256) = 64


# ---------------------------------------------------------------------------------------------
# Core: unpack, bit length, the one rounding function, pack
# ---------------------------------------------------------------------------------------------


@internal
@pure
def _unpack(x: uint256) -> (uint256, int256, uint256):
    """
    @notice Split a finite binary32 bit pattern into sign, exponent and integer significand.
    @dev The value is `(-1)**sign * m * 2**e`; for subnormals and zeros `e = -149` and
         `m < 2**23`, for normals `e = E - 150` and `2**23 <= m < 2**24`. The caller must
         have handled inf and NaN (exponent field 255) before.
    @param x A binary32 bit pattern (< 2**32) that is neither inf nor NaN.
    @return sign (0 or 1), exponent of the least significant bit of `m`, and `m`.
    """
    s: uint256 = x >> 31
    biased: uint256 = (x >> 23) & 255
    m: uint256 = x & FRAC_MASK
    if biased == 0:
        return s, EMIN_LSB, m
    return s, unsafe_sub(convert(biased, int256), 150), m | HIDDEN_BIT


@internal
@pure
def _bitlen(x: uint256) -> uint256:
    """
    @notice Number of significant bits of `x` (0 for 0), i.e. floor(log2(x)) + 1.
    @dev Binary search; valid for `x < 2**128`, which holds for every significand built here
         (the widest is the div quotient, below 2**88).
    @param x The integer, below 2**128.
    @return The bit length of `x`.
    """
    y: uint256 = x
    n: uint256 = 0
    if y >= 18446744073709551616:  # 2**64
        y = y >> 64
        n = 64
    if y >= 4294967296:  # 2**32
        y = y >> 32
        n = unsafe_add(n, 32)
    if y >= 65536:  # 2**16
        y = y >> 16
        n = unsafe_add(n, 16)
    if y >= 256:
        y = y >> 8
        n = unsafe_add(n, 8)
    if y >= 16:
        y = y >> 4
        n = unsafe_add(n, 4)
    if y >= 4:
        y = y >> 2
        n = unsafe_add(n, 2)
    if y >= 2:
        return unsafe_add(n, 2)
    return unsafe_add(n, y)


@internal
@pure
def _round(e: int256, m: uint256, qmin: int256) -> (uint256, int256):
    """
    @notice Round `m * 2**e` to nearest, ties to even, keeping at most 24 significant bits and
            no bit below `2**qmin`. This is the only place where rounding happens.
    @dev The result is `kept * 2**q` with `q = max(e + bitlen(m) - 24, qmin)`. With
         `qmin = -149` this is binary32 rounding (subnormals included; no exponent upper
         bound: `_pack` maps too-large results to infinity). With `qmin = 0` it is rounding to
         an integer (used by `round_even`). A sticky bit may be ORed into bit 0 of `m` by the
         caller, provided bit 0 is below the rounding (guard) position, which every caller
         guarantees by keeping at least 26 significant bits when it does so.
         If `q > qmin` then `2**23 <= kept <= 2**24` (2**24 after a carry); if `q == qmin`,
         `kept <= 2**24`.
    @param e Exponent of the least significant bit of `m`; `|e| < 2**200`.
    @param m Integer significand, `m < 2**128`.
    @param qmin Smallest allowed exponent of the result's least significant bit.
    @return kept The rounded significand.
    @return q The exponent of the least significant bit of `kept`.
    """
    q: int256 = unsafe_sub(unsafe_add(e, convert(self._bitlen(m), int256)), 24)
    if q < qmin:
        q = qmin
    if q <= e:
        # exact: the value already fits, only left-align to exponent q
        return m << convert(unsafe_sub(e, q), uint256), q
    s: uint256 = convert(unsafe_sub(q, e), uint256)
    if s > 200:
        # m < 2**128 <= 2**199 = half: rounds to 0 like any larger shift would
        s = 200
    kept: uint256 = m >> s
    rem: uint256 = unsafe_sub(m, kept << s)
    half: uint256 = UNIT << unsafe_sub(s, 1)
    if rem > half or (rem == half and kept & 1 == 1):
        kept = unsafe_add(kept, 1)
    return kept, q


@internal
@pure
def _pack(s: uint256, e: int256, m: uint256) -> uint32:
    """
    @notice The binary32 bit pattern of `(-1)**s * m * 2**e`, correctly rounded (RNE).
    @dev Rounds with `_round(e, m, -149)`, then packs `kept * 2**q` as
         `((q + 149) << 23) + kept`: for a normal result `kept` carries the hidden bit into
         the exponent field (a rounding carry to `2**24` bumps the exponent), for a subnormal
         result `q = -149` and `kept < 2**23` (`kept == 2**23` is the smallest normal). Any
         pattern at or above `0x7F800000` overflows to infinity. A zero result keeps sign `s`.
    @param s Sign bit, 0 or 1.
    @param e Exponent of the least significant bit of `m`.
    @param m Integer significand (`< 2**128`), possibly with a sticky bit in bit 0.
    @return The rounded binary32 bit pattern.
    """
    kept: uint256 = 0
    q: int256 = 0
    kept, q = self._round(e, m, EMIN_LSB)
    if kept == 0:
        return convert(s << 31, uint32)
    bits: uint256 = unsafe_add(convert(unsafe_sub(q, EMIN_LSB), uint256) << 23, kept)
    if bits >= INF_BITS:
        bits = INF_BITS
    return convert(bits | (s << 31), uint32)


@internal
@pure
def _canon(x: uint32) -> uint32:
    """
    @notice Return `x` unchanged unless it is a NaN, in which case the canonical NaN.
    @dev NaN test: exponent field all ones and fraction non-zero, i.e. `|x| > 0x7F800000`.
    @param x A binary32 bit pattern.
    @return `x`, or `0x7FC00000` if `x` is any NaN.
    """
    if convert(x, uint256) & ABS_MASK > INF_BITS:
        return NAN
    return x


@internal
@pure
def _key(x: uint256) -> int256:
    """
    @notice An integer that orders non-NaN floats by value, with -0 == +0.
    @dev Sign-magnitude to two's complement: the magnitude bits order non-negative floats, so
         negating them for negative floats orders the whole line (used by gt/ge).
    @param x A binary32 bit pattern that is not a NaN.
    @return `|x|`'s bit pattern, negated for a negative sign (so both zeros map to 0).
    """
    mag: int256 = convert(x & ABS_MASK, int256)
    if x >= SIGN_BIT:
        return -mag
    return mag


@internal
@pure
def _total_key(x: uint256) -> int256:
    """
    @notice An integer that orders non-NaN floats by value, with -0 < +0.
    @dev Like `_key` but negative floats map to `-|x| - 1`, so -0 (-1) sorts below +0 (0);
         this is the IEEE 754-2019 maximum/minimum order (used by maximum/minimum).
    @param x A binary32 bit pattern that is not a NaN.
    @return `|x|`'s bit pattern, or `-|x| - 1` for a negative sign (-0 maps to -1).
    """
    mag: int256 = convert(x & ABS_MASK, int256)
    if x >= SIGN_BIT:
        return unsafe_sub(-1, mag)
    return mag


# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------


@internal
@pure
def add(a: uint32, b: uint32) -> uint32:
    """
    @notice a + b, correctly rounded (RNE).
    @dev NaN in -> NaN; inf + -inf -> NaN; inf + finite -> that inf. Exact zero sums are +0
         except (-0) + (-0) = -0. The operands are ordered by magnitude so the aligned
         difference is never negative. If the exponents differ by more than 40, the smaller
         operand lies entirely below half an ulp of the result's finest possible binade, so it
         is replaced by a sticky 1 at alignment 40 (same rounding, 64-bit arithmetic).
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the rounded sum.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    ax: uint256 = x & ABS_MASK
    ay: uint256 = y & ABS_MASK
    if ax > INF_BITS or ay > INF_BITS:
        return NAN
    if ax == INF_BITS:
        if ay == INF_BITS and x != y:
            return NAN
        return a
    if ay == INF_BITS:
        return b
    if ay > ax:
        t: uint256 = x
        x = y
        y = t
    sx: uint256 = 0
    ex: int256 = 0
    mx: uint256 = 0
    sy: uint256 = 0
    ey: int256 = 0
    my: uint256 = 0
    sx, ex, mx = self._unpack(x)
    sy, ey, my = self._unpack(y)
    d: int256 = unsafe_sub(ex, ey)
    if d > ADD_ALIGN_MAX:
        # |x| is normal (ex > -109) and |y| < 2**(ex - 17), far below a quarter ulp of any
        # result: a sticky bit stands for it (for round-to-nearest it could even be dropped)
        d = ADD_ALIGN_MAX
        if my != 0:
            my = 1
    big: uint256 = mx << convert(d, uint256)
    if sx == sy:
        return self._pack(sx, unsafe_sub(ex, d), unsafe_add(big, my))
    diff: uint256 = unsafe_sub(big, my)  # |x| >= |y| so big >= my
    if diff == 0:
        return 0  # exact cancellation is +0 in round-to-nearest
    return self._pack(sx, unsafe_sub(ex, d), diff)


@internal
@pure
def sub(a: uint32, b: uint32) -> uint32:
    """
    @notice a - b, correctly rounded (RNE).
    @dev Defined as `add(a, b with its sign bit flipped)`; a NaN `b` stays NaN, so the result
         is the canonical NaN as for add. x - x = +0.
    @param a Bit pattern of the minuend.
    @param b Bit pattern of the subtrahend.
    @return Bit pattern of the rounded difference.
    """
    return self.add(a, b ^ 2147483648)


@internal
@pure
def mul(a: uint32, b: uint32) -> uint32:
    """
    @notice a * b, correctly rounded (RNE).
    @dev NaN in -> NaN; inf * 0 -> NaN; inf * nonzero -> inf; the sign is always the XOR of
         the operand signs (so zero products are signed). The 48-bit product is exact.
    @param a Bit pattern of the first factor.
    @param b Bit pattern of the second factor.
    @return Bit pattern of the rounded product.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    ax: uint256 = x & ABS_MASK
    ay: uint256 = y & ABS_MASK
    if ax > INF_BITS or ay > INF_BITS:
        return NAN
    s: uint256 = (x ^ y) >> 31
    if ax == INF_BITS or ay == INF_BITS:
        if ax == 0 or ay == 0:
            return NAN
        return convert(INF_BITS | (s << 31), uint32)
    sx: uint256 = 0
    ex: int256 = 0
    mx: uint256 = 0
    sy: uint256 = 0
    ey: int256 = 0
    my: uint256 = 0
    sx, ex, mx = self._unpack(x)
    sy, ey, my = self._unpack(y)
    return self._pack(s, unsafe_add(ex, ey), unsafe_mul(mx, my))


@internal
@pure
def div(a: uint32, b: uint32) -> uint32:
    """
    @notice a / b, correctly rounded (RNE).
    @dev NaN in -> NaN; inf/inf and 0/0 -> NaN; inf/finite -> inf; finite/inf -> 0;
         nonzero/0 -> inf; the sign is the XOR of the operand signs (x/(-0) = -inf for x > 0).
         Quotient `q = (ma << 64) // mb` has at least 40 significant bits (even for
         subnormal operands), and the remainder gives a sticky bit ORed into bit 0.
    @param a Bit pattern of the dividend.
    @param b Bit pattern of the divisor.
    @return Bit pattern of the rounded quotient.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    ax: uint256 = x & ABS_MASK
    ay: uint256 = y & ABS_MASK
    if ax > INF_BITS or ay > INF_BITS:
        return NAN
    s: uint256 = (x ^ y) >> 31
    if ax == INF_BITS:
        if ay == INF_BITS:
            return NAN
        return convert(INF_BITS | (s << 31), uint32)
    if ay == INF_BITS:
        return convert(s << 31, uint32)
    if ay == 0:
        if ax == 0:
            return NAN
        return convert(INF_BITS | (s << 31), uint32)
    sx: uint256 = 0
    ex: int256 = 0
    mx: uint256 = 0
    sy: uint256 = 0
    ey: int256 = 0
    my: uint256 = 0
    sx, ex, mx = self._unpack(x)
    sy, ey, my = self._unpack(y)
    num: uint256 = mx << DIV_SHIFT
    quo: uint256 = unsafe_div(num, my)
    if unsafe_mul(quo, my) != num:
        quo = quo | 1
    return self._pack(s, unsafe_sub(unsafe_sub(ex, ey), convert(DIV_SHIFT, int256)), quo)


@internal
@pure
def sqrt(a: uint32) -> uint32:
    """
    @notice Square root, correctly rounded (RNE).
    @dev NaN -> NaN; -0 -> -0; +0 -> +0; +inf -> +inf; any other negative -> NaN.
         The exponent is made even, the significand scaled by 2**64, the integer square root
         taken (Vyper's `isqrt`, exact floor) and a sticky bit set if it is not exact; the
         root has at least 32 significant bits, so bit 0 is below the rounding position.
    @param a Bit pattern of the operand.
    @return Bit pattern of the rounded square root.
    """
    x: uint256 = convert(a, uint256)
    ax: uint256 = x & ABS_MASK
    if ax > INF_BITS:
        return NAN
    if ax == 0:
        return a
    if x >= SIGN_BIT:
        return NAN
    if x == INF_BITS:
        return a
    s: uint256 = 0
    e: int256 = 0
    m: uint256 = 0
    s, e, m = self._unpack(x)
    if e % 2 != 0:
        m = m << 1
        e = unsafe_sub(e, 1)
    n: uint256 = m << SQRT_SHIFT
    r: uint256 = isqrt(n)
    if unsafe_mul(r, r) != n:
        r = r | 1
    # e - SQRT_SHIFT is even: halve it exactly (arithmetic shift)
    return self._pack(0, unsafe_sub(e, convert(SQRT_SHIFT, int256)) >> 1, r)


# ---------------------------------------------------------------------------------------------
# Sign operations, comparisons, selection
# ---------------------------------------------------------------------------------------------


@internal
@pure
def neg(a: uint32) -> uint32:
    """
    @notice -a: flips the sign bit.
    @dev A NaN input gives the canonical NaN (not a sign-flipped NaN), like every NaN result.
    @param a Bit pattern of the operand.
    @return `a ^ 0x80000000`, or `0x7FC00000` if `a` is a NaN.
    """
    x: uint256 = convert(a, uint256)
    if x & ABS_MASK > INF_BITS:
        return NAN
    return convert(x ^ SIGN_BIT, uint32)


@internal
@pure
def abs(a: uint32) -> uint32:
    """
    @notice |a|: clears the sign bit.
    @dev A NaN input gives the canonical NaN, like every NaN result.
    @param a Bit pattern of the operand.
    @return `a & 0x7FFFFFFF`, or `0x7FC00000` if `a` is a NaN.
    """
    mag: uint256 = convert(a, uint256) & ABS_MASK
    if mag > INF_BITS:
        return NAN
    return convert(mag, uint32)


@internal
@pure
def maximum(a: uint32, b: uint32) -> uint32:
    """
    @notice IEEE 754-2019 maximum(a, b).
    @dev NaN if either operand is NaN (canonical); otherwise the larger, with -0 < +0, so
         maximum(-0, +0) = maximum(+0, -0) = +0. The result is one of the operands' bits.
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the maximum.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    if x & ABS_MASK > INF_BITS or y & ABS_MASK > INF_BITS:
        return NAN
    if self._total_key(x) >= self._total_key(y):
        return a
    return b


@internal
@pure
def minimum(a: uint32, b: uint32) -> uint32:
    """
    @notice IEEE 754-2019 minimum(a, b).
    @dev NaN if either operand is NaN (canonical); otherwise the smaller, with -0 < +0, so
         minimum(-0, +0) = minimum(+0, -0) = -0. The result is one of the operands' bits.
    @param a Bit pattern of the first operand.
    @param b Bit pattern of the second operand.
    @return Bit pattern of the minimum.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    if x & ABS_MASK > INF_BITS or y & ABS_MASK > INF_BITS:
        return NAN
    if self._total_key(x) <= self._total_key(y):
        return a
    return b


@internal
@pure
def gt(a: uint32, b: uint32) -> uint32:
    """
    @notice a > b as a float: 1.0 or 0.0.
    @dev Any NaN operand gives 0.0; -0 and +0 are equal (so gt(+0, -0) = 0.0).
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return `0x3F800000` (1.0) if a > b, else `0` (+0.0).
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    if x & ABS_MASK > INF_BITS or y & ABS_MASK > INF_BITS:
        return 0
    if self._key(x) > self._key(y):
        return ONE
    return 0


@internal
@pure
def ge(a: uint32, b: uint32) -> uint32:
    """
    @notice a >= b as a float: 1.0 or 0.0.
    @dev Any NaN operand gives 0.0; -0 and +0 are equal (so ge(-0, +0) = 1.0).
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return `0x3F800000` (1.0) if a >= b, else `0` (+0.0).
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    if x & ABS_MASK > INF_BITS or y & ABS_MASK > INF_BITS:
        return 0
    if self._key(x) >= self._key(y):
        return ONE
    return 0


@internal
@pure
def eq(a: uint32, b: uint32) -> uint32:
    """
    @notice a == b as a float: 1.0 or 0.0.
    @dev Any NaN operand gives 0.0 (NaN != NaN); -0 == +0 gives 1.0.
    @param a Bit pattern of the left operand.
    @param b Bit pattern of the right operand.
    @return `0x3F800000` (1.0) if a == b, else `0` (+0.0).
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(b, uint256)
    if x & ABS_MASK > INF_BITS or y & ABS_MASK > INF_BITS:
        return 0
    if x == y or (x | y) & ABS_MASK == 0:
        return ONE
    return 0


@internal
@pure
def select(c: uint32, a: uint32, b: uint32) -> uint32:
    """
    @notice `a` where the condition `c` is not ±0, else `b` (elementwise SELECT).
    @dev The condition is a float: +0.0 and -0.0 select `b`; every other pattern selects `a`,
         including a NaN `c` (a NaN is "not ±0"). The chosen operand is returned unchanged,
         except that a NaN is returned as the canonical NaN.
    @param c Bit pattern of the condition.
    @param a Bit pattern taken when `c` is not ±0.
    @param b Bit pattern taken when `c` is ±0.
    @return Bit pattern of the chosen operand (NaN canonicalised).
    """
    if convert(c, uint256) & ABS_MASK != 0:
        return self._canon(a)
    return self._canon(b)


# ---------------------------------------------------------------------------------------------
# Rounding to integral, scaling and decomposition
# ---------------------------------------------------------------------------------------------


@internal
@pure
def round_even(a: uint32) -> uint32:
    """
    @notice Round to an integral value, ties to even (IEEE roundToIntegralTiesToEven, like
            numpy.rint); the result is a float32.
    @dev NaN -> NaN; ±inf, ±0 and |a| >= 2**23 (already integral) unchanged. Otherwise
         `_round` with `qmin = 0` rounds to an integer and `_pack` re-encodes it exactly; a
         zero result keeps the sign of `a` (rint(-0.4) = -0.0, rint(-0.5) = -0.0).
    @param a Bit pattern of the operand.
    @return Bit pattern of the rounded integral value.
    """
    x: uint256 = convert(a, uint256)
    ax: uint256 = x & ABS_MASK
    if ax > INF_BITS:
        return NAN
    if ax >= TWO_POW_23_BITS:
        return a
    s: uint256 = 0
    e: int256 = 0
    m: uint256 = 0
    s, e, m = self._unpack(x)
    kept: uint256 = 0
    q: int256 = 0
    kept, q = self._round(e, m, 0)
    return self._pack(s, 0, kept)


@internal
@pure
def ldexp(a: uint32, n: uint32) -> uint32:
    """
    @notice a * 2**n, correctly rounded (RNE), where `n` is a float32 holding an integer.
    @dev NaN if `a` is NaN or if `n` is not a finite integer (NaN, ±inf, or has a fractional
         part) -- this check comes first, so e.g. ldexp(inf, 0.5) and ldexp(0, NaN) are NaN.
         Otherwise ±inf and ±0 are returned unchanged, and a finite nonzero `a` is scaled with
         a single rounding (gradual underflow, overflow to inf). |n| is saturated at 512,
         which changes nothing: any nonzero finite a * 2**512 overflows and a * 2**-512
         rounds to ±0.
    @param a Bit pattern of the value to scale.
    @param n Bit pattern of the (integral) exponent.
    @return Bit pattern of the rounded a * 2**n.
    """
    x: uint256 = convert(a, uint256)
    y: uint256 = convert(n, uint256)
    ax: uint256 = x & ABS_MASK
    ay: uint256 = y & ABS_MASK
    if ax > INF_BITS or ay >= INF_BITS:
        return NAN
    k: int256 = 0
    if ay >= TWO_POW_23_BITS:
        k = LDEXP_SAT
    elif ay != 0:
        sn: uint256 = 0
        en: int256 = 0
        mn: uint256 = 0
        sn, en, mn = self._unpack(y)
        sh: uint256 = convert(-en, uint256)  # 1 <= sh <= 149 since 0 < |n| < 2**23
        kn: uint256 = mn >> sh
        if kn << sh != mn:
            return NAN
        k = convert(kn, int256)
        if k > LDEXP_SAT:
            k = LDEXP_SAT
    if y >= SIGN_BIT:
        k = -k
    if ax == INF_BITS or ax == 0:
        return a
    s: uint256 = 0
    e: int256 = 0
    m: uint256 = 0
    s, e, m = self._unpack(x)
    return self._pack(s, unsafe_add(e, k), m)


@internal
@pure
def frexp_exp(a: uint32) -> uint32:
    """
    @notice The exponent `e` of `a = m * 2**e` with 0.5 <= |m| < 1 (C/numpy frexp), as a
            float32.
    @dev Follows numpy.frexp on float32: for ±0, ±inf and NaN the exponent is 0, returned as
         +0.0. For finite nonzero `a`, e is in [-148, 128] and is exactly representable.
    @param a Bit pattern of the operand.
    @return Bit pattern of the float32 value of the exponent.
    """
    x: uint256 = convert(a, uint256)
    ax: uint256 = x & ABS_MASK
    if ax >= INF_BITS or ax == 0:
        return 0
    s: uint256 = 0
    e: int256 = 0
    m: uint256 = 0
    s, e, m = self._unpack(x)
    ex: int256 = unsafe_add(e, convert(self._bitlen(m), int256))
    if ex < 0:
        return self._pack(1, 0, convert(-ex, uint256))
    return self._pack(0, 0, convert(ex, uint256))


@internal
@pure
def frexp_mant(a: uint32) -> uint32:
    """
    @notice The mantissa `m` of `a = m * 2**e` with 0.5 <= |m| < 1 (C/numpy frexp), as a
            float32 with the sign of `a`.
    @dev Follows numpy.frexp on float32: ±0 -> ±0 (sign kept), ±inf -> ±inf, NaN -> the
         canonical NaN. Subnormal inputs are normalised (exact: m has at most 24 bits).
    @param a Bit pattern of the operand.
    @return Bit pattern of the mantissa.
    """
    x: uint256 = convert(a, uint256)
    ax: uint256 = x & ABS_MASK
    if ax > INF_BITS:
        return NAN
    if ax == INF_BITS or ax == 0:
        return a
    s: uint256 = 0
    e: int256 = 0
    m: uint256 = 0
    s, e, m = self._unpack(x)
    return self._pack(s, -convert(self._bitlen(m), int256), m)
