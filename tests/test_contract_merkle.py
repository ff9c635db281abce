"""The Vyper verifier (contracts/merkle.vy, commitments.vy via CommitmentHarness) against the
Python reference, on ape's embedded network and on anvil."""

import hashlib

import numpy as np
import pytest
from ape.exceptions import ContractLogicError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.commitments import chunk, chunk_count, chunk_tree, data_root, tensor_root
from protocol.constants import CHUNK_BYTES, DTYPE_FLOAT32
from protocol.merkle import EMPTY_ROOT, InclusionProof, MerkleTree, leaf_hash, node_hash

CHAIN_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def tree_of(n: int, seed: int) -> MerkleTree:
    return MerkleTree([hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(n)])


def reference_accepts(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    return InclusionProof(index=index, tree_size=size, path=tuple(path)).verify(leaf, root)


def test_rejects_wrong_tree_size(harness) -> None:
    tree = tree_of(5, 0)
    path = list(tree.prove(4).path)  # the promoted last leaf: one sibling
    for size in (6, 7, 8, 9, 4):
        assert not harness.verify_inclusion(tree.root, tree.leaf(4), 4, size, path)


def test_chunk_bytes_matches_python(harness) -> None:
    assert harness.CHUNK_BYTES() == CHUNK_BYTES


@CHAIN_SETTINGS
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32), data=st.data())
def test_accepts_every_valid_proof(harness, n: int, seed: int, data: st.DataObject) -> None:
    tree = tree_of(n, seed)
    index = data.draw(st.integers(0, n - 1))
    proof = tree.prove(index)
    leaf = tree.leaf(index)
    assert harness.verify_inclusion(tree.root, leaf, index, n, list(proof.path))
    assert harness.root_from_path(leaf, index, n, list(proof.path)) == tree.root


@CHAIN_SETTINGS
@given(n=st.integers(2, 3000), seed=st.integers(0, 2**32), data=st.data())
def test_rejects_tampered_proofs(harness, n: int, seed: int, data: st.DataObject) -> None:
    tree = tree_of(n, seed)
    index = data.draw(st.integers(0, n - 1))
    path = list(tree.prove(index).path)
    leaf, root = tree.leaf(index), tree.root

    def accepts(leaf_=leaf, index_=index, size_=n, path_=path) -> bool:
        return harness.verify_inclusion(root, leaf_, index_, size_, path_)

    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    assert not accepts(index_=other), "wrong index"
    # A size with the same path shape folds to the same root: RFC 9162 proofs do not
    # authenticate the size, so the protocol always binds it (numel, slot count, N).
    # The contract must agree with the reference on every size.
    wrong_size = data.draw(st.integers(1, 4096).filter(lambda s: s != n))
    assert accepts(size_=wrong_size) == reference_accepts(leaf, index, wrong_size, path, root)
    assert not accepts(path_=path[:-1]), "truncated proof"
    assert not accepts(path_=[*path, path[-1]]), "extended proof"
    assert not accepts(path_=[path[0], *path]), "extended at the bottom"
    if len(path) >= 2:
        i, j = sorted(
            data.draw(st.lists(st.integers(0, len(path) - 1), min_size=2, max_size=2, unique=True))
        )
        if path[i] != path[j]:
            swapped = path.copy()
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert not accepts(path_=swapped), "swapped siblings"
    flipped = path.copy()
    k = data.draw(st.integers(0, len(path) - 1))
    flipped[k] = bytes([flipped[k][0] ^ 1]) + flipped[k][1:]
    assert not accepts(path_=flipped), "altered sibling"


def test_rejects_leaf_posing_as_node(harness) -> None:
    leaves = [b"left", b"right"]
    tree = MerkleTree.from_leaves(leaves)
    assert node_hash(tree.leaf(0), tree.leaf(1)) == tree.root
    # the 64 bytes of the two child hashes, presented as the data of a single leaf
    assert not harness.verify_leaf(tree.root, tree.leaf(0) + tree.leaf(1), 0, 1, [])
    # ... and as a leaf of a bigger tree whose subtree that node is
    big = MerkleTree.from_leaves([b"left", b"right", b"x", b"y"])
    node = big.leaf(0) + big.leaf(1)
    n23 = node_hash(big.leaf(2), big.leaf(3))
    assert node_hash(node_hash(big.leaf(0), big.leaf(1)), n23) == big.root
    assert not harness.verify_leaf(big.root, node, 0, 2, [n23])
    assert harness.verify_leaf(big.root, b"left", 0, 4, list(big.prove(0).path))


def test_rejects_empty_tree(harness) -> None:
    assert not harness.verify_inclusion(EMPTY_ROOT, leaf_hash(b""), 0, 0, [])
    with pytest.raises(ContractLogicError):
        harness.root_from_path(leaf_hash(b""), 0, 0, [])


@pytest.mark.parametrize(
    ("index", "size", "path_len"), [(5, 5, 3), (0, 5, 2), (0, 5, 4), (0, 1, 1)]
)
def test_root_from_path_reverts_on_malformed_proofs(harness, index, size, path_len) -> None:
    # the dev: reasons are asserted with titanoboa in test_contract_dev_reasons.py
    with pytest.raises(ContractLogicError):
        harness.root_from_path(b"\x00" * 32, index, size, [b"\x11" * 32] * path_len)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(numel=st.integers(0, 3000), seed=st.integers(0, 2**32))
def test_tensor_root_and_chunks_match_python(harness, numel: int, seed: int) -> None:
    a = np.random.default_rng(seed).standard_normal(numel).astype("<f4")
    droot = data_root(memoryview(a).cast("B"))
    assert harness.tensor_root(DTYPE_FLOAT32, numel, droot) == tensor_root(a)
    if numel == 0:
        return
    tree = chunk_tree(a)
    c = seed % chunk_count(numel)
    path = list(tree.prove(c).path)
    assert harness.check_chunk(droot, numel, c, chunk(a, c), path)
    assert not harness.check_chunk(droot, numel, c, chunk(a, c)[:-1], path), "short chunk"
    altered = bytes([chunk(a, c)[0] ^ 1]) + chunk(a, c)[1:]  # differs whatever the byte was
    assert not harness.check_chunk(droot, numel, c, altered, path), "altered chunk"
    # numel sets the tree size; the contract agrees with the reference for a wrong numel
    wrong = numel + 256 * (1 + seed % 7)
    expected = reference_accepts(leaf_hash(chunk(a, c)), c, chunk_count(wrong), path, tree.root)
    assert harness.check_chunk(droot, wrong, c, chunk(a, c), path) == expected


def test_commit_tensor_records_root_and_event(chain, harness) -> None:
    a = np.linspace(-1, 1, 777, dtype="<f4")
    key = hashlib.sha256(b"weights" + chain.sender.address.encode()).digest()
    receipt = harness.commit_tensor(
        key, a.size, data_root(memoryview(a).cast("B")), sender=chain.sender
    )
    assert harness.committed(chain.sender, key) == tensor_root(a)
    (event,) = receipt.events
    assert event.tensor_root == tensor_root(a) and event.numel == a.size
    with pytest.raises(ContractLogicError, match="key already committed"):
        harness.commit_tensor(key, 1, b"\x00" * 32, sender=chain.sender)
