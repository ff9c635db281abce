"""Acceptance (issue 16): a new operator's walkthrough, scripted. From a folder outside the
checkout, with the installed ``trainproof`` only, against anvil: deploy, register a job, run
a cheating trainer, a watcher and the verification-status API; check what each prints at
start, the P&L lines as they go, and the final summaries. Then the one-line errors of the
mistakes a new operator makes, each against the same chain."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from protocol.anvil import AnvilNode, free_port, rpc

pytestmark = [pytest.mark.xdist_group(name="services"), pytest.mark.slow]

TRAINPROOF = str(Path(sys.executable).parent / "trainproof")
ETH = 10**18
FAULT = "step=3,op=222,elem=5"  # op 222 is a MATMUL: the dispute goes down to the one-step


def run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINPROOF, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kw)  # fmt: skip


def spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen([TRAINPROOF, *args], cwd=cwd, stdout=out, stderr=out,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def wait_for(what: str, check, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


@pytest.fixture
def outside(tmp_path_factory) -> Path:
    """A working folder that is not the checkout nor inside it."""
    folder = tmp_path_factory.mktemp("operator")
    assert Path(__file__).resolve().parent.parent not in folder.resolve().parents
    return folder


def test_walkthrough_from_outside_the_checkout(outside: Path) -> None:
    with AnvilNode() as node:
        url = node.url
        dep = outside / "deployment.json"
        res = run(["deploy", "--rpc", url, "--out", str(dep)], outside)
        assert res.returncode == 0, res.stderr[-2000:]
        deployment = json.loads(dep.read_text())
        res = run(["job", "bundle", "--example", "digits-mlp", "--steps", "4", "--out",
                   "bundle"], outside)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        bundle = json.loads(res.stdout.strip().splitlines()[-1])["bundle"]
        res = run(["job", "register", "--rpc", url, "--deployment", str(dep), "--test-account",
                   "1", "--db", "requester.db", "--bundle", "bundle", "--store", "store",
                   "--every", "2", "--reward",
                   str(ETH), "--stake", str(2 * ETH), "--bond", str(ETH // 10), "--window",
                   "3600", "--clock", "3600", "--train-time", "600"], outside)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads(res.stdout.strip().splitlines()[-1]) == {"job": 1, "bundle": bundle}
        assert "registered job 1" in res.stderr

        common = ["--rpc", url, "--deployment", str(dep), "--poll", "0.1"]
        api_port = free_port()
        logs = {n: outside / f"{n}.log" for n in ("prover", "challenger", "api")}
        api = spawn(["api", "serve", "--rpc", url, "--deployment", str(dep), "--db", "api.db",
                     "--port", str(api_port), "--confirmations", "0", "--poll", "0.2"],
                    outside, logs["api"])  # fmt: skip
        watcher = spawn(["challenger", "watch", *common, "--store", "store", "--db", "c.db",
                         "--test-account", "3", "--rate", "1", "--confirmations", "0"],
                        outside, logs["challenger"])  # fmt: skip
        trainer = spawn(["prover", "run", *common, "--job", "1", "--store", "store",
                         "--db", "p.db", "--test-account", "2", "--fault", FAULT],
                        outside, logs["prover"])  # fmt: skip
        procs = [api, watcher, trainer]

        def text(name: str) -> str:
            return logs[name].read_text(errors="replace")

        try:
            wait_for("the trainer to finish", lambda: trainer.poll() is not None)
            assert trainer.returncode == 0, text("prover")[-3000:]
            assert '{"done":true,"status":"REJECTED","games":1}' in text("prover")
            wait_for("the watcher's withdrawal", lambda: "event=withdrew" in text("challenger"))
            status_url = f"http://127.0.0.1:{api_port}/v1/jobs/1/status"
            wait_for("the API to index the verdict",
                     lambda: get(status_url)["status"] == "rejected")  # fmt: skip
        finally:
            for p in (watcher, api):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

        address = deployment["contracts"]["TrainProof"]
        prover_log, watcher_log, api_log = text("prover"), text("challenger"), text("api")
        for role, log in (("prover", prover_log), ("challenger", watcher_log)):
            start = re.search(rf"event=start role={role} address=(0x[0-9a-fA-F]{{40}}) "
                              rf"balance='([0-9.]+) ETH' chain_id=31337 .*contract={address} "
                              r"code=ok\(\d+ bytes\)", log)  # fmt: skip
            assert start, (role, log[:3000])
            assert "watch=" in log
            assert "Traceback" not in log, log[-3000:]
        assert re.search(r"job 1 \(digits-mlp, bundle [0-9a-f]{12}…, 4 steps, status OPEN",
                         prover_log), prover_log[:3000]  # fmt: skip
        assert re.search(rf"start chain_id=31337 .*contract={address} code=ok", api_log), api_log
        # the P&L as it goes: the watcher posted the bond, the trainer its stake
        assert re.search(r"event=pnl role=challenger .*posted='0.1 ETH'", watcher_log)
        assert re.search(r"event=pnl role=prover .*posted='2 ETH'", prover_log)
        # the end: outcomes in words, statuses by name, amounts in ETH
        assert "event=outcome job=1 won game 1 at the one-step" in watcher_log
        assert "lost game 1 at the one-step" in prover_log
        assert "event=job_status job=1 status=REJECTED" in prover_log
        assert "event=job job=1 verdict=disputed status=REJECTED" in watcher_log
        summary = re.search(r"event=summary role=challenger .*gas='([0-9.]+) ETH' txs=(\d+) "
                            r"posted='0.1 ETH' returned='0.1 ETH' won='1 ETH' "
                            r"net='\+([0-9.]+) ETH' withdrawable='0 ETH'", watcher_log)  # fmt: skip
        assert summary, watcher_log[-3000:]
        gas = float(summary.group(1))
        assert 0 < gas < 0.1 and int(summary.group(2)) >= 3
        assert abs(float(summary.group(3)) - (1 - gas)) < 1e-5
        trainer_summary = re.search(r"event=summary role=prover .*posted='2 ETH' "
                                    r"returned='0 ETH' won='0 ETH' net='-2\.[0-9]+ ETH'",
                                    prover_log)  # fmt: skip
        assert trainer_summary, prover_log[-3000:]
        # the watcher's figures are the chain's: its balance moved by exactly its net
        watcher_address = re.search(r"event=start role=challenger address=(0x\w+)",
                                    watcher_log).group(1)  # fmt: skip
        balance = int(str(rpc(url, "eth_getBalance", [watcher_address, "latest"])), 16)
        assert balance - 10_000 * ETH == pytest.approx((1 - gas) * ETH, abs=10**12)


def _one_line(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode not in (0, None), res
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_operator_mistakes_end_in_one_line(outside: Path) -> None:
    with AnvilNode() as node:
        url = node.url
        dep = outside / "deployment.json"
        assert run(["deploy", "--rpc", url, "--out", str(dep)], outside).returncode == 0
        who = ["--rpc", url, "--deployment", str(dep), "--test-account", "1", "--db", "r.db"]
        amounts = ["--reward", str(ETH), "--stake", str(ETH), "--bond", str(ETH // 10)]
        assert run(["job", "bundle", "--example", "digits-mlp", "--steps", "4", "--out", "b"],
                   outside).returncode == 0  # fmt: skip
        register = ["job", "register", *who, "--bundle", "b", "--store", "s"]

        _one_line(run(["prover", "run", *who, "--job", "1", "--store", "s"], outside),
                  "no job 1", "register one")  # fmt: skip
        _one_line(run([*register, "--every", "3", *amounts], outside),
                  "--every 3 does not divide the bundle's 4 steps", "try --every 2")  # fmt: skip
        _one_line(run([*register, "--every", "0", *amounts], outside), "at least 1")
        _one_line(run(["job", "register", *who, "--bundle", "nowhere", "--store", "s",
                       "--every", "2", *amounts], outside),
                  "nowhere has no bundle.json")  # fmt: skip
        _one_line(run(["job", "bundle", "--steps", "4", "--out", "b2"], outside),
                  "--job and --data", "--example")  # fmt: skip
        _one_line(run([*register, "--every", "2", "--reward", "-1", "--stake",
                       "1", "--bond", "1"], outside), "--reward -1 is negative")  # fmt: skip
        _one_line(run([*register, "--every", "2", "--reward",
                       str(10**6 * ETH), "--stake", "1", "--bond", "1"], outside),
                  "more than", "fund it or lower --reward")  # fmt: skip
        _one_line(run([*register, "--every", "2", "--reward", "0", "--stake",
                       "0", "--bond", "0"], outside),
                  "contract refuses this job", "stake=0 wei below", "bond=0 wei below")  # fmt: skip
        _one_line(run([*register, "--every", "2", *amounts, "--clock", "600"],
                      outside), "clock=600s outside [3600")  # fmt: skip
        res = run([*register, "--every", "2", "--reward", "0", "--stake",
                   str(ETH), "--bond", str(ETH // 10)], outside)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        assert "warning: --reward 0:" in res.stderr
        _one_line(run(["prover", "run", *who, "--job", "99", "--store", "s"], outside),
                  "no job 99", "--job 1..1")  # fmt: skip

        watch = ["challenger", "watch", *who, "--store", "s", "--max-polls", "1"]
        _one_line(run([*watch, "--rate", "2"], outside), "--rate", "less than or equal to 1")
        dead = f"http://127.0.0.1:{free_port()}"
        _one_line(run(["challenger", "watch", "--rpc", dead, "--deployment", str(dep),
                       "--test-account", "3", "--store", "s"], outside),
                  f"no EVM node answers at {dead}", "check --rpc")  # fmt: skip
        _one_line(run(["api", "index", "--rpc", dead, "--deployment", str(dep), "--db",
                       "a.db"], outside), "no EVM node answers")  # fmt: skip
        _one_line(run(["deploy", "--rpc", dead, "--out", "d.json"], outside),
                  "cannot connect", "check --rpc")  # fmt: skip
        _one_line(run(["deploy", "--rpc", "localhost:8545", "--out", "d.json"], outside),
                  "--rpc:", "not an http(s)://")  # fmt: skip
        bad = outside / "bad.json"
        bad.write_text('{"chain_id": 31337, "contracts": ')
        _one_line(run([*watch[:2], "--rpc", url, "--deployment", str(bad), "--test-account",
                       "3", "--store", "s"], outside),
                  "is not a deployment file", "trainproof deploy")  # fmt: skip
        # an address without code (a reset node, another chain's file) is refused
        empty = outside / "empty.json"
        empty.write_text(json.dumps({"chain_id": 31337, "block": 0,
                                     "contracts": {"TrainProof": "0x" + "11" * 20}}))  # fmt: skip
        _one_line(run(["api", "index", "--rpc", url, "--deployment", str(empty), "--db", "a.db"],
                      outside), "no contract code at")  # fmt: skip
        _one_line(run([*watch[:2], "--rpc", url, "--deployment", str(empty), "--test-account",
                       "3", "--store", "s"], outside), "no contract code at")  # fmt: skip
        # the deprecated spelling still works for the API
        res = run(["api", "index", "--rpc", url, "--contracts", str(dep), "--db", "a.db",
                   "--confirmations", "0"], outside)  # fmt: skip
        assert res.returncode == 0 and "tip=" in res.stdout, res.stderr[-2000:]
