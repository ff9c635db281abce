"""Content-addressed blob store for published checkpoints and job data: folders, HTTP, IPFS.

- A **blob** is any byte string, addressed by ``sha256(blob)`` (64 hex characters). Readers
  re-hash every blob they fetch and reject one whose hash differs: a store can withhold data
  but never substitute it. Every ``get`` has a size limit (``max_bytes``, 1 GiB by default) and
  reads at most one byte past it, so a store cannot make a reader download without end either.
- A **checkpoint pointer** maps a committed state root to the blobs of that checkpoint
  (its manifest and its safetensors file). Pointers are not trusted either: whoever follows
  one verifies, after loading, that the checkpoint's state root is the committed one
  (``replay.data.publish``).

``BlobStore`` is the one small interface (``put``, ``get``, ``put_pointer``, ``get_pointer``);
``FileStore`` keeps blobs under a folder, ``HttpStore`` reads from ``trainproof blobs serve``,
``IpfsGatewayStore`` reads raw blocks from an IPFS trustless gateway (a blob *is* the raw block
of its CIDv1), and ``StoreSet`` reads from several untrusted places in turn, taking the first
blob that verifies. ``fetch_with_retry`` retries a fetch with exponential backoff. An
S3-compatible store is another implementation of the same four methods.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from protocol.errors import TrainproofError

log = logging.getLogger("trainproof.blobs")

#: Largest blob any reader accepts by default (a checkpoint of a large model still fits).
MAX_BLOB_BYTES = 1 << 30
#: Largest checkpoint pointer any reader accepts (one is about 250 bytes of JSON).
MAX_POINTER_BYTES = 1 << 20
#: The media type of an IPFS raw block (trustless gateway responses and requests).
IPLD_RAW = "application/vnd.ipld.raw"
#: The identity CID of the empty block: trustless gateways answer it as a probe.
PROBE_CID = "bafkqaaa"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_T = TypeVar("_T")
#: HTTP answers that come from a proxy, not from the store (it said nothing about the blob).
_GATEWAY_DOWN = frozenset({502, 503, 504})
#: CIDv1 prefix of a raw block hashed with sha2-256: version 1, codec raw (0x55),
#: multihash sha2-256 (0x12) of 32 bytes (0x20).
_RAW_SHA256_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
_CODECS = {0x55: "raw", 0x70: "dag-pb", 0x71: "dag-cbor", 0x0129: "dag-json", 0x0200: "json"}
_HASHES = {0x00: "identity", 0x11: "sha1", 0x12: "sha2-256", 0x13: "sha2-512", 0x1E: "blake3"}


class BlobError(TrainproofError):
    """A blob or pointer is missing, malformed, too large, or does not hash to its address."""


class StoreUnreachable(BlobError):
    """The store did not answer at all (connection refused, timeout): nothing was said about
    the checkpoint itself."""


class CheckpointPointer(BaseModel):
    """Where the blobs of the checkpoint with a given state root are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    step: int = Field(ge=0)
    manifest: str = Field(pattern=r"^[0-9a-f]{64}$", description="blob address of the manifest")
    tensors: str = Field(pattern=r"^[0-9a-f]{64}$", description="blob address of the safetensors")


def address_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_address(address: str, what: str = "blob address") -> str:
    address = address.removeprefix("0x").lower()
    if not _HEX64.match(address):
        raise BlobError(f"{what} {address!r} is not 64 hex characters (a sha256)")
    return address


def verified(address: str, data: bytes) -> bytes:
    """``data`` if it hashes to ``address``, else BlobError."""
    actual = address_of(data)
    if actual != address:
        raise BlobError(f"blob {address} hashes to {actual}: corrupted or substituted, rejected")
    return data


def _limit(max_bytes: int | None) -> int:
    limit = MAX_BLOB_BYTES if max_bytes is None else max_bytes
    if limit < 0:
        raise BlobError(f"max_bytes must be at least 0, not {limit}")
    return limit


def _too_large(what: str, size: int | str, limit: int, where: str) -> BlobError:
    return BlobError(f"{what} from {where} is {size} bytes, over the {limit}-byte limit")


def _checked(address: str, data: bytes, limit: int, where: str) -> bytes:
    """``data`` if it is within ``limit`` and hashes to ``address`` (size checked first)."""
    if len(data) > limit:
        raise _too_large(f"blob {address}", f"at least {len(data)}", limit, where)
    return verified(address, data)


# ---------------------------------------------------------------- CIDs


def cid_of(address: str) -> str:
    """The CIDv1 (base32) of the IPFS raw block whose bytes are the blob at ``address``."""
    digest = bytes.fromhex(check_address(address))
    return "b" + base64.b32encode(_RAW_SHA256_PREFIX + digest).decode().lower().rstrip("=")


def address_of_cid(cid: str) -> str:
    """The blob address (sha256 hex) named by a CIDv1 of a raw block hashed with sha2-256.

    Any other CID (CIDv0 ``Qm…``, another multibase, codec or hash) raises BlobError: only a
    raw block's bytes are the blob itself; a UnixFS file or DAG node is not.
    """
    if cid.startswith("Qm") and len(cid) == 46:
        raise BlobError(
            f"CID {cid!r} is a CIDv0 (a dag-pb node, e.g. a UnixFS file), not a raw block: "
            "ask for the CIDv1 of the raw block (`ipfs block put --cid-codec raw` stores one)"
        )
    if not cid.startswith("b") or not re.fullmatch(r"[a-z2-7]+", cid[1:]):
        raise BlobError(f"CID {cid!r} is not a base32-lower CIDv1 (multibase 'b')")
    body = cid[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as e:
        raise BlobError(f"CID {cid!r} is not valid base32: {e}") from None
    version, at = _uvarint(raw, 0, cid)
    codec, at = _uvarint(raw, at, cid)
    hash_code, at = _uvarint(raw, at, cid)
    length, at = _uvarint(raw, at, cid)
    if version != 1:
        raise BlobError(f"CID {cid!r} has version {version}, not 1")
    if codec != 0x55:
        name = _CODECS.get(codec, "unknown")
        raise BlobError(f"CID {cid!r} has codec {codec:#x} ({name}), not raw (0x55)")
    if hash_code != 0x12:
        name = _HASHES.get(hash_code, "unknown")
        raise BlobError(f"CID {cid!r} hashes with {hash_code:#x} ({name}), not sha2-256 (0x12)")
    digest = raw[at:]
    if length != 32 or len(digest) != 32:
        raise BlobError(f"CID {cid!r} has a {len(digest)}-byte digest, not 32 (sha2-256)")
    return digest.hex()


def _uvarint(raw: bytes, at: int, cid: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(at, min(len(raw), at + 9)):
        value |= (raw[i] & 0x7F) << shift
        if raw[i] < 0x80:
            return value, i + 1
        shift += 7
    raise BlobError(f"CID {cid!r} is truncated or malformed (bad varint)")


# ---------------------------------------------------------------- stores


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, address: str, max_bytes: int | None = None) -> bytes: ...
    def put_pointer(self, pointer: CheckpointPointer) -> None: ...
    def get_pointer(self, state_root: str) -> CheckpointPointer: ...


class FileStore:
    """Blobs as files ``<root>/blobs/ab/cdef…``, pointers as ``<root>/roots/<state root>.json``."""

    writable = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._sync = True

    @contextmanager
    def bulk(self) -> Iterator[FileStore]:
        """Many puts with one sync at the end (a bundle's thousands of batches): each blob
        is still written atomically, and all of them are on disk when the block exits."""
        self._sync = False
        try:
            yield self
        finally:
            self._sync = True
            os.sync()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _blob_path(self, address: str) -> Path:
        address = check_address(address)
        return self.root / "blobs" / address[:2] / address[2:]

    def _pointer_path(self, state_root: str) -> Path:
        return self.root / "roots" / f"{check_address(state_root, 'state root')}.json"

    def put(self, data: bytes) -> str:
        if len(data) > MAX_BLOB_BYTES:
            raise BlobError(f"blob of {len(data)} bytes exceeds the {MAX_BLOB_BYTES}-byte limit")
        address = address_of(data)
        path = self._blob_path(address)
        if not path.exists():
            _write_atomic(path, data, self._sync)
        return address

    def size(self, address: str) -> int | None:
        """The size of the stored file (not verified), BlobError if it is not there."""
        path = self._blob_path(address)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise BlobError(f"blob {address} is not in the store at {self.root}") from None

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        address, limit = check_address(address), _limit(max_bytes)
        path = self._blob_path(address)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise _too_large(f"blob {address}", size, limit, str(self.root))
                data = f.read(limit + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobError(f"blob {address} is not in the store at {self.root}") from None
        except OSError as e:
            raise BlobError(f"blob {address} unreadable in {self.root}: {e}") from None
        return _checked(address, data, limit, str(self.root))

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        _write_atomic(self._pointer_path(pointer.state_root), pointer.model_dump_json().encode())

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        path = self._pointer_path(state_root)
        if not path.is_file():
            raise BlobError(f"no checkpoint with state root {state_root} in {self.root}")
        with open(path, "rb") as f:
            data = f.read(MAX_POINTER_BYTES + 1)
        if len(data) > MAX_POINTER_BYTES:
            raise BlobError(
                f"pointer for {state_root} in {self.root} is over {MAX_POINTER_BYTES} bytes"
            )
        return _parse_pointer(data, state_root)


class MemoryStore:
    """Blobs and pointers in a dict: for a bundle's address before it is published
    anywhere, and for short-lived processes that keep nothing."""

    writable = True

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._pointers: dict[str, CheckpointPointer] = {}

    def put(self, data: bytes) -> str:
        if len(data) > MAX_BLOB_BYTES:
            raise BlobError(f"blob of {len(data)} bytes exceeds the {MAX_BLOB_BYTES}-byte limit")
        address = address_of(data)
        self._blobs[address] = bytes(data)
        return address

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        address, limit = check_address(address), _limit(max_bytes)
        if address not in self._blobs:
            raise BlobError(f"blob {address} is not in memory")
        data = self._blobs[address]
        if len(data) > limit:
            raise _too_large(f"blob {address}", len(data), limit, "memory")
        return data

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        self._pointers[pointer.state_root] = pointer

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        if state_root not in self._pointers:
            raise BlobError(f"no checkpoint with state root {state_root} in memory")
        return self._pointers[state_root]


class _HttpReader:
    """GETs with a size limit (Content-Length checked first, then at most limit + 1 bytes)."""

    writable = False

    def __init__(self, url: str, timeout: float, kind: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BlobError(f"{kind} URL {url!r} must be http:// or https:// with a host")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _open(self, path: str, method: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        request = urllib.request.Request(f"{self.url}{path}", headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in _GATEWAY_DOWN:  # a proxy in front of the store: it did not answer
                raise StoreUnreachable(f"store unreachable at {self.url}: HTTP {e.code}") from None
            raise BlobError(f"{self.url}{path}: HTTP {e.code}") from None
        except (OSError, http.client.HTTPException) as e:
            raise StoreUnreachable(f"store unreachable at {self.url}: {e}") from None

    def _fetch(
        self, path: str, limit: int, what: str, headers: dict[str, str] | None = None
    ) -> bytes:
        where = f"{self.url}{path}"
        with self._open(path, "GET", headers or {}) as resp:
            claimed = _content_length(resp)
            if claimed is not None and claimed > limit:
                raise _too_large(what, claimed, limit, f"{where} (Content-Length)")
            try:
                data = resp.read(limit + 1)
            except http.client.IncompleteRead as e:
                raise BlobError(f"{where}: answer cut short after {len(e.partial)} bytes") from None
            except (OSError, http.client.HTTPException) as e:
                raise StoreUnreachable(f"store unreachable at {self.url}: {e}") from None
        if len(data) > limit:
            raise _too_large(what, f"more than {limit}", limit, where)
        return data

    def _size(self, path: str, headers: dict[str, str] | None = None) -> int | None:
        with self._open(path, "HEAD", headers or {}) as resp:
            return _content_length(resp)

    def put(self, data: bytes) -> str:
        raise BlobError(f"{self!r} is read-only: publish into the server's folder (FileStore)")

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        raise BlobError(f"{self!r} is read-only: publish into the server's folder (FileStore)")


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class HttpStore(_HttpReader):
    """Read-only client of ``trainproof blobs serve``; every blob is re-hashed on arrival."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        super().__init__(url, timeout, "blob store")

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        address, limit = check_address(address), _limit(max_bytes)
        path = f"/blobs/{address}"
        return _checked(address, self._fetch(path, limit, f"blob {address}"), limit, self.url)

    def size(self, address: str) -> int | None:
        """The Content-Length a HEAD request claims (not verified; None if none is sent)."""
        return self._size(f"/blobs/{check_address(address)}")

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        root = check_address(state_root, "state root")
        data = self._fetch(f"/roots/{root}", MAX_POINTER_BYTES, f"pointer for state root {root}")
        return _parse_pointer(data, root)


class IpfsGatewayStore(_HttpReader):
    """Read-only store over an IPFS trustless gateway: the blob with sha256 address ``A`` is
    the raw block ``cid_of(A)``, fetched with ``GET /ipfs/<cid>?format=raw`` (``Accept:
    application/vnd.ipld.raw``) and re-hashed here: the gateway is never trusted. IPFS holds
    no checkpoint pointers; those come from another store of a :class:`StoreSet`."""

    def __init__(self, gateway_url: str, timeout: float = 30.0) -> None:
        super().__init__(gateway_url, timeout, "IPFS gateway")

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        address, limit = check_address(address), _limit(max_bytes)
        path = f"/ipfs/{cid_of(address)}?format=raw"
        data = self._fetch(path, limit, f"blob {address}", {"Accept": IPLD_RAW})
        return _checked(address, data, limit, self.url)

    def size(self, address: str) -> int | None:
        """The Content-Length a HEAD request claims (not verified; None if none is sent)."""
        return self._size(f"/ipfs/{cid_of(address)}?format=raw", {"Accept": IPLD_RAW})

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        check_address(state_root, "state root")
        raise BlobError(
            f"the IPFS gateway {self.url} holds blobs only, no checkpoint pointers: "
            "pointers come from another store of the set (a folder or a trainproof server)"
        )


def _store_name(store: object) -> str:
    if isinstance(store, FileStore):
        return str(store.root)
    if isinstance(store, IpfsGatewayStore):
        return f"ipfs+{store.url}"
    if isinstance(store, HttpStore):
        return store.url
    return repr(store)


class StoreSet:
    """Several untrusted stores read as one: ``get`` and ``get_pointer`` ask each store in
    order and return the first answer that verifies, skipping (and logging) a store that is
    unreachable, lacks it, serves bytes that do not hash to the address, or serves too much.
    ``put`` and ``put_pointer`` write to every writable store."""

    def __init__(self, stores: Sequence[BlobStore], names: Sequence[str] | None = None) -> None:
        if not stores:
            raise BlobError("a store set needs at least one store")
        if names is not None and len(names) != len(stores):
            raise BlobError(f"{len(names)} names given for {len(stores)} stores")
        self.stores = list(stores)
        self.names = list(names) if names is not None else [_store_name(s) for s in stores]

    def __repr__(self) -> str:
        return f"StoreSet({self.names!r})"

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        address, limit = check_address(address), _limit(max_bytes)

        def attempt(store: BlobStore, name: str) -> bytes:
            return _trusted_get(store, address, limit, name)

        return self._first(attempt, f"blob {address}", address)

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        root = check_address(state_root, "state root")

        def attempt(store: BlobStore, name: str) -> CheckpointPointer:
            pointer = store.get_pointer(root)
            if pointer.state_root != root:
                raise BlobError(f"pointer for {root} names state root {pointer.state_root}")
            return pointer

        return self._first(attempt, f"pointer for state root {root}", root)

    def _first(self, attempt: Callable[[BlobStore, str], _T], what: str, address: str) -> _T:
        reasons: list[str] = []
        unreachable = 0
        for store, name in zip(self.stores, self.names, strict=True):
            try:
                return attempt(store, name)
            except StoreUnreachable as e:
                unreachable += 1
                why = str(e)
            except (BlobError, OSError) as e:
                why = str(e)
            log.warning("event=blob_unusable store=%s address=%s why=%r", name, address, why)
            reasons.append(f"{name}: {why}")
        error = StoreUnreachable if unreachable == len(self.stores) else BlobError
        raise error(
            f"{what} not usable from any of {len(self.stores)} stores: " + "; ".join(reasons)
        )

    def put(self, data: bytes) -> str:
        return self._to_writable(lambda store: store.put(data), f"blob {address_of(data)}")

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        self._to_writable(lambda store: store.put_pointer(pointer), f"pointer {pointer.state_root}")

    def _to_writable(self, write: Callable[[BlobStore], _T], what: str) -> _T:
        written: list[_T] = []
        reasons: list[str] = []
        for store, name in zip(self.stores, self.names, strict=True):
            if not getattr(store, "writable", True):
                reasons.append(f"{name}: read-only")
                continue
            try:
                written.append(write(store))
            except (BlobError, OSError) as e:
                log.warning("event=blob_put_failed store=%s what=%s why=%r", name, what, str(e))
                reasons.append(f"{name}: {e}")
        if not written:
            raise BlobError(f"{what} not written: no writable store took it: " + "; ".join(reasons))
        return written[0]


def _trusted_get(store: BlobStore, address: str, limit: int, name: str) -> bytes:
    """``store.get`` checked here for size and hash, unless the store is one of this module's,
    which check both themselves (another implementation is not trusted to)."""
    data = store.get(address, max_bytes=limit)
    if type(store) in (FileStore, HttpStore, IpfsGatewayStore, StoreSet):
        return data
    return _checked(address, data, limit, name)


def open_store(location: str) -> BlobStore:
    """A store from a folder path, an http(s) URL of ``trainproof blobs serve``, or an IPFS
    trustless gateway written ``ipfs+http://host:port`` / ``ipfs+https://host``."""
    if location.startswith(("ipfs+http://", "ipfs+https://")):
        return IpfsGatewayStore(location.removeprefix("ipfs+"))
    if location.startswith("ipfs+"):
        raise BlobError(f"IPFS gateway {location!r} must be ipfs+http:// or ipfs+https://")
    if location.startswith(("http://", "https://")):
        return HttpStore(location)
    return FileStore(Path(location))


def open_stores(locations: Sequence[str]) -> StoreSet:
    """A :class:`StoreSet` over ``locations`` (each as :func:`open_store` reads it), in order."""
    if isinstance(locations, str):
        locations = [locations]
    return StoreSet([open_store(loc) for loc in locations], names=list(locations))


def fetch_with_retry(
    store: BlobStore,
    address: str,
    *,
    what: str,
    tries: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    max_bytes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """The blob at ``address``, verified, asking ``store`` up to ``tries`` times with
    exponential backoff (``base_delay``, doubled each time, at most ``max_delay``). A blob that
    arrives but does not verify (or is too large) counts as a failure. Raises the last error,
    of the same class (``StoreUnreachable`` stays one), its message starting with ``what``."""
    if tries < 1:
        raise BlobError(f"{what}: tries must be at least 1, not {tries}")
    try:
        address, limit = check_address(address), _limit(max_bytes)
    except BlobError as e:
        raise BlobError(f"{what}: {e}") from None
    last: BlobError | None = None
    for attempt in range(1, tries + 1):
        try:
            return _trusted_get(store, address, limit, repr(store))
        except (BlobError, OSError) as e:
            last = e if isinstance(e, BlobError) else StoreUnreachable(str(e))
        if attempt < tries:
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            log.warning(
                "event=fetch_retry what=%s address=%s try=%d retry_in_s=%.1f why=%r",
                what, address, attempt, delay, str(last),
            )  # fmt: skip
            sleep(delay)
    assert last is not None
    log.warning(
        "event=fetch_failed what=%s address=%s tries=%d why=%r", what, address, tries, str(last)
    )
    error = StoreUnreachable if isinstance(last, StoreUnreachable) else BlobError
    raise error(f"{what}: {last} (gave up after {tries} tries)") from None


def _parse_pointer(data: bytes, state_root: str) -> CheckpointPointer:
    try:
        pointer = CheckpointPointer.model_validate_json(data)
    except ValueError as e:
        raise BlobError(f"pointer for state root {state_root} is malformed: {e}") from None
    if pointer.state_root != check_address(state_root, "state root"):
        raise BlobError(f"pointer for {state_root} names state root {pointer.state_root}")
    return pointer


def _write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- server


def make_server(store: FileStore, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A read-only HTTP server of a FileStore: ``GET|HEAD /blobs/<sha256>``, ``GET
    /roots/<root>``, and ``GET|HEAD /ipfs/<cid>?format=raw`` (a minimal IPFS trustless gateway
    for the raw blocks that are its blobs, ``bafkqaaa`` probe included)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "trainproof-blobs/0"

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _answer(self, head: bool) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            route = parts[0] if len(parts) == 2 else ""
            headers = {"Cache-Control": "public, max-age=31536000, immutable"}
            body: bytes | None = None
            try:
                if route == "blobs":
                    kind, address = "application/octet-stream", self._address(parts[1])
                elif route == "roots":
                    kind, address = "application/json", None
                    pointer = store.get_pointer(self._address(parts[1]))
                    body = pointer.model_dump_json().encode()
                elif route == "ipfs":
                    kind, address = IPLD_RAW, self._raw_block(parts[1], url.query)
                    headers |= {
                        "Content-Disposition": f'attachment; filename="{parts[1]}.bin"',
                        "X-Content-Type-Options": "nosniff",
                        "Etag": f'"{parts[1]}.raw"',
                        "Vary": "Accept",
                    }
                else:
                    raise _NotFound("use /blobs/<sha256>, /roots/<root> or /ipfs/<cid>?format=raw")
                if address == "":  # the identity CID of the empty block (a probe)
                    body, size = b"", 0
                elif address is not None:
                    body = None if head else store.get(address)
                    size = store.size(address) if head else len(body or b"")
                else:
                    size = len(body or b"")
            except _BadRequest as e:
                self._reply(e.status, {"error": str(e)}, head)
                return
            except BlobError as e:
                self._reply(HTTPStatus.NOT_FOUND, {"error": str(e)}, head)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if body is not None and not head:
                self.wfile.write(body)

        def _raw_block(self, cid: str, query: str) -> str:
            """The address of the raw block asked for ("" for the probe ``bafkqaaa``)."""
            formats = urllib.parse.parse_qs(query).get("format", [])
            if not (IPLD_RAW in (self.headers.get("Accept") or "") or formats == ["raw"]):
                raise _BadRequest(
                    f"only raw blocks are served: ?format=raw or Accept: {IPLD_RAW}",
                    HTTPStatus.NOT_ACCEPTABLE,
                )
            if cid == PROBE_CID:
                return ""
            try:
                return address_of_cid(cid)
            except BlobError as e:
                raise _BadRequest(str(e)) from None

        def _address(self, text: str) -> str:
            try:
                return check_address(text)
            except BlobError as e:
                raise _BadRequest(str(e)) from None

        def _reply(self, status: HTTPStatus, obj: dict[str, str], head: bool = False) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.info("event=request client=%s line=%r", self.client_address[0], format % args)

    return ThreadingHTTPServer((host, port), Handler)


class _BadRequest(BlobError):
    """The request itself is malformed (the server answers 400, or ``status``)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class _NotFound(BlobError):
    """No such route (the server answers 404)."""
