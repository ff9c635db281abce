"""The content-addressed blob store (folders, HTTP, IPFS gateways, sets of untrusted stores),
its limits and retries, and checkpoint publication."""

import base64
import hashlib
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.blobs import (
    BlobError,
    CheckpointPointer,
    FileStore,
    HttpStore,
    IpfsGatewayStore,
    StoreSet,
    StoreUnreachable,
    address_of,
    address_of_cid,
    cid_of,
    fetch_with_retry,
    make_server,
    open_store,
    open_stores,
)
from replay.compile.compiler import compile_train
from replay.compile.examples import get_example
from replay.data.checkpoint import CheckpointError, from_hex
from replay.data.publish import fetch_checkpoint, publish_run
from replay.runner import read_run, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "digits"
    train("digits-mlp", steps=4, checkpoint_every=2, out=out, backend="numpy")
    return out


@pytest.fixture(scope="module")
def program():
    return compile_train(get_example("digits-mlp").model)


@pytest.fixture
def served(tmp_path):
    store = FileStore(tmp_path / "store")
    server = make_server(store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield store, HttpStore(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def test_file_store_round_trip_and_rejects_tampering(tmp_path) -> None:
    store = FileStore(tmp_path)
    address = store.put(b"weights")
    assert store.get(address) == b"weights"
    assert store.put(b"weights") == address  # idempotent
    (tmp_path / "blobs" / address[:2] / address[2:]).write_bytes(b"WEIGHTS")
    with pytest.raises(BlobError, match="corrupted or substituted"):
        store.get(address)
    with pytest.raises(BlobError, match="not in the store"):
        store.get("ab" * 32)
    with pytest.raises(BlobError, match="64 hex characters"):
        store.get("../../etc/passwd")


def test_http_store_verifies_what_it_fetches(served) -> None:
    store, remote = served
    address = store.put(b"\x00" * 5000)
    assert remote.get(address) == b"\x00" * 5000
    (store.root / "blobs" / address[:2] / address[2:]).write_bytes(b"\x01" * 5000)
    with pytest.raises(BlobError, match="HTTP 404"):  # the server refuses to serve it ...
        remote.get(address)
    with pytest.raises(BlobError, match="HTTP 404"):
        remote.get_pointer("cd" * 32)
    with pytest.raises(BlobError, match="read-only"):
        remote.put(b"x")


def test_published_checkpoints_come_back_verified(served, run_dir, program) -> None:
    store, remote = served
    pointers = publish_run(store, run_dir)
    run = read_run(run_dir)
    assert [p.step for p in pointers] == [c.step for c in run.checkpoints]
    for ref in run.checkpoints:
        state = fetch_checkpoint(remote, program, from_hex(ref.state_root))
        assert set(state) == {program.slots[i].name for i in program.persistent_slots}


def test_a_pointer_to_another_checkpoint_is_rejected(served, run_dir, program) -> None:
    store, remote = served
    first, second, *_ = publish_run(store, run_dir)
    # a store that answers the root of checkpoint 2 with the blobs of checkpoint 0
    store.put_pointer(CheckpointPointer(
        state_root=second.state_root, step=second.step,
        manifest=first.manifest, tensors=first.tensors,
    ))  # fmt: skip
    with pytest.raises(CheckpointError, match="committed"):
        fetch_checkpoint(remote, program, bytes.fromhex(second.state_root))


def test_a_lying_pointer_does_not_shadow_an_honest_one(served, run_dir, program, tmp_path, caplog):
    """The first store of a set answers checkpoint 2's root with checkpoint 0's blobs, the
    second honestly: the checkpoint still comes back verified, from the second pointer."""
    store, _ = served
    first, second, *_ = publish_run(store, run_dir)
    liar = FileStore(tmp_path / "liar")
    for address in (first.manifest, first.tensors):
        liar.put(store.get(address))
    liar.put_pointer(second.model_copy(update={"manifest": first.manifest,
                                               "tensors": first.tensors}))  # fmt: skip
    both = StoreSet([liar, store])
    with caplog.at_level(logging.WARNING, logger="trainproof.blobs"):
        state = fetch_checkpoint(both, program, bytes.fromhex(second.state_root))
    assert f"event=pointer_rejected store={liar.root}" in caplog.text
    assert set(state) == {program.slots[i].name for i in program.persistent_slots}
    with pytest.raises(CheckpointError, match="committed"):  # the liar alone: refused
        fetch_checkpoint(StoreSet([liar]), program, bytes.fromhex(second.state_root))


def test_truncated_or_missing_checkpoint_is_rejected(served, run_dir, program) -> None:
    store, remote = served
    pointer = publish_run(store, run_dir)[1]
    truncated = store.put(store.get(pointer.tensors)[:-100])
    store.put_pointer(pointer.model_copy(update={"tensors": truncated}))
    with pytest.raises(CheckpointError):
        fetch_checkpoint(remote, program, bytes.fromhex(pointer.state_root))
    with pytest.raises(BlobError, match="HTTP 404"):
        fetch_checkpoint(remote, program, b"\x11" * 32)


# ------------------------------------------------------------- limits, StoreSet, IPFS, retries

RAW = "application/vnd.ipld.raw"  # the trustless gateway's media type, spelled out here


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on a free 127.0.0.1 port, in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass

    def send_body(self, body: bytes, kind: str = "application/octet-stream", status=200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


def garbage_handler(hits: list[str]) -> type[BaseHTTPRequestHandler]:
    """Answers every blob with wrong bytes and every pointer with another state root's."""

    class Garbage(QuietHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path.startswith("/roots/"):
                other = CheckpointPointer(state_root="ee" * 32, step=0, manifest="0" * 64,
                                          tensors="0" * 64)  # fmt: skip
                self.send_body(other.model_dump_json().encode(), "application/json")
            else:
                self.send_body(b"not the blob you asked for: " + self.path.encode())

    return Garbage


def fake_gateway(blocks: dict[str, bytes], seen: list[dict]) -> type[BaseHTTPRequestHandler]:
    """A minimal trustless gateway: raw blocks by CID from a dict, only for Accept: RAW."""

    class Gateway(QuietHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            seen.append({"path": url.path, "query": url.query, "accept": self.headers["Accept"]})
            if self.headers["Accept"] != RAW:
                self.send_body(b"strict trustless mode: Accept a raw block", status=400)
                return
            _, root, cid = [*url.path.split("/"), "", ""][:3]
            if root != "ipfs" or cid not in blocks:
                self.send_body(b"no such block", status=404)
                return
            self.send_body(blocks[cid], RAW)

    return Gateway


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: connection refused


@pytest.fixture
def garbage() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    with http_server(garbage_handler(hits)) as url:
        yield url, hits


def test_store_set_falls_through_a_garbage_server_to_a_good_folder(tmp_path, garbage, caplog):
    url, hits = garbage
    folder = FileStore(tmp_path / "good")
    address = folder.put(b"page 3 of the dataset")
    pointer = CheckpointPointer(state_root="ab" * 32, step=4, manifest=address, tensors=address)
    folder.put_pointer(pointer)
    stores = StoreSet([HttpStore(url), folder], names=["mirror", "local"])
    caplog.set_level(logging.WARNING, logger="trainproof.blobs")
    assert stores.get(address) == b"page 3 of the dataset"
    assert stores.get_pointer("ab" * 32) == pointer  # the mirror's names another root
    assert hits == [f"/blobs/{address}", f"/roots/{'ab' * 32}"]
    unusable = [r.getMessage() for r in caplog.records if "event=blob_unusable" in r.getMessage()]
    assert len(unusable) == 2 and all("store=mirror" in m for m in unusable)
    assert "hashes to" in unusable[0] and "names state root" in unusable[1]
    # a good store first: the garbage one is never asked
    hits.clear()
    assert StoreSet([folder, HttpStore(url)]).get(address) == b"page 3 of the dataset"
    assert hits == []


def test_store_set_of_garbage_names_every_store(tmp_path, garbage) -> None:
    url, _ = garbage
    tampered = FileStore(tmp_path / "tampered")
    address = tampered.put(b"weights")
    (tampered.root / "blobs" / address[:2] / address[2:]).write_bytes(b"WEIGHTS")
    stores = StoreSet([HttpStore(url), tampered, FileStore(tmp_path / "empty")])
    with pytest.raises(BlobError) as caught:
        stores.get(address)
    assert type(caught.value) is BlobError  # they answered: not StoreUnreachable
    message = str(caught.value)
    assert "\n" not in message and f"blob {address} not usable from any of 3 stores" in message
    assert f"{url}: blob {address} hashes to" in message
    assert f"{tampered.root}: blob {address} hashes to" in message
    assert f"{tmp_path / 'empty'}: blob {address} is not in the store" in message
    with pytest.raises(BlobError, match=r"any of 2 stores: .*names state root ee.*no checkpoint"):
        StoreSet([HttpStore(url), tampered]).get_pointer("ab" * 32)


def test_store_set_unreachable_only_when_every_store_is(tmp_path) -> None:
    first, second = closed_port_url(), closed_port_url()
    address = address_of(b"x")
    with pytest.raises(StoreUnreachable, match=r"any of 2 stores") as caught:
        open_stores([first, f"ipfs+{second}"]).get(address)
    assert first in str(caught.value) and f"ipfs+{second}" in str(caught.value)
    with pytest.raises(StoreUnreachable):
        StoreSet([HttpStore(first)]).get_pointer("ab" * 32)
    with pytest.raises(BlobError) as caught:  # one store answered "not here"
        open_stores([first, str(tmp_path)]).get(address)
    assert type(caught.value) is BlobError

    class Down(QuietHandler):  # a proxy whose store is down
        def do_GET(self) -> None:
            self.send_body(b"bad gateway", status=502)

    with http_server(Down) as proxy, pytest.raises(StoreUnreachable, match="HTTP 502"):
        open_stores([first, proxy]).get(address)


def test_store_set_writes_to_every_writable_store(tmp_path) -> None:
    a, b = FileStore(tmp_path / "a"), FileStore(tmp_path / "b")
    stores = StoreSet([HttpStore(closed_port_url()), a, b])
    address = stores.put(b"checkpoint")
    assert a.get(address) == b.get(address) == b"checkpoint"
    pointer = CheckpointPointer(state_root="cd" * 32, step=1, manifest=address, tensors=address)
    stores.put_pointer(pointer)
    assert a.get_pointer("cd" * 32) == b.get_pointer("cd" * 32) == pointer
    read_only = open_stores([closed_port_url(), f"ipfs+{closed_port_url()}"])
    with pytest.raises(BlobError, match="no writable store"):
        read_only.put(b"checkpoint")
    with pytest.raises(BlobError, match="no writable store"):
        read_only.put_pointer(pointer)


def test_open_stores_reads_folders_urls_and_gateways(tmp_path) -> None:
    locations = [str(tmp_path), "http://127.0.0.1:1", "ipfs+https://gw.example", "ipfs+http://h:8/"]
    stores = open_stores(locations)
    kinds = [FileStore, HttpStore, IpfsGatewayStore, IpfsGatewayStore]
    assert [type(s) for s in stores.stores] == kinds
    assert stores.names == locations
    assert [s.url for s in stores.stores[2:]] == ["https://gw.example", "http://h:8"]
    assert isinstance(open_store("ipfs+http://h:1"), IpfsGatewayStore)
    with pytest.raises(BlobError, match="ipfs\\+http://"):
        open_store("ipfs+ftp://h")
    with pytest.raises(BlobError, match="at least one store"):
        open_stores([])


def test_a_blob_over_the_limit_is_refused_from_a_folder(tmp_path) -> None:
    store = FileStore(tmp_path)
    address = store.put(b"\x07" * 5000)
    assert store.get(address, max_bytes=5000) == b"\x07" * 5000
    assert store.size(address) == 5000
    with pytest.raises(BlobError, match=rf"blob {address} .* 5000 bytes, over the 4999-byte limit"):
        store.get(address, max_bytes=4999)
    assert StoreSet([store]).get(address, max_bytes=5000) == b"\x07" * 5000
    with pytest.raises(BlobError, match="over the 4999-byte limit"):
        StoreSet([store]).get(address, max_bytes=4999)


def test_a_blob_over_the_limit_is_refused_from_http(served) -> None:
    store, remote = served
    address = store.put(b"\x07" * 5000)
    assert remote.get(address, max_bytes=5000) == b"\x07" * 5000
    with pytest.raises(BlobError, match=rf"blob {address} .*5000 bytes, over the 4999-byte limit"):
        remote.get(address, max_bytes=4999)  # refused on Content-Length, body unread
    assert remote.size(address) == 5000


BIG = bytes(range(256)) * 12  # 3,072 bytes, over the 1,000-byte limit of the tests below


def lying_handler(mode: str, done: threading.Event) -> type[BaseHTTPRequestHandler]:
    """Sends BIG as /blobs/<its address> and then holds the connection open until ``done``:
    a client that read past its limit would hang (and time out) instead of refusing."""

    class Liar(QuietHandler):
        protocol_version = "HTTP/1.1" if mode == "chunked" else "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            if mode == "honest-length":
                self.send_header("Content-Length", str(len(BIG)))
            elif mode == "small-length":
                self.send_header("Content-Length", "999")  # under the limit; the body is not
            elif mode == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                if mode == "chunked":
                    for i in range(0, len(BIG), 500):
                        chunk = BIG[i : i + 500]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(BIG)
                self.wfile.flush()
                done.wait(10)

    return Liar


@pytest.mark.parametrize("mode", ["honest-length", "small-length", "no-length", "chunked"])
def test_http_never_reads_past_the_limit(mode) -> None:
    done = threading.Event()
    with http_server(lying_handler(mode, done)) as url:
        try:
            remote = HttpStore(url, timeout=3)
            address = address_of(BIG)
            if mode == "small-length":  # 999 bytes arrive, and are not the blob
                with pytest.raises(BlobError, match="hashes to") as caught:
                    remote.get(address, max_bytes=1000)
            else:
                with pytest.raises(BlobError, match="over the 1000-byte limit") as caught:
                    remote.get(address, max_bytes=1000)
            assert address in str(caught.value)
            assert not isinstance(caught.value, StoreUnreachable)  # refused, not timed out
            if mode == "honest-length":
                assert "3072 bytes" in str(caught.value)
        finally:
            done.set()


def test_cids_of_raw_blocks_follow_the_spec() -> None:
    # CIDv1 = multibase 'b' (base32, lower, unpadded) of varint 1, raw 0x55, sha2-256 0x12, 32
    digest = hashlib.sha256(b"").digest()
    by_hand = "b" + base64.b32encode(b"\x01\x55\x12\x20" + digest).decode().lower().rstrip("=")
    assert by_hand == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert cid_of(address_of(b"")) == by_hand
    assert address_of_cid(by_hand) == digest.hex()
    hello = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # ipfs's "hello world"
    assert cid_of(address_of(b"hello world")) == hello
    assert address_of_cid(hello) == address_of(b"hello world")
    assert cid_of("0x" + address_of(b"x").upper()) == cid_of(address_of(b"x"))
    for cid, why in [
        ("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", r"codec 0x70 \(dag-pb\)"),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "CIDv0"),
        ("bafkqaaa", r"identity\), not sha2-256"),
        ("bafkr4ihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", r"blake3\), not sha2-256"),
        ("zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA", "base32-lower"),
        (hello[:-8], "digest"),
        ("b", "base32-lower"),
        ("bafkre", "malformed"),
        ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk", "base32"),
    ]:
        with pytest.raises(BlobError, match=why):
            address_of_cid(cid)


@given(st.binary(max_size=100))
def test_cid_round_trip(data) -> None:
    cid = cid_of(address_of(data))
    assert cid.startswith("bafkrei") and len(cid) == 59
    assert address_of_cid(cid) == address_of(data)


def test_ipfs_gateway_store_against_a_trustless_gateway(tmp_path) -> None:
    good, bad = b"a dataset page", b"a checkpoint"
    blocks = {cid_of(address_of(good)): good, cid_of(address_of(bad)): b"substituted"}
    seen: list[dict] = []
    with http_server(fake_gateway(blocks, seen)) as url:
        gateway = IpfsGatewayStore(url + "/")
        assert gateway.get(address_of(good)) == good
        assert seen == [{"path": f"/ipfs/{cid_of(address_of(good))}", "query": "format=raw",
                         "accept": RAW}]  # fmt: skip
        with pytest.raises(BlobError, match="hashes to"):
            gateway.get(address_of(bad))  # the gateway is not trusted
        with pytest.raises(BlobError, match="HTTP 404"):
            gateway.get(address_of(b"nobody has this"))
        with pytest.raises(BlobError, match="over the 5-byte limit"):
            gateway.get(address_of(good), max_bytes=5)
        with pytest.raises(BlobError, match="pointers come from another store of the set"):
            gateway.get_pointer("ab" * 32)
        with pytest.raises(BlobError, match="read-only"):
            gateway.put(good)
        # in a set: blobs from IPFS, the pointer from the folder
        folder = FileStore(tmp_path)
        pointer = CheckpointPointer(state_root="ab" * 32, step=0, manifest=address_of(good),
                                    tensors=address_of(good))  # fmt: skip
        folder.put_pointer(pointer)
        stores = open_stores([f"ipfs+{url}", str(tmp_path)])
        assert stores.get_pointer("ab" * 32) == pointer
        assert stores.get(pointer.tensors) == good
        assert folder.put(bad) and stores.get(address_of(bad)) == bad  # substitute skipped


def test_trainproof_server_is_a_trustless_gateway_for_its_blobs(served) -> None:
    store, remote = served
    data = b"\x00\x01" * 3000
    address = store.put(data)
    gateway = IpfsGatewayStore(remote.url)
    assert gateway.get(address) == data
    assert gateway.size(address) == 6000
    cid = cid_of(address)

    def ask(path: str, method: str = "GET", accept: str | None = None):
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(remote.url + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, body = ask(f"/ipfs/{cid}?format=raw")
    assert (status, headers["Content-Type"], body) == (200, RAW, data)
    assert headers["Content-Disposition"].startswith("attachment")
    assert ask(f"/ipfs/{cid}", accept=RAW)[::2] == (200, data)  # Accept alone is enough
    status, headers, body = ask(f"/ipfs/{cid}?format=raw", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "6000", b"")
    status, headers, body = ask(f"/blobs/{address}", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "6000", b"")
    assert ask(f"/ipfs/{cid}")[0] == 406  # neither ?format=raw nor Accept: a raw block
    assert ask(f"/ipfs/{cid}?format=car")[0] == 406
    assert ask("/ipfs/bafkqaaa?format=raw")[::2] == (200, b"")  # the trustless probe
    dag_pb = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"  # not a raw block
    assert ask(f"/ipfs/{dag_pb}?format=raw")[0] == 400
    assert ask(f"/ipfs/{cid_of(address_of(b'absent'))}?format=raw")[0] == 404
    assert ask(f"/blobs/{address_of(b'absent')}", method="HEAD")[0] == 404
    assert ask("/blobs/not-an-address")[0] == 400
    assert ask(f"/blobs/{address}", method="POST")[0] == 501  # read-only


class Flaky:
    """A store whose first answers are failures (unreachable, then garbage), then the blob."""

    def __init__(self, data: bytes, failures: list[str]) -> None:
        self.data, self.failures, self.calls = data, list(failures), 0

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        self.calls += 1
        if self.failures:
            kind = self.failures.pop(0)
            if kind == "unreachable":
                raise StoreUnreachable("store unreachable at flaky: connection refused")
            return b"garbage"  # fetched, but it does not verify
        return self.data


def test_fetch_with_retry_retries_then_succeeds(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="trainproof.blobs")
    store, sleeps = Flaky(b"page", ["unreachable", "garbage"]), []
    got = fetch_with_retry(store, address_of(b"page"), what="dataset page 3", sleep=sleeps.append)
    assert got == b"page" and store.calls == 3 and sleeps == [0.5, 1.0]
    retries = [r.getMessage() for r in caplog.records if "event=fetch_retry" in r.getMessage()]
    assert len(retries) == 2
    address = address_of(b"page")
    assert retries[0].startswith(
        f"event=fetch_retry what=dataset page 3 address={address} try=1 retry_in_s=0.5 why="
    )
    assert "connection refused" in retries[0] and "hashes to" in retries[1]


def test_fetch_with_retry_gives_up_naming_what(tmp_path) -> None:
    sleeps: list[float] = []
    with pytest.raises(StoreUnreachable) as caught:
        fetch_with_retry(HttpStore(closed_port_url()), address_of(b"page"),
                         what="dataset page 3", tries=6, base_delay=0.5, max_delay=3,
                         sleep=sleeps.append)  # fmt: skip
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert str(caught.value).startswith("dataset page 3: store unreachable at")
    assert "gave up after 6 tries" in str(caught.value)
    with pytest.raises(BlobError, match=r"^manifest of checkpoint 2: blob .* is not in the store"):
        fetch_with_retry(FileStore(tmp_path), address_of(b"m"), what="manifest of checkpoint 2",
                         tries=2, sleep=sleeps.append)  # fmt: skip
    always_garbage = Flaky(b"page", ["garbage"] * 9)
    with pytest.raises(BlobError, match=r"^dataset page 3: blob .* hashes to"):
        fetch_with_retry(always_garbage, address_of(b"page"), what="dataset page 3", tries=3,
                         sleep=sleeps.append)  # fmt: skip
    assert always_garbage.calls == 3
    with pytest.raises(BlobError, match=r"^dataset page 3: .* over the 2-byte limit"):
        fetch_with_retry(Flaky(b"page", []), address_of(b"page"), what="dataset page 3",
                         tries=1, max_bytes=2)  # fmt: skip


# ---------------------------------------------------------------- property: never other bytes


class Canned:
    """A store that answers every get with fixed bytes, checking nothing (a lying store)."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer, self.blob = answer, b""

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        return self.answer(self.blob)


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """Stores of every kind, shared by the property's examples."""
    good = FileStore(tmp_path_factory.mktemp("good"))
    server = make_server(good)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hits: list[str] = []
    with http_server(garbage_handler(hits)) as garbage_url:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        kinds = {
            "good-folder": good,
            "good-http": HttpStore(url),
            "good-ipfs": IpfsGatewayStore(url),
            "missing-folder": FileStore(tmp_path_factory.mktemp("empty")),
            "garbage-http": HttpStore(garbage_url),
            "unreachable": HttpStore(closed_port_url()),
            "lying-longer": Canned(lambda blob: blob + b"!"),
            "lying-flipped": Canned(lambda blob: bytes(b ^ 1 for b in blob) or b"\x01"),
            "lying-huge": Canned(lambda blob: blob * 1000 + b"?"),
        }
        yield good, kinds
    server.shutdown()
    server.server_close()


KINDS = [
    "good-folder", "good-http", "good-ipfs", "missing-folder", "garbage-http",
    "unreachable", "lying-longer", "lying-flipped", "lying-huge",
]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    blob=st.binary(max_size=3000),
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
    max_bytes=st.one_of(st.none(), st.integers(0, 3000)),
)
def test_store_set_returns_exactly_the_blob_or_raises(mix, blob, kinds, max_bytes) -> None:
    good, stores = mix
    address = good.put(blob)
    for kind in kinds:
        if isinstance(stores[kind], Canned):
            stores[kind].blob = blob
    stores_set = StoreSet([stores[k] for k in kinds], names=kinds)
    fits = max_bytes is None or len(blob) <= max_bytes
    try:
        got = stores_set.get(address, max_bytes=max_bytes)
    except StoreUnreachable:
        assert set(kinds) == {"unreachable"}
        return
    except BlobError as e:
        assert not (fits and any(k.startswith("good") for k in kinds)), e
        assert set(kinds) != {"unreachable"}
        return
    assert got == blob and fits and any(k.startswith("good") for k in kinds)


def test_blobs_get_command_reads_a_set_of_stores(tmp_path, garbage) -> None:
    from typer.testing import CliRunner

    from trainproof.cli import app

    url, _ = garbage
    folder = FileStore(tmp_path / "store")
    address = folder.put(b"a dataset page")
    stores = ["--store", url, "--store", closed_port_url(), "--store", str(folder.root)]
    for name in (address, cid_of(address)):
        out = tmp_path / f"{name[:8]}.bin"
        res = CliRunner().invoke(app, ["blobs", "get", name, *stores, "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == {"address": address, "cid": cid_of(address), "bytes": 14}
        assert out.read_bytes() == b"a dataset page"
    res = CliRunner().invoke(app, ["blobs", "get", address_of(b"absent"), *stores, "--out",
                                   str(tmp_path / "x"), "--tries", "1"])  # fmt: skip
    assert res.exit_code == 2 and not (tmp_path / "x").exists()
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / 'x'}: blob ") and "any of 3 stores" in error
    assert url in error and str(folder.root) in error
