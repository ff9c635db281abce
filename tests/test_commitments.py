"""Tensor and state commitments (docs/protocol.md §2)."""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol import commitments
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
    tensor_roots,
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


def _reference_root(a: np.ndarray, nan_bits: int | None) -> bytes:
    """tensor_root by the plain-Python definition, NaNs replaced first when asked."""
    raw = np.ascontiguousarray(a, dtype="<f4").copy()
    if nan_bits is not None:
        bits = raw.view("<u4")
        bits[np.isnan(raw)] = nan_bits
    droot = data_root_reference(memoryview(raw).cast("B"))
    return tensor_root_from_fields(DTYPE_FLOAT32, raw.size, droot)


_NAN_PAYLOADS = st.sampled_from([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FA5A5A5])


@st.composite
def _float32_tensors(draw: st.DrawFn) -> list[np.ndarray]:
    """Tensors of 0 to ~40 chunks, some with NaNs of any payload at any place."""
    out = []
    for size in draw(st.lists(st.integers(0, 10_000), min_size=0, max_size=8)):
        seed = draw(st.integers(0, 2**32 - 1))
        a = np.random.default_rng(seed).standard_normal(size).astype("<f4")
        if size and draw(st.booleans()):
            bits = a.view("<u4")
            for at in draw(st.lists(st.integers(0, size - 1), max_size=4)):
                bits[at] = draw(_NAN_PAYLOADS)
        out.append(a)
    return out


@settings(max_examples=60, deadline=None)
@given(
    _float32_tensors(),
    st.sampled_from([1, 2, 3, 8]),
    st.sampled_from([None, 0x7FC00000]),
    st.sampled_from(["sha-ni", "portable", "python"]),
)
def test_tensor_roots_of_many_tensors_equal_each_root_by_definition(
    tensors: list[np.ndarray], threads: int, nan_bits: int | None, hasher: str
) -> None:
    """One call for many tensors (a trace's op outputs), on any thread count, with either
    native SHA-256 implementation or without the native hasher, is each tensor's root;
    ``nan_bits`` hashes every NaN as those bits without changing the arrays."""
    before = [t.copy() for t in tensors]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINPROOF_TREEHASH_PORTABLE", "1" if hasher == "portable" else "0")
        if hasher == "python":
            mp.setattr(commitments, "_treehash", None)
        got = tensor_roots(tensors, threads=threads, nan_bits=nan_bits)
    assert got == [_reference_root(t, nan_bits) for t in tensors]
    unchanged = zip(tensors, before, strict=True)
    assert all(np.array_equal(a.view("<u4"), b.view("<u4")) for a, b in unchanged)
    if nan_bits is None:
        assert got == [tensor_root(t) for t in tensors]


def test_tensor_roots_of_a_large_tensor_split_over_threads() -> None:
    """A tensor of many pieces (split over the threads like ``data_root``) among small ones."""
    rng = np.random.default_rng(7)
    big = rng.standard_normal(3_000_001).astype("<f4")
    big.view("<u4")[2_500_000] = 0x7F800001  # a NaN deep in the last pieces
    tensors = [rng.standard_normal(5).astype("<f4"), big, np.zeros(0, "<f4")]
    want = [_reference_root(t, 0x7FC00000) for t in tensors]
    for threads in (1, 2, 4):
        assert tensor_roots(tensors, threads=threads, nan_bits=0x7FC00000) == want


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros(3), "float32 little-endian"),
        (np.zeros((4, 4), "<f4").T, "not C-contiguous"),
        (np.zeros(3, ">f4"), "float32 little-endian"),
        (b"abcd", "numpy.ndarray"),
    ],
)
def test_tensor_roots_reject_what_is_not_a_committed_tensor(value: object, message: str) -> None:
    with pytest.raises(CommitmentInputError, match=message):
        tensor_roots([np.zeros(2, "<f4"), value])  # type: ignore[list-item]
    with pytest.raises(CommitmentInputError, match="bit pattern"):
        tensor_roots([np.zeros(2, "<f4")], nan_bits=1 << 32)
