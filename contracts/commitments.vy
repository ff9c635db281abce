# pragma version ~=0.4.3
"""
@title Tensor and state commitments (docs/protocol.md §2)
@notice tensor_root = sha256(0x02 || dtype:u8 || numel:u64be || data_root), data_root being
        the RFC 9162 root over the tensor's CHUNK_BYTES-sized chunks; state_root is the
        RFC 9162 root over 32-byte slot values.
@dev A module: `import commitments`. CHUNK_BYTES mirrors protocol/constants.py (a test
     asserts they are equal).
"""

import merkle

# @dev Bytes per tensor data chunk: 256 float32 elements. The Vyper half of the one constant.
CHUNK_BYTES: constant(uint256) = 1024
# @dev dtype code of float32, the only dtype of v0.
DTYPE_FLOAT32: constant(uint8) = 1
# @dev Bytes per float32 element.
FLOAT32_BYTES: constant(uint256) = 4


@internal
@pure
def _tensor_root(dtype: uint8, numel: uint64, data_root: bytes32) -> bytes32:
    """
    @notice Recompute a tensor_root from its fields.
    @param dtype The dtype code (1 = float32).
    @param numel The number of elements.
    @param data_root The RFC 9162 root over the tensor's chunks.
    @return sha256(0x02 || dtype || numel (8 bytes, big-endian) || data_root).
    """
    return sha256(concat(b"\x02", convert(dtype, bytes1), convert(numel, bytes8), data_root))


@internal
@pure
def _chunk_count(numel: uint64) -> uint256:
    """
    @notice Number of CHUNK_BYTES chunks of a float32 tensor of `numel` elements.
    @param numel The number of elements.
    @return ceil(4 * numel / CHUNK_BYTES).
    """
    return (convert(numel, uint256) * FLOAT32_BYTES + CHUNK_BYTES - 1) // CHUNK_BYTES


@internal
@pure
def _check_chunk(
    data_root: bytes32,
    numel: uint64,
    index: uint256,
    chunk: Bytes[CHUNK_BYTES],
    path: DynArray[bytes32, merkle.MAX_DEPTH],
) -> bool:
    """
    @notice True iff `chunk` is chunk `index` of the float32 tensor with this data_root.
    @dev The tree size comes from `numel`, never from the caller, and the chunk must be
         exactly CHUNK_BYTES long (the last chunk is zero-padded), so a short or long
         reveal never verifies.
    @param data_root The tensor's data root.
    @param numel The tensor's element count (bound in its tensor_root).
    @param index The chunk's position, 0-based.
    @param chunk The chunk's bytes as calldata.
    @param path The chunk's RFC 9162 audit path.
    @return Whether the chunk is that tensor's chunk `index`.
    """
    if len(chunk) != CHUNK_BYTES:
        return False
    return merkle._verify(
        data_root, merkle._leaf_hash(chunk), index, self._chunk_count(numel), path
    )
