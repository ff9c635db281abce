# pragma version ~=0.4.3
# pragma experimental-codegen
"""
@title Commitment harness
@notice Exposes the merkle and commitments modules for tests, benchmarks and the demo, and
        keeps a registry of committed tensor roots so the demo can commit on-chain.
@dev Holds no funds. Every function but `commit_tensor` is pure. Compiled with Vyper's
     Venom backend (experimental-codegen): 372 instead of 472 gas per proof level.
"""

import merkle
import commitments

# @notice CHUNK_BYTES of the deployed code (tests compare it with protocol/constants.py).
CHUNK_BYTES: public(constant(uint256)) = commitments.CHUNK_BYTES

# @notice Committed tensor roots, by committer and a caller-chosen key.
committed: public(HashMap[address, HashMap[bytes32, bytes32]])


event TensorCommitted:
    committer: indexed(address)
    key: indexed(bytes32)
    tensor_root: bytes32
    numel: uint64
    data_root: bytes32


@external
def commit_tensor(key: bytes32, numel: uint64, data_root: bytes32) -> bytes32:
    """
    @notice Record the tensor_root of a float32 tensor under `key` for the caller.
    @dev A key is written once: re-committing reverts, so nothing committed is ever lost.
    @param key Any caller-chosen name for the tensor.
    @param numel The tensor's element count.
    @param data_root The RFC 9162 root over its chunks.
    @return The recomputed tensor_root.
    """
    assert self.committed[msg.sender][key] == empty(bytes32), "harness: key already committed"
    root: bytes32 = commitments._tensor_root(commitments.DTYPE_FLOAT32, numel, data_root)
    self.committed[msg.sender][key] = root
    log TensorCommitted(committer=msg.sender, key=key, tensor_root=root, numel=numel, data_root=data_root)
    return root


@external
@pure
def verify_inclusion(
    root: bytes32,
    leaf: bytes32,
    index: uint256,
    size: uint256,
    path: DynArray[bytes32, merkle.MAX_DEPTH],
) -> bool:
    """
    @notice Whether `path` proves leaf hash `leaf` at `index` in the `size`-leaf tree `root`.
    @param root The tree root.
    @param leaf The leaf hash, sha256(0x00 || data).
    @param index The leaf position, 0-based.
    @param size The number of leaves.
    @param path The RFC 9162 audit path.
    @return True iff the proof is valid.
    """
    ok: bool = False
    implied: bytes32 = empty(bytes32)
    ok, implied = merkle._implied_root(leaf, index, size, path)
    return ok and implied == root


@external
@pure
def verify_leaf(
    root: bytes32,
    data: Bytes[1024],
    index: uint256,
    size: uint256,
    path: DynArray[bytes32, merkle.MAX_DEPTH],
) -> bool:
    """
    @notice Whether leaf *data* (hashed here with the 0x00 prefix) is at `index` of `root`.
    @dev The form every protocol check uses: the verifier hashes the leaf itself, so 64
         bytes of child hashes can never pass for an interior node.
    @param root The tree root.
    @param data The leaf data.
    @param index The leaf position, 0-based.
    @param size The number of leaves.
    @param path The RFC 9162 audit path.
    @return True iff the proof is valid.
    """
    return merkle._verify(root, merkle._leaf_hash(data), index, size, path)


@external
@pure
def root_from_path(
    leaf: bytes32, index: uint256, size: uint256, path: DynArray[bytes32, merkle.MAX_DEPTH]
) -> bytes32:
    """
    @notice The root implied by an inclusion proof; reverts on a malformed one.
    @param leaf The leaf hash.
    @param index The leaf position, 0-based.
    @param size The number of leaves.
    @param path The RFC 9162 audit path.
    @return The implied root.
    """
    return merkle._root_from_path(leaf, index, size, path)


@external
@pure
def leaf_hash(data: Bytes[1024]) -> bytes32:
    """
    @notice sha256(0x00 || data).
    @param data Leaf data (at most 1024 bytes).
    @return The leaf hash.
    """
    return merkle._leaf_hash(data)


@external
@pure
def tensor_root(dtype: uint8, numel: uint64, data_root: bytes32) -> bytes32:
    """
    @notice Recompute a tensor_root from its fields.
    @param dtype The dtype code (1 = float32).
    @param numel The element count.
    @param data_root The chunk-tree root.
    @return The tensor_root.
    """
    return commitments._tensor_root(dtype, numel, data_root)


@external
@pure
def check_chunk(
    data_root: bytes32,
    numel: uint64,
    index: uint256,
    chunk: Bytes[commitments.CHUNK_BYTES],
    path: DynArray[bytes32, merkle.MAX_DEPTH],
) -> bool:
    """
    @notice Whether `chunk` is chunk `index` of the float32 tensor (numel, data_root).
    @param data_root The tensor's chunk-tree root.
    @param numel The tensor's element count.
    @param index The chunk position, 0-based.
    @param chunk The CHUNK_BYTES bytes of the chunk.
    @param path The chunk's RFC 9162 audit path.
    @return True iff it verifies.
    """
    return commitments._check_chunk(data_root, numel, index, chunk, path)
