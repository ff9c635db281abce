"""The dashboard in headless Chromium (Debian package `chromium`) against a seeded index: the
rendered job list carries each job's status badge and bundle check, a job view its bundle
line (part and why of an invalid bundle), and a dispute view shows the level it has
descended to. A screenshot is kept under bench/results/."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from api.db import make_engine, make_sessions
from api.seed import seed
from protocol.anvil import free_port

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    import uvicorn

    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path_factory.mktemp('dash')}/d.db"))
    seed(sessions, jobs=12)
    port = free_port()
    config = uvicorn.Config(create_app(sessions), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def chromium(*args: str, url: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
           *args, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return out.stdout


def test_job_list_rendered(server) -> None:
    dom = chromium("--dump-dom", url=server + "/dashboard/?live=0")
    assert 'id="jobs"' in dom, dom[-2000:]
    assert "12 jobs" in dom
    for status in ("open", "training", "committed", "disputed", "finalized", "rejected"):
        assert f'data-status="{status}"' in dom
    assert dom.count('class="job"') == 12
    for bundle in ("verified", "unavailable", "invalid", "unchecked"):  # seed.BUNDLE_CHECKS
        assert f'data-bundle="{bundle}"' in dom
    assert "unverifiable: inputs invalid" in dom


def test_job_view_shows_the_bundle_check(server) -> None:
    dom = chromium("--dump-dom", url=server + "/dashboard/?live=0#/jobs/2")
    assert '<span id="bundle">' in dom, dom[-2000:]
    assert 'data-bundle="invalid"' in dom and "batch of step 3" in dom


def test_dispute_view_rendered(server) -> None:
    url = server + "/dashboard/?live=0#/disputes/1"
    dom = chromium("--dump-dom", url=url)
    assert 'id="dispute" data-level="partial"' in dom, dom[-2000:]
    assert '<li class="current" data-level="partial">' in dom
    for done in ("trace", "op", "chunk", "element"):
        assert f'<li class="done" data-level="{done}">' in dom
    assert "trainer to move" in dom
    RESULTS.mkdir(parents=True, exist_ok=True)
    shot = RESULTS / "api_dashboard_dispute.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,900", url=url)
    assert shot.exists() and shot.stat().st_size > 1000
    list_shot = RESULTS / "api_dashboard_jobs.png"
    chromium(
        f"--screenshot={list_shot}", "--window-size=1200,900", url=server + "/dashboard/?live=0"
    )
    assert list_shot.exists()
