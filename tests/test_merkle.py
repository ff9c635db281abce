"""RFC 9162 trees and proofs, with pymerkle (RFC 9162, sha256) as the oracle."""

import hashlib
import warnings

import pymerkle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProofError
from protocol.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    proof_length,
    root_from_path,
)


def pymerkle_tree(leaves: list[bytes]) -> pymerkle.InmemoryTree:
    tree = pymerkle.InmemoryTree(algorithm="sha256")  # security=True: 0x00/0x01 prefixes
    for d in leaves:
        tree.append_entry(d)
    return tree


def pymerkle_root(tree: pymerkle.InmemoryTree) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tree.get_state()


def leaves_of(n: int, seed: int) -> list[bytes]:
    return [
        hashlib.sha256(f"{seed}:{i}".encode()).digest()[: 1 + (i + seed) % 40] for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32))
def test_root_equals_pymerkle(n: int, seed: int) -> None:
    leaves = leaves_of(n, seed)
    assert merkle_root(leaves) == pymerkle_root(pymerkle_tree(leaves))
    assert MerkleTree.from_leaves(leaves).root == merkle_root(leaves)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32), data=st.data())
def test_proofs_equal_pymerkle_and_verify(n: int, seed: int, data: st.DataObject) -> None:
    leaves = leaves_of(n, seed)
    ref = pymerkle_tree(leaves)
    tree = MerkleTree.from_leaves(leaves)
    for index in {0, n - 1, data.draw(st.integers(0, n - 1))}:
        proof = tree.prove(index)
        ref_proof = ref.prove_inclusion(index + 1).serialize()  # pymerkle counts from 1
        assert ref_proof["path"][0] == leaf_hash(leaves[index]).hex()
        assert [bytes.fromhex(h) for h in ref_proof["path"][1:]] == list(proof.path)
        assert len(proof.path) == proof_length(index, n)
        assert proof.verify(leaf_hash(leaves[index]), tree.root)
        pymerkle.verify_inclusion(
            leaf_hash(leaves[index]), pymerkle_root(ref), ref.prove_inclusion(index + 1)
        )


def test_empty_tree_is_hash_of_empty_string() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert MerkleTree([]).root == EMPTY_ROOT


def test_small_trees_by_hand() -> None:
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


def test_leaf_cannot_pose_as_node() -> None:
    left, right = leaf_hash(b"x"), leaf_hash(b"y")
    root = merkle_root([b"x", b"y"])
    forged = MerkleTree([leaf_hash(left + right)])  # 64 bytes of leaf data = the children
    assert forged.root != root


@pytest.mark.parametrize(
    ("index", "size", "path_len", "message"),
    [
        (5, 5, 3, "out of range"),
        (0, 0, 0, "empty tree"),
        (0, 5, 2, "needs 3"),
        (0, 5, 4, "needs 3"),
    ],
)
def test_malformed_proofs_raise_clear_errors(index, size, path_len, message) -> None:
    with pytest.raises(ProofError, match=message):
        root_from_path(b"\x00" * 32, index, size, [b"\x11" * 32] * path_len)


def test_proof_model_rejects_bad_nodes() -> None:
    with pytest.raises(ValueError, match="every node is 32 bytes"):
        InclusionProof(index=0, tree_size=2, path=(b"short",))
    proof = MerkleTree.from_leaves([b"a", b"b"]).prove(0)
    assert not proof.model_copy(update={"index": 1}).verify(
        leaf_hash(b"a"), merkle_root([b"a", b"b"])
    )
    assert not proof.model_copy(update={"tree_size": 7}).verify(
        leaf_hash(b"a"), merkle_root([b"a", b"b"])
    )
