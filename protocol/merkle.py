"""RFC 9162 Merkle trees over SHA-256 (DESIGN §4.1).

- leaf hash ``H(0x00 || d)``, node hash ``H(0x01 || l || r)``, empty tree ``H("")``;
- a tree of ``n`` leaves splits at the largest power of two below ``n`` — equivalently, built
  bottom-up pairing neighbours and promoting an unpaired last node unchanged;
- inclusion proofs are RFC 9162 §2.1.3 audit paths, verified with the algorithm of §2.1.3.2.

The leaf count is always explicit: a proof is meaningless without its tree size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.constants import LEAF_PREFIX, MAX_PROOF_DEPTH, NODE_PREFIX
from protocol.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``H(0x00 || data)``: the hash of one leaf's data."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        up.append(level[-1])
    return up


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 root over already-hashed leaves (``EMPTY_ROOT`` for none)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle Tree Hash of a list of leaf data."""
    return root_of_leaf_hashes([leaf_hash(d) for d in leaves])


def proof_length(index: int, size: int) -> int:
    """Number of hashes in the audit path of leaf ``index`` in a tree of ``size`` leaves."""
    _check_index(index, size)
    length, fn, sn = 0, index, size - 1
    while sn:
        if fn & 1 or fn != sn:
            length += 1
        fn >>= 1
        sn >>= 1
    return length


def _check_index(index: int, size: int) -> None:
    if size <= 0:
        raise ProofError(f"tree size is {size}: an empty tree has no leaves to prove")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for a tree of {size} leaves")


class InclusionProof(BaseModel):
    """An RFC 9162 inclusion proof: leaf ``index`` of a tree of ``tree_size`` leaves."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    path: tuple[bytes, ...] = Field(max_length=MAX_PROOF_DEPTH)

    @field_validator("path")
    @classmethod
    def _nodes_are_hashes(cls, path: tuple[bytes, ...]) -> tuple[bytes, ...]:
        for i, node in enumerate(path):
            if len(node) != HASH_SIZE:
                raise ValueError(f"path[{i}] is {len(node)} bytes; every node is 32 bytes")
        return path

    def root_for(self, leaf: bytes) -> bytes:
        """The root this proof yields for leaf *hash* ``leaf``; ProofError if malformed."""
        return root_from_path(leaf, self.index, self.tree_size, self.path)

    def verify(self, leaf: bytes, root: bytes) -> bool:
        """True if this proof shows leaf hash ``leaf`` at ``index`` in the tree with ``root``."""
        try:
            return self.root_for(leaf) == root
        except ProofError:
            return False


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root implied by a leaf hash and its audit path.

    Raises ProofError when the path cannot be an audit path for (index, size): index out of
    range, or a path of the wrong length.
    """
    _check_index(index, size)
    expected = proof_length(index, size)
    if len(path) != expected:
        raise ProofError(
            f"proof has {len(path)} hashes but leaf {index} of a {size}-leaf tree needs {expected}"
        )
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r


class MerkleTree:
    """An RFC 9162 tree with every level kept, for roots and inclusion proofs.

    Built from leaf *hashes* (use :meth:`from_leaves` for raw leaf data).
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        for i, h in enumerate(leaf_hashes):
            if len(h) != HASH_SIZE:
                raise ProofError(f"leaf hash {i} is {len(h)} bytes; leaf hashes are 32 bytes")
        levels = [list(leaf_hashes)]
        while len(levels[-1]) > 1:
            levels.append(_next_level(levels[-1]))
        self._levels = levels

    @classmethod
    def from_leaves(cls, leaves: Sequence[bytes]) -> MerkleTree:
        return cls([leaf_hash(d) for d in leaves])

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        _check_index(index, self.size)
        return self._levels[0][index]

    def prove(self, index: int) -> InclusionProof:
        """The audit path of leaf ``index``."""
        _check_index(index, self.size)
        path: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            if i & 1:
                path.append(level[i - 1])
            elif i + 1 < len(level):
                path.append(level[i + 1])
            i >>= 1
        return InclusionProof(index=index, tree_size=self.size, path=tuple(path))
