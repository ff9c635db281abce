"""The native tree hasher (protocol._treehash) against the pure-Python definition.

Both SHA-256 backends are covered: the SHA-NI one where the CPU has it, and the portable C
one, forced with TRAINPROOF_TREEHASH_PORTABLE=1 (read by the extension at every call).
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol.commitments import data_root, data_root_reference
from protocol.constants import CHUNK_BYTES
from protocol.merkle import EMPTY_ROOT, merkle_root

_treehash = pytest.importorskip("protocol._treehash")

PORTABLE_ENV = "TRAINPROOF_TREEHASH_PORTABLE"
BACKENDS = ["native", "portable"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test once with the CPU's best backend and once with the portable one."""
    if request.param == "portable":
        monkeypatch.setenv(PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(PORTABLE_ENV, raising=False)
    return request.param


def reference(data: bytes, chunk: int) -> bytes:
    """RFC 9162 MTH over ``chunk``-byte leaves, the last zero-padded (any chunk size)."""
    leaves = [data[i : i + chunk].ljust(chunk, b"\x00") for i in range(0, len(data), chunk)]
    return merkle_root(leaves)


def payload(n: int, seed: int) -> bytes:
    """``n`` deterministic pseudo-random bytes (cheaper than drawing them with hypothesis)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed.to_bytes(8, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


# lengths around chunk boundaries, where the zero-padding and the tree shape change
near_multiples = st.builds(
    lambda k, d: max(0, k * CHUNK_BYTES + d),
    st.integers(min_value=0, max_value=195),
    st.sampled_from([-1, 0, 1]),
)
lengths = st.one_of(st.integers(min_value=0, max_value=200_000), near_multiples)

# the backend fixture only sets an environment variable: safe to share between examples
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv(PORTABLE_ENV, "1")
    assert _treehash.backend() == "portable"
    monkeypatch.setenv(PORTABLE_ENV, "0")
    assert _treehash.backend() in ("sha-ni", "portable")
    monkeypatch.delenv(PORTABLE_ENV)
    if "sha_ni" in _cpu_flags():
        assert _treehash.backend() == "sha-ni"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@SETTINGS
@given(n=lengths, threads=st.integers(min_value=1, max_value=8), seed=st.integers(0, 2**32))
@example(n=0, threads=1, seed=0)
@example(n=1, threads=1, seed=0)
@example(n=CHUNK_BYTES, threads=2, seed=0)
@example(n=64 * CHUNK_BYTES + 1, threads=8, seed=0)
@example(n=200_000, threads=3, seed=0)
def test_data_root_matches_reference(backend, n, threads, seed):
    data = payload(n, seed)
    expected = data_root_reference(data)
    assert _treehash.mth_chunks(data, CHUNK_BYTES, threads) == expected
    assert data_root(memoryview(data), threads) == expected


@SETTINGS
@given(
    n=st.integers(min_value=0, max_value=20_000),
    chunk=st.one_of(
        st.integers(min_value=1, max_value=300),
        st.sampled_from([54, 55, 56, 62, 63, 64, 65, 118, 119, 120, 127, 128, 129, 4096]),
    ),
    threads=st.integers(min_value=1, max_value=8),
    seed=st.integers(0, 2**32),
)
def test_any_chunk_size_matches_reference(backend, n, chunk, threads, seed):
    """Chunk sizes around SHA-256 block boundaries (55/56 bytes with the prefix: one or two
    padding blocks) and many-leaf trees split over threads."""
    data = payload(n, seed)
    assert _treehash.mth_chunks(data, chunk, threads) == reference(data, chunk)


@pytest.mark.parametrize("n", [1, 100, 4095, 4096, 4097, 70_000])
def test_short_last_chunk_of_a_huge_chunk_size(backend, n):
    """A chunk much larger than the data: the leaf is mostly zero-padding, never copied."""
    data = payload(n, 7)
    chunk = 1 << 20
    assert _treehash.mth_chunks(data, chunk, 2) == reference(data, chunk)


def test_many_leaves_many_threads(backend):
    """Enough leaves for several subtrees per thread, and more threads than subtrees."""
    data = payload(3 * 64 * 16 + 5, 3)
    expected = reference(data, 16)
    for threads in (1, 2, 3, 4, 7, 64, 1000):
        assert _treehash.mth_chunks(data, 16, threads) == expected


def test_empty_tree_and_buffer_types(backend):
    assert _treehash.mth_chunks(b"", CHUNK_BYTES, 1) == EMPTY_ROOT == hashlib.sha256().digest()
    data = payload(5000, 1)
    expected = data_root_reference(data)
    for buf in (data, bytearray(data), memoryview(data)):
        assert _treehash.mth_chunks(buf, CHUNK_BYTES, 2) == expected


def test_backends_agree_on_a_large_buffer(monkeypatch):
    data = os.urandom(3 * 1024 * 1024 + 123)
    monkeypatch.delenv(PORTABLE_ENV, raising=False)
    native = _treehash.mth_chunks(data, CHUNK_BYTES, 2)
    monkeypatch.setenv(PORTABLE_ENV, "1")
    assert _treehash.mth_chunks(data, CHUNK_BYTES, 2) == native


@pytest.mark.parametrize("chunk, threads", [(0, 1), (-1, 1), (1024, 0), (1024, -3)])
def test_bad_arguments(chunk, threads):
    with pytest.raises(ValueError):
        _treehash.mth_chunks(b"abc", chunk, threads)


def test_not_a_buffer():
    with pytest.raises(TypeError):
        _treehash.mth_chunks("text", CHUNK_BYTES, 1)
