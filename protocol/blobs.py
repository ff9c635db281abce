"""Content-addressed blob store for published checkpoints (filesystem, served over HTTP).

- A **blob** is any byte string, addressed by ``sha256(blob)`` (64 hex characters). Readers
  re-hash every blob they fetch and reject one whose hash differs: a store can withhold data
  but never substitute it.
- A **checkpoint pointer** maps a committed state root to the blobs of that checkpoint
  (its manifest and its safetensors file). Pointers are not trusted either: whoever follows
  one verifies, after loading, that the checkpoint's state root is the committed one
  (``replay.data.publish``).

``BlobStore`` is the one small interface (``put``, ``get``, ``put_pointer``, ``get_pointer``);
``FileStore`` keeps blobs under a folder, ``HttpStore`` reads from ``trainproof blobs serve``.
An S3-compatible store is another implementation of the same four methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from protocol.errors import TrainproofError

log = logging.getLogger("trainproof.blobs")

#: Largest blob any reader accepts (a checkpoint of a large model still fits).
MAX_BLOB_BYTES = 1 << 30
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, address: str) -> bytes: ...
    def put_pointer(self, pointer: CheckpointPointer) -> None: ...
    def get_pointer(self, state_root: str) -> CheckpointPointer: ...


class FileStore:
    """Blobs as files ``<root>/blobs/ab/cdef…``, pointers as ``<root>/roots/<state root>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
            _write_atomic(path, data)
        return address

    def get(self, address: str) -> bytes:
        path = self._blob_path(address)
        if not path.is_file():
            raise BlobError(f"blob {address} is not in the store at {self.root}")
        if path.stat().st_size > MAX_BLOB_BYTES:
            raise BlobError(f"blob {address} exceeds the {MAX_BLOB_BYTES}-byte limit")
        return verified(check_address(address), path.read_bytes())

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        _write_atomic(self._pointer_path(pointer.state_root), pointer.model_dump_json().encode())

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        path = self._pointer_path(state_root)
        if not path.is_file():
            raise BlobError(f"no checkpoint with state root {state_root} in {self.root}")
        return _parse_pointer(path.read_bytes(), state_root)


class HttpStore:
    """Read-only client of ``trainproof blobs serve``; every blob is re-hashed on arrival."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise BlobError(f"blob store URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _fetch(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout) as resp:
                data = resp.read(MAX_BLOB_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise BlobError(f"{self.url}{path}: HTTP {e.code}") from None
        except OSError as e:
            raise StoreUnreachable(f"store unreachable at {self.url}: {e}") from None
        if len(data) > MAX_BLOB_BYTES:
            raise BlobError(f"{self.url}{path}: more than {MAX_BLOB_BYTES} bytes, rejected")
        return data

    def put(self, data: bytes) -> str:
        raise BlobError("the HTTP store is read-only: publish into the server's folder (FileStore)")

    def get(self, address: str) -> bytes:
        address = check_address(address)
        return verified(address, self._fetch(f"/blobs/{address}"))

    def put_pointer(self, pointer: CheckpointPointer) -> None:
        raise BlobError("the HTTP store is read-only: publish into the server's folder (FileStore)")

    def get_pointer(self, state_root: str) -> CheckpointPointer:
        root = check_address(state_root, "state root")
        return _parse_pointer(self._fetch(f"/roots/{root}"), root)


def open_store(location: str) -> BlobStore:
    """A store from a folder path or an http(s) URL."""
    if location.startswith(("http://", "https://")):
        return HttpStore(location)
    return FileStore(Path(location))


def _parse_pointer(data: bytes, state_root: str) -> CheckpointPointer:
    try:
        pointer = CheckpointPointer.model_validate_json(data)
    except ValueError as e:
        raise BlobError(f"pointer for state root {state_root} is malformed: {e}") from None
    if pointer.state_root != check_address(state_root, "state root"):
        raise BlobError(f"pointer for {state_root} names state root {pointer.state_root}")
    return pointer


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- server


def make_server(store: FileStore, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A read-only HTTP server of a FileStore: ``GET /blobs/<sha256>``, ``GET /roots/<root>``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "trainproof-blobs/0"

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            try:
                if len(parts) == 2 and parts[0] == "blobs":
                    body, kind = store.get(parts[1]), "application/octet-stream"
                elif len(parts) == 2 and parts[0] == "roots":
                    body, kind = (
                        store.get_pointer(parts[1]).model_dump_json().encode(),
                        "application/json",
                    )
                else:
                    self._reply(
                        HTTPStatus.NOT_FOUND, {"error": "use /blobs/<sha256> or /roots/<root>"}
                    )
                    return
            except BlobError as e:
                self._reply(HTTPStatus.NOT_FOUND, {"error": str(e)})
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
            self.end_headers()
            self.wfile.write(body)

        def _reply(self, status: HTTPStatus, obj: dict[str, str]) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.info("event=request client=%s line=%r", self.client_address[0], format % args)

    return ThreadingHTTPServer((host, port), Handler)
