# pragma version ~=0.4.3
# pragma experimental-codegen
"""
@title One-step executor of the canonical IR
@license Apache-2.0
@notice The last step of the dispute game: ONE binary32 operation of one op, executed here
        bit for bit (docs/protocol.md §3.3, §3.7). `element` computes one output element of
        an element op from its operand values; `partial_step` computes one sequential partial
        `acc_{r+1}` of a REDUCE_SUM / REDUCE_MAX / MATMUL from `acc_r` and the r-th term's
        operand values; `initial_acc` gives `acc_0`. The decoding helpers and
        `operand_index` (§3.4, §3.5) expose `descriptor.vy` for tests and off-chain callers.
@dev Stateless and pure. The caller (the dispute game) proves the descriptor against
     `program_root` and the operand values against the pre-state; this contract only
     computes. Descriptors are validated off-chain before a job is accepted
     (protocol.ir.validate_program), so nothing here re-validates fields beyond what the
     computation needs: the length (128 bytes) and the opcode class. Every NaN result is the
     canonical `0x7FC00000` (softfloat.vy), except FILL, which returns its immediate verbatim
     (the validator only admits the canonical NaN there). Compiled with Vyper's Venom
     backend (experimental-codegen: about 20% less gas than the legacy backend here). Reverts
     carry reason strings ("executor: ...") rather than `# dev:` comments: Venom merges
     identical revert blocks, so a `# dev:` comment is not resolved reliably from its
     source map.
"""

from interfaces import IExecutor

import descriptor
import softfloat

implements: IExecutor

# -inf, acc_0 of REDUCE_MAX
NEG_INF: constant(uint32) = 4286578688  # 0xFF800000
_M32: constant(uint256) = 4294967295

# Gas: `element`, `partial_step` and `initial_acc` read the header word with `extract32`
# themselves (opcode: bits 248-255, imm: bits 192-223, the layout of descriptor.vy and §3.5)
# instead of calling descriptor.vy's helpers, and do not go through an internal function:
# every internal call that takes the Bytes[128] copies it, about 40-80 gas per copy, and the
# helpers nest two calls. tests/test_executor.py checks both paths against protocol/ir.py.


@external
@pure
def element(
    desc: Bytes[descriptor.DESCRIPTOR_BYTES], x: uint32, y: uint32, c: uint32
) -> uint32:
    """
    @notice One output element of an element op: `x`, `y`, `c` are the values of operands
            0, 1, 2 at that element (§3.4); operands the op does not read are ignored.
    @dev Binary ops (ADD..LDEXP) compute f(x, y); unary ops (NEG..COPY) f(x), COPY returning
         `x` with a NaN made canonical; SELECT returns `y` if `x` is not ±0 (a NaN `x` counts
         as non-zero) else `c`, NaN canonical; FILL returns its immediate. Reverts for
         reductions/MATMUL (use `partial_step`), LOAD_BATCH and FREE (decided on whole slot
         values, never per element) and unknown opcodes.
    @param desc The op's 128-byte descriptor (§3.5).
    @param x Bit pattern of operand 0's element.
    @param y Bit pattern of operand 1's element.
    @param c Bit pattern of operand 2's element.
    @return Bit pattern of the output element.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    w0: uint256 = extract32(desc, 0, output_type=uint256)
    op: uint256 = w0 >> 248
    if op < descriptor.NEG:
        # binary, 0x01..0x0A
        if op < descriptor.MAX:
            if op == descriptor.ADD:
                return softfloat.add(x, y)
            if op == descriptor.SUB:
                return softfloat.sub(x, y)
            if op == descriptor.MUL:
                return softfloat.mul(x, y)
            if op == descriptor.DIV:
                return softfloat.div(x, y)
        else:
            if op == descriptor.MAX:
                return softfloat.maximum(x, y)
            if op == descriptor.MIN:
                return softfloat.minimum(x, y)
            if op == descriptor.GT:
                return softfloat.gt(x, y)
            if op == descriptor.GE:
                return softfloat.ge(x, y)
            if op == descriptor.EQ:
                return softfloat.eq(x, y)
            if op == descriptor.LDEXP:
                return softfloat.ldexp(x, y)
    elif op < descriptor.SELECT:
        # unary, 0x10..0x16
        if op == descriptor.NEG:
            return softfloat.neg(x)
        if op == descriptor.ABS:
            return softfloat.abs(x)
        if op == descriptor.SQRT:
            return softfloat.sqrt(x)
        if op == descriptor.ROUND:
            return softfloat.round_even(x)
        if op == descriptor.FREXP_EXP:
            return softfloat.frexp_exp(x)
        if op == descriptor.FREXP_MANT:
            return softfloat.frexp_mant(x)
        if op == descriptor.COPY:
            return softfloat._canon(x)
    elif op == descriptor.SELECT:
        return softfloat.select(x, y, c)
    elif op == descriptor.FMA:
        return softfloat.fma(x, y, c)
    elif op == descriptor.GATHER:
        # x: the index element; y: the table element of the row it selects (ignored if none)
        if self._row_of(x, (w0 >> 160) & _M32) == 0:
            return 0
        return softfloat._canon(y)
    elif op == descriptor.FILL:
        return convert((w0 >> 192) & _M32, uint32)
    raise "executor: not an element op"


@external
@pure
def partial_step(
    desc: Bytes[descriptor.DESCRIPTOR_BYTES], f: uint256, acc: uint32, x: uint32, y: uint32
) -> uint32:
    """
    @notice One sequential partial of a reduction (§3.7): `acc_{r+1}` from `acc_r` and the
            values `x`, `y` of operands 0 and 1 at term `r`, for output element `f`.
    @dev REDUCE_SUM: acc + x; REDUCE_MAX: IEEE 754-2019 maximum(acc, x); MATMUL:
         fma(x, y, acc), the exact product added with one rounding; INDEX_ADD: acc + y if
         the index `x` is the integral value i_0 (the first output index of `f`), else
         acc + 0.0 (which is acc itself in a chain: a sum that starts at +0.0 is never -0.0). `f` is used by
         INDEX_ADD only, `y` by MATMUL and INDEX_ADD. Reverts for every other opcode.
    @param desc The op's 128-byte descriptor (§3.5).
    @param f The flat output element index.
    @param acc Bit pattern of the partial `acc_r`.
    @param x Bit pattern of operand 0's element at term r.
    @param y Bit pattern of operand 1's element at term r.
    @return Bit pattern of `acc_{r+1}`.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    w0: uint256 = extract32(desc, 0, output_type=uint256)
    op: uint256 = w0 >> 248
    if op == descriptor.MATMUL:
        return softfloat.fma(x, y, acc)
    if op == descriptor.INDEX_ADD:
        # i_0 = f div (d_1 d_2 d_3); the index selects it iff its value is exactly i_0
        inner: uint256 = ((w0 >> 96) & _M32) * ((w0 >> 64) & _M32) * ((w0 >> 32) & _M32)
        if self._row_of(x, max_value(uint256)) != f // inner + 1:
            return softfloat.add(acc, 0)  # the +0.0 term: acc itself within a chain
        return softfloat.add(acc, y)
    if op == descriptor.REDUCE_SUM:
        return softfloat.add(acc, x)
    if op == descriptor.REDUCE_MAX:
        return softfloat.maximum(acc, x)
    raise "executor: not a reduction"


@external
@pure
def initial_acc(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint32:
    """
    @notice `acc_0` of a reduction (§3.7): +0.0 for REDUCE_SUM and MATMUL, -inf for
            REDUCE_MAX.
    @dev Reverts for every other opcode.
    @param desc The op's 128-byte descriptor (§3.5).
    @return Bit pattern of `acc_0`.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    w0: uint256 = extract32(desc, 0, output_type=uint256)
    op: uint256 = w0 >> 248
    if op == descriptor.REDUCE_SUM or op == descriptor.MATMUL or op == descriptor.INDEX_ADD:
        return 0
    if op == descriptor.REDUCE_MAX:
        return NEG_INF
    raise "executor: not a reduction"


@external
@pure
def gather_row(desc: Bytes[descriptor.DESCRIPTOR_BYTES], x: uint32) -> uint256:
    """
    @notice The table row a GATHER index selects, plus one; 0 when it selects none.
    @dev A row is selected iff `x` is a finite, integral, non-negative float32 (-0 is row 0)
         below the descriptor's `reduce_len` R (the row count); NaN, ±inf, fractional,
         negative and too-large indices select none and the element is +0.0 (§3.3).
         Reverts for every other opcode.
    @param desc The GATHER op's 128-byte descriptor (§3.5).
    @param x Bit pattern of the index element.
    @return row + 1, or 0.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    w0: uint256 = extract32(desc, 0, output_type=uint256)
    assert w0 >> 248 == descriptor.GATHER, "executor: not a GATHER"
    return self._row_of(x, (w0 >> 160) & _M32)


@internal
@pure
def _row_of(x: uint32, rows: uint256) -> uint256:
    """`x`'s value + 1 if it is an integral, finite, non-negative float32 (-0 counts as 0)
    below `rows`, else 0."""
    b: uint256 = convert(x, uint256)
    value: uint256 = 0
    if b & 2147483647 != 0:  # not ±0
        e: uint256 = (b >> 23) & 255
        if b >> 31 != 0 or e == 255 or e < 127:
            return 0  # negative, inf/NaN, or in (0, 1)
        m: uint256 = (b & 8388607) | 8388608
        if e >= 150:
            value = m << (e - 150)
        else:
            if m & ((1 << (150 - e)) - 1) != 0:
                return 0  # fractional
            value = m >> (150 - e)
    if value >= rows:
        return 0
    return value + 1


@external
@pure
def operand_index(
    desc: Bytes[descriptor.DESCRIPTOR_BYTES], a: uint256, f: uint256, r: uint256
) -> uint256:
    """
    @notice idx_a(f, r) (§3.4): the flat element of operand `a`'s slot that output element
            `f` reads for term `r` (r = 0 for element ops).
    @dev Delegates to `descriptor._operand_index`. Reverts if `a` > 2, if the descriptor is
         not 128 bytes, or on a zero dimension (an op with no elements reads nothing).
    @param desc The op's 128-byte descriptor.
    @param a The operand (0..2).
    @param f The flat output element index.
    @param r The term index.
    @return The flat input element index.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    assert a < 3, "executor: operand out of range"
    return descriptor._operand_index(desc, a, f, r)


@external
@pure
def opcode(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The opcode (§3.3) of a descriptor.
    @param desc The 128-byte descriptor.
    @return The opcode.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    return descriptor._opcode(desc)


@external
@pure
def out_slot(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The output slot of a descriptor.
    @param desc The 128-byte descriptor.
    @return The slot index.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    return descriptor._out_slot(desc)


@external
@pure
def numel(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The number of output elements, d0*d1*d2*d3.
    @param desc The 128-byte descriptor.
    @return The element count.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    return descriptor._numel(desc)


@external
@pure
def reduce_len(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice R, the number of sequential terms (0 for non-reductions).
    @param desc The 128-byte descriptor.
    @return R.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    return descriptor._reduce_len(desc)


@external
@pure
def operand_slot(desc: Bytes[descriptor.DESCRIPTOR_BYTES], a: uint256) -> uint256:
    """
    @notice The slot operand `a` reads, or 0xFFFF (65535) when the op has no operand `a`.
    @param desc The 128-byte descriptor.
    @param a The operand (0..2).
    @return The slot index.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    assert a < 3, "executor: operand out of range"
    return descriptor._operand_slot(desc, a)


@external
@pure
def imm(desc: Bytes[descriptor.DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The immediate: FILL's bit pattern, LOAD_BATCH's 0 (x) / 1 (y), else 0.
    @param desc The 128-byte descriptor.
    @return The immediate.
    """
    assert len(desc) == descriptor.DESCRIPTOR_BYTES, "executor: descriptor is not 128 bytes"
    return descriptor._imm(desc)
