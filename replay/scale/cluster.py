"""Connecting to a Ray cluster, and starting a local one (tests, benchmarks, one-box farms).

``connect("auto")`` joins the cluster this machine belongs to (``ray start`` ran here);
``connect("HOST:PORT")`` the one whose head listens there. Workers import this package from
their own Python environment (the cluster's machines run the same install), so nothing but
task arguments and results ever crosses the wire: no code is shipped from a coordinator.

:class:`LocalCluster` starts a head node on the loopback interface only, with a bounded
number of CPUs, and stops every process it started when it exits.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

from pydantic import AfterValidator

from protocol.errors import TrainproofError

#: How long a head node may take to start before LocalCluster gives up.
START_TIMEOUT_S = 60.0
#: Environment of every Ray process this module starts: no usage reports, no dashboard
#: agents phoning home, warnings about GPUs that are not there off.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


class ClusterError(TrainproofError):
    """Ray is missing, or the cluster could not be reached or started."""


_ADDRESS = re.compile(r"^(auto|[A-Za-z0-9.\-]+:\d{1,5})$")
#: Times Ray runs a task again whose worker died (process killed, node lost); every task
#: of ours is a pure function of its arguments, so running it again is safe.
TASK_RETRIES = 3


def check_address(address: str) -> str:
    """``auto`` or ``HOST:PORT``, else one line saying so (before any network is tried)."""
    if not _ADDRESS.match(address):
        raise ClusterError(
            f"--ray {address!r} is not a Ray address: give auto (the cluster this machine "
            "joined with `ray start`) or the head's HOST:PORT"
        )
    return address


def _check_address(address: str) -> str:
    try:
        return check_address(address)
    except ClusterError as e:
        raise ValueError(str(e).removeprefix("--ray ")) from None


#: What ``--ray`` takes: ``auto`` or the head's ``HOST:PORT``.
RayAddress = Annotated[str, AfterValidator(_check_address)]


def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise ClusterError("ray is not installed: run `make setup` (it is in pyproject)") from None
    return ray


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``); returns the ray module.

    Joining twice is a no-op. A cluster that does not answer is one line saying what to do.
    """
    global _joined
    ray = _ray()
    if ray.is_initialized():
        if _joined == address:
            return ray
        ray.shutdown()  # one cluster per process: leave the other one
    check_address(address)
    if address != "auto":
        _probe(address)
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        ray.init(
            address=address, log_to_driver=False, logging_level="warning",
            include_dashboard=False, configure_logging=True,
        )  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(
            f"no Ray cluster at {address!r} ({first}): start one with `ray start --head` "
            "(or give its HOST:PORT)"
        ) from None
    _joined = address
    return ray


_joined: str | None = None
#: Seconds to wait for a head's port to answer before saying there is no cluster there.
PROBE_TIMEOUT_S = 3.0


def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at HOST:PORT (``ray.init`` would wait
    minutes for a head that is not there)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        raise ClusterError(
            f"no Ray cluster at {address!r} ({e.strerror or type(e).__name__}): start one with "
            "`ray start --head` (or give its HOST:PORT)"
        ) from None


def disconnect() -> None:
    global _joined
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
    _joined = None


def cluster_cpus() -> float:
    """CPUs the joined cluster offers (what the farm sizes its queue by)."""
    return float(_ray().cluster_resources().get("CPU", 0.0))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """A Ray head node on 127.0.0.1 with ``cpus`` CPUs, as a context manager.

    ``address`` is what ``connect`` and ``--ray`` take. The node runs in its own process group
    (``ray start --block``) with its own temporary folder, so stopping it stops exactly the
    processes it started, and nothing of another cluster on the machine.
    """

    def __init__(self, cpus: int = 2, object_store_mb: int = 256) -> None:
        self.cpus = cpus
        self.object_store_mb = object_store_mb
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        # a short path: Ray's unix sockets live under it (108-byte limit)
        self._tmp = Path(tempfile.mkdtemp(prefix="tpray-", dir="/tmp"))

    def __enter__(self) -> LocalCluster:
        ray_cli = Path(sys.executable).with_name("ray")
        if not ray_cli.exists():
            raise ClusterError(f"{ray_cli} is missing: run `make setup`")
        self._log = open(self._tmp / "head.log", "wb")
        self._proc = subprocess.Popen(
            [
                str(ray_cli), "start", "--head", "--block",
                "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                "--num-cpus", str(self.cpus), "--num-gpus", "0",
                "--include-dashboard", "false", "--disable-usage-stats",
                "--object-store-memory", str(self.object_store_mb << 20),
                "--min-worker-port", "0", "--max-worker-port", "0",
                "--temp-dir", str(self._tmp),
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **RAY_ENV},
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self._tmp / "head.log").read_text(errors="replace")[-2000:]
                self.__exit__(None, None, None)
                raise ClusterError(f"the local Ray head did not start: {tail.strip()[-300:]}")
            time.sleep(0.3)
        return self

    def _ready(self) -> bool:
        session = self._tmp / "session_latest"
        return session.exists() and "Ray runtime started" in (self._tmp / "head.log").read_text(
            errors="replace"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            pgid = os.getpgid(self._proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:  # anything of the group still alive
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc = None
        if hasattr(self, "_log"):
            self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
