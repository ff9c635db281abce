# pragma version ~=0.4.3
"""
@title Op descriptors of the canonical IR (docs/protocol.md §3.5)
@notice Decodes the fixed 128-byte, 4-word big-endian op descriptor and computes the affine
        index maps of §3.4. Shared by the one-step executor and the dispute game.
@dev A module of pure functions: `import descriptor`. Validation of whole programs happens
     off-chain before a job is accepted (protocol.ir.validate_program); what the game needs
     on-chain is only decoding and index arithmetic, all of it uint32-bounded by that
     validation, so plain uint256 arithmetic cannot overflow here.
"""

# @dev Size of one encoded descriptor.
DESCRIPTOR_BYTES: constant(uint256) = 128
# @dev Operand slot value meaning "no operand".
NO_SLOT: constant(uint256) = 65535
_M32: constant(uint256) = 4294967295

# @dev Opcodes (docs/protocol.md §3.3; the numbering is part of the protocol).
ADD: constant(uint256) = 1
SUB: constant(uint256) = 2
MUL: constant(uint256) = 3
DIV: constant(uint256) = 4
MAX: constant(uint256) = 5
MIN: constant(uint256) = 6
GT: constant(uint256) = 7
GE: constant(uint256) = 8
EQ: constant(uint256) = 9
LDEXP: constant(uint256) = 10
NEG: constant(uint256) = 16
ABS: constant(uint256) = 17
SQRT: constant(uint256) = 18
ROUND: constant(uint256) = 19
FREXP_EXP: constant(uint256) = 20
FREXP_MANT: constant(uint256) = 21
COPY: constant(uint256) = 22
SELECT: constant(uint256) = 32
FMA: constant(uint256) = 33
REDUCE_SUM: constant(uint256) = 48
REDUCE_MAX: constant(uint256) = 49
MATMUL: constant(uint256) = 50
INDEX_ADD: constant(uint256) = 51
FILL: constant(uint256) = 64
LOAD_BATCH: constant(uint256) = 65
FREE: constant(uint256) = 66
GATHER: constant(uint256) = 80


@internal
@pure
def _word(desc: Bytes[DESCRIPTOR_BYTES], w: uint256) -> uint256:
    """
    @notice Word `w` (0..3) of a descriptor as a big-endian uint256.
    @param desc The 128-byte descriptor.
    @param w The word index.
    @return The word.
    """
    return extract32(desc, 32 * w, output_type=uint256)


@internal
@pure
def _opcode(desc: Bytes[DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The opcode (header byte 0).
    @param desc The descriptor.
    @return The opcode.
    """
    return self._word(desc, 0) >> 248


@internal
@pure
def _out_slot(desc: Bytes[DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The output slot (header bytes 2-3).
    @param desc The descriptor.
    @return The slot index.
    """
    return (self._word(desc, 0) >> 224) & 65535


@internal
@pure
def _imm(desc: Bytes[DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The immediate (header bytes 4-7): FILL's bit pattern, LOAD_BATCH's 0 (x) / 1 (y).
    @param desc The descriptor.
    @return The immediate.
    """
    return (self._word(desc, 0) >> 192) & _M32


@internal
@pure
def _reduce_len(desc: Bytes[DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice R, the number of sequential terms of a reduction or MATMUL (0 otherwise).
    @param desc The descriptor.
    @return R.
    """
    return (self._word(desc, 0) >> 160) & _M32


@internal
@pure
def _numel(desc: Bytes[DESCRIPTOR_BYTES]) -> uint256:
    """
    @notice The number of output elements, d0*d1*d2*d3 (unused dimensions are 1).
    @param desc The descriptor.
    @return numel of the output.
    """
    w0: uint256 = self._word(desc, 0)
    return ((w0 >> 128) & _M32) * ((w0 >> 96) & _M32) * ((w0 >> 64) & _M32) * ((w0 >> 32) & _M32)


@internal
@pure
def _operand_slot(desc: Bytes[DESCRIPTOR_BYTES], a: uint256) -> uint256:
    """
    @notice The slot operand `a` (0..2) reads, or NO_SLOT.
    @param desc The descriptor.
    @param a The operand index.
    @return The slot index.
    """
    return self._word(desc, 1 + a) >> 240


@internal
@pure
def _operand_index(
    desc: Bytes[DESCRIPTOR_BYTES], a: uint256, f: uint256, r: uint256
) -> uint256:
    """
    @notice idx_a(f, r) = offset_a + sum_m i_m * stride_a[m] + r * rho_a (§3.4): the flat
            element of operand `a`'s slot that output element `f` reads for term `r`.
    @dev The multi-index of f comes from repeated division by d3, d2, d1, d0.
    @param desc The descriptor.
    @param a The operand index (0..2).
    @param f The flat output element index.
    @param r The term index (0 for element ops).
    @return The flat input element index.
    """
    w0: uint256 = self._word(desc, 0)
    wa: uint256 = self._word(desc, 1 + a)
    idx: uint256 = ((wa >> 208) & _M32) + r * ((wa >> 48) & _M32)
    rest: uint256 = f
    for m: uint256 in range(4):
        d: uint256 = (w0 >> (32 + 32 * m)) & _M32  # d3, d2, d1, d0
        stride: uint256 = (wa >> (80 + 32 * m)) & _M32  # sigma3, sigma2, sigma1, sigma0
        idx += (rest % d) * stride
        rest = rest // d
    return idx
