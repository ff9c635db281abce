"""A real local EVM node: anvil, from the pinned npm package ``@foundry-rs/anvil``.

``AnvilNode`` starts anvil on a free loopback port, waits until it answers JSON-RPC, and
stops it (and only it) on exit. Used by the demo and the integration tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from protocol.errors import TrainproofError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The mnemonic anvil funds by default; ape's test accounts derive from the same one.
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"


class AnvilError(TrainproofError):
    """anvil could not be found or started."""


def find_anvil() -> Path:
    """The anvil binary: ``$TRAINPROOF_ANVIL``, else the npm package's native binary, else PATH."""
    if env := os.environ.get("TRAINPROOF_ANVIL"):
        return Path(env)
    # the native binary sits in a platform package next to the wrapper; run it directly so
    # stopping the node never leaves a node.js wrapper's child behind
    for candidate in sorted((REPO_ROOT / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    if found := shutil.which("anvil"):
        return Path(found)
    raise AnvilError(
        "anvil not found: run `make test` or `npm install` in the repository root "
        "(it installs the pinned @foundry-rs/anvil), or set TRAINPROOF_ANVIL=/path/to/anvil"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rpc(url: str, method: str, params: list[object] | None = None, timeout: float = 5.0) -> object:
    """One raw JSON-RPC call (for readiness checks and node-specific methods)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise AnvilError(f"{method} failed: {reply['error']}")
    return reply["result"]


class AnvilNode:
    """A running anvil on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        block_time: float | None = None,
        chain_id: int = 31337,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.chain_id = chain_id
        self._args = [
            str(find_anvil()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(chain_id),
            "--mnemonic", DEFAULT_MNEMONIC,
            "--hardfork", "cancun",
            "--silent",
            *(["--block-time", str(block_time)] if block_time else []),
            *(extra_args or []),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> AnvilNode:
        self._proc = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise AnvilError(f"anvil exited with code {self._proc.returncode}: {err.strip()}")
            try:
                if int(str(rpc(self.url, "eth_chainId", timeout=1.0)), 16) == self.chain_id:
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AnvilError(f"anvil did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
