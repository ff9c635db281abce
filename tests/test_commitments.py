"""Tensor and state commitments (docs/protocol.md §2)."""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol.commitments import (
    NATIVE_HASHER,
    chunk,
    chunk_count,
    chunk_tree,
    data_root,
    data_root_reference,
    state_root,
    tensor_root,
    tensor_root_from_fields,
)
from protocol.constants import CHUNK_BYTES, DTYPE_FLOAT32, EMPTY_SLOT
from protocol.errors import CommitmentInputError
from protocol.merkle import leaf_hash, merkle_root


def test_tensor_root_by_definition() -> None:
    a = np.arange(300, dtype="<f4")  # 1200 bytes: two chunks, the second zero-padded
    raw = a.tobytes()
    chunks = [raw[:1024], raw[1024:].ljust(1024, b"\x00")]
    droot = merkle_root(chunks)
    expected = hashlib.sha256(b"\x02" + b"\x01" + (300).to_bytes(8, "big") + droot).digest()
    assert tensor_root(a) == expected
    assert tensor_root(a.reshape(3, 100)) == expected  # shape is not committed, layout is


def test_native_hasher_is_built() -> None:
    assert NATIVE_HASHER, (
        "protocol._treehash did not build: check the compiler output of `make setup`"
    )


@settings(max_examples=80, deadline=None)
@given(arrays(np.float32, st.integers(0, 3000), elements=st.floats(width=32, allow_nan=True)))
def test_data_root_native_equals_reference(a: np.ndarray) -> None:
    raw = memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B")
    assert data_root(raw) == data_root_reference(raw)


def test_empty_tensor() -> None:
    a = np.zeros(0, dtype="<f4")
    assert chunk_count(0) == 0
    assert tensor_root(a) == tensor_root_from_fields(DTYPE_FLOAT32, 0, hashlib.sha256(b"").digest())


def test_chunk_tree_proves_chunks() -> None:
    a = np.random.default_rng(1).standard_normal(1000).astype("<f4")
    tree = chunk_tree(a)
    assert tree.size == chunk_count(1000) == 4
    for i in range(tree.size):
        c = chunk(a, i)
        assert len(c) == CHUNK_BYTES
        assert tree.prove(i).verify(leaf_hash(c), data_root(memoryview(a).cast("B")))
    assert chunk(a, 3)[1000 * 4 - 3 * 1024 :] == b"\x00" * (4 * 1024 - 4000)
    with pytest.raises(CommitmentInputError, match="has 4 chunks"):
        chunk(a, 4)


def test_state_root_empty_slots_are_zero() -> None:
    r = tensor_root(np.ones(3, dtype="<f4"))
    assert state_root([r, None]) == merkle_root([r, EMPTY_SLOT])
    with pytest.raises(CommitmentInputError, match="32-byte root"):
        state_root([b"short"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.ones(4, dtype=np.float64), "float32 little-endian"),
        (np.ones(4, dtype=">f4"), "float32 little-endian"),
        (np.ones(4, dtype=np.int32), "float32 little-endian"),
        (np.ones((4, 4), dtype="<f4").T[:, :3], "not C-contiguous"),
        (np.ones(8, dtype="<f4")[::2], "not C-contiguous"),
        ([1.0, 2.0], "expected a numpy.ndarray"),
    ],
)
def test_bad_tensors_get_clear_errors(value, message) -> None:
    with pytest.raises(CommitmentInputError, match=message):
        tensor_root(value)


def test_bad_fields_get_clear_errors() -> None:
    with pytest.raises(CommitmentInputError, match="unknown dtype"):
        tensor_root_from_fields(7, 1, b"\x00" * 32)
    with pytest.raises(CommitmentInputError, match="u64"):
        tensor_root_from_fields(DTYPE_FLOAT32, 2**64, b"\x00" * 32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(min_size=32, max_size=32)), max_size=70))
def test_sparse_state_root_is_the_full_tree(slots: list[bytes | None]) -> None:
    """The cached-empty-subtree state root equals MTH over every slot value, for any pattern
    of filled and empty slots."""
    assert state_root(slots) == merkle_root([EMPTY_SLOT if s is None else s for s in slots])
