# pragma version ~=0.4.3
"""
@title RFC 9162 Merkle inclusion proofs over SHA-256
@notice Leaves hash as sha256(0x00 || d), nodes as sha256(0x01 || l || r); a tree of n
        leaves splits at the largest power of two below n. Accepts exactly the proofs that
        RFC 9162 §2.1.3.2 accepts. The leaf count is always explicit.
@dev A module: `import merkle`. Hot paths call `_implied_root` directly.

     How the walk is cheap: with x = index XOR (size - 1), the node on the leaf's path and
     the right-most node of its level coincide from level B = bitlength(x) up, and differ
     below it. Below B every level has a sibling, on the left iff that bit of index is 1.
     From B up the node is the right-most one: it has a (left) sibling exactly at the 1-bits
     of index and is promoted unchanged at the 0-bits. With m = 2**B - 1:
       - the sibling of the k-th path hash is on the left iff bit k of (index | ~m) is 1;
       - the proof has exactly popcount(index | m) hashes.
     So the loop tests and shifts one word per level.
"""

# @dev Longest audit path accepted: trees of up to 2**64 leaves.
MAX_DEPTH: constant(uint256) = 64
# @dev Largest tree size accepted (the u64 bound of every count in the protocol).
MAX_SIZE: constant(uint256) = 2**64
# @dev RFC 9162 domain-separation prefixes (bytes1 constants make `concat` cheap).
LEAF_PREFIX: constant(bytes1) = 0x00
NODE_PREFIX: constant(bytes1) = 0x01
# @dev SWAR population-count masks over 64 bits: 0x55.., 0x33.., 0x0f.., 0x01.. .
_M1: constant(uint256) = 6148914691236517205
_M2: constant(uint256) = 3689348814741910323
_M4: constant(uint256) = 1085102592571150095
_H01: constant(uint256) = 72340172838076673


@internal
@pure
def _leaf_hash(data: Bytes[1024]) -> bytes32:
    """
    @notice sha256(0x00 || data): the hash of one leaf's data.
    @param data The leaf data, at most 1024 bytes (a tensor chunk or a 32-byte value).
    @return The leaf hash.
    """
    return sha256(concat(LEAF_PREFIX, data))


@internal
@pure
def _leaf_hash32(data: bytes32) -> bytes32:
    """
    @notice sha256(0x00 || value): the leaf hash of a 32-byte leaf (a state slot value, a
            checkpoint root).
    @param data The 32-byte leaf data.
    @return The leaf hash.
    """
    return sha256(concat(LEAF_PREFIX, data))


@internal
@pure
def _split_point(n: uint256) -> uint256:
    """
    @notice The largest power of two strictly below n (n >= 2): where RFC 9162 splits n leaves.
    @param n The number of leaves, at least 2, below 2**64.
    @return k, the size of the left subtree.
    """
    m: uint256 = n - 1
    m |= m >> 1
    m |= m >> 2
    m |= m >> 4
    m |= m >> 8
    m |= m >> 16
    m |= m >> 32
    return (m + 1) >> 1


@internal
@pure
def _node_hash(left: bytes32, right: bytes32) -> bytes32:
    """
    @notice sha256(0x01 || left || right): the hash of an interior node.
    @param left The left child hash.
    @param right The right child hash.
    @return The node hash.
    """
    return sha256(concat(NODE_PREFIX, left, right))


@internal
@pure
def _implied_root(
    leaf: bytes32, index: uint256, size: uint256, path: DynArray[bytes32, MAX_DEPTH]
) -> (bool, bytes32):
    """
    @notice Fold an RFC 9162 audit path into the root it implies.
    @dev The only implementation of the walk. Returns (False, 0) for a malformed proof:
         index out of range (the empty tree included), size above MAX_SIZE, or a path of
         the wrong length; the caller must check the flag.
    @param leaf The leaf hash (already domain-separated with 0x00).
    @param index The leaf's position, 0-based.
    @param size The number of leaves in the tree.
    @param path The audit path, leaf level first.
    @return (whether the proof is well-formed, the implied root).
    """
    if index >= size or size > MAX_SIZE:
        return False, empty(bytes32)
    # m = 2**B - 1 with B = bitlength(index XOR (size - 1)), by smearing the top bit down
    m: uint256 = index ^ (size - 1)
    m |= m >> 1
    m |= m >> 2
    m |= m >> 4
    m |= m >> 8
    m |= m >> 16
    m |= m >> 32
    # the proof length is popcount(index | m) (64-bit SWAR popcount)
    v: uint256 = index | m
    v = v - ((v >> 1) & _M1)
    v = (v & _M2) + ((v >> 2) & _M2)
    v = (v + (v >> 4)) & _M4
    if len(path) != (unsafe_mul(v, _H01) >> 56) & 255:
        return False, empty(bytes32)
    # bit k of `sides` is 1 iff the k-th path hash is a left sibling
    sides: uint256 = index | (~m)
    r: bytes32 = leaf
    for p: bytes32 in path:
        if sides & 1 != 0:
            r = sha256(concat(NODE_PREFIX, p, r))
        else:
            r = sha256(concat(NODE_PREFIX, r, p))
        sides >>= 1
    return True, r


@internal
@pure
def _root_from_path(
    leaf: bytes32, index: uint256, size: uint256, path: DynArray[bytes32, MAX_DEPTH]
) -> bytes32:
    """
    @notice The root implied by a leaf hash at `index` of a `size`-leaf tree and its path.
    @dev Reverts on a malformed proof, so a caller comparing the result with a stored root
         never accepts one.
    @param leaf The leaf hash (already domain-separated with 0x00).
    @param index The leaf's position, 0-based.
    @param size The number of leaves in the tree.
    @param path The RFC 9162 audit path, leaf level first.
    @return The implied root.
    """
    assert index < size  # dev: index out of range
    ok: bool = False
    r: bytes32 = empty(bytes32)
    ok, r = self._implied_root(leaf, index, size, path)
    assert ok  # dev: wrong proof length
    return r


@internal
@pure
def _verify(
    root: bytes32,
    leaf: bytes32,
    index: uint256,
    size: uint256,
    path: DynArray[bytes32, MAX_DEPTH],
) -> bool:
    """
    @notice True iff `path` proves leaf hash `leaf` at `index` of the `size`-leaf tree `root`.
    @dev Never reverts: a malformed proof is simply not a valid one.
    @param root The tree's root.
    @param leaf The leaf hash.
    @param index The leaf's position, 0-based.
    @param size The number of leaves.
    @param path The audit path, leaf level first.
    @return Whether the proof is valid.
    """
    ok: bool = False
    r: bytes32 = empty(bytes32)
    ok, r = self._implied_root(leaf, index, size, path)
    return ok and r == root
