"""``make demo``: the whole protocol on a real local chain, with the real services.

1. start anvil (npm ``@foundry-rs/anvil``) on a free loopback port; deploy the one-step
   Executor and the TrainProof market (``trainproof deploy``'s code path);
2. a requester registers two digits-mlp training jobs, escrowing their rewards;
3. three separate processes start: an honest ``trainproof prover run`` on job 1, a cheating
   one on job 2 (one element of one MATMUL of one step is wrong, and everything after it
   follows from the wrong value), and a ``trainproof challenger watch``;
4. the provers train, publish their checkpoints to a blob store and commit; the challenger
   replays sampled intervals bit-exactly, disputes the cheat and plays the dispute down the
   levels — trace, op, chunk, element, partial sums — to the one float32 operation the
   contract executes; this screen follows it all live from the chain;
5. the challenge window passes (the demo moves anvil's clock): the honest job finalises, the
   cheat's stake is slashed, everybody withdraws; a summary shows the money and the gas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from protocol.anvil import REPO_ROOT, AnvilNode, rpc
from protocol.blobs import FileStore, make_server
from protocol.chain import ChainSettings, connect, deploy_market
from protocol.game import JobStatus, Phase
from protocol.market import ApeMarket
from replay.data.bundle import Bundle, publish_bundle, read_bundle_dir, save_bundle_dir

console = Console()

STEPS, EVERY = 10, 5
ETH = 10**18
STAKE, BOND, REWARD = 2 * ETH, ETH // 5, ETH
CLOCK, WINDOW, TRAIN_TIME = 3600, 3600, 600  # MIN_CLOCK, MIN_WINDOW
FAULT = "step=7,op=222,elem=7"  # op 222 is a MATMUL (the first layer's weight gradient)
ROLES = {"requester": 1, "honest": 2, "cheat": 3, "challenger": 4}  # test accounts


def eth(wei: int) -> str:
    return f"{wei / ETH:.2f} ETH"


def run_demo(rpc_url: str | None = None, seed: int = 7) -> int:
    del seed  # the fault is fixed so that the demo is the same every time
    t0 = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trainproof-demo-")))
        if rpc_url is None:
            with console.status("starting anvil on a free loopback port"):
                node = stack.enter_context(AnvilNode())
            rpc_url = node.url
            console.print(f"[green]✓[/] anvil running at {rpc_url}")
        with console.status("compiling contracts and deploying"):
            chain = stack.enter_context(connect(ChainSettings(rpc_url=rpc_url, provider="foundry")))
            deployment = deploy_market(chain)
            deployment.save(tmp / "deployment.json")
            contract = chain.at("TrainProof", deployment.contracts["TrainProof"])
        market = ApeMarket(contract, chain.test_account(ROLES["requester"]))
        console.print(
            f"[green]✓[/] TrainProof at {market.address}, "
            f"executor {deployment.contracts['Executor']}"
        )

        store = tmp / "store"
        with console.status("writing the digits-mlp job bundle and registering two jobs"):
            address = write_demo_bundle(tmp / "bundle")
            local, _ = read_bundle_dir(tmp / "bundle")
            opened = Bundle.open(local, address)
            publish_bundle(opened, [str(store)])
            spec = opened.job_spec(
                every=EVERY, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW,
                train_time=TRAIN_TIME,
            )  # fmt: skip
            for job in (1, 2):
                market.transact("register_job", spec.as_tuple(), value=REWARD, key=f"job{job}")
        server = make_server(FileStore(store))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.shutdown)
        store_url = f"http://127.0.0.1:{server.server_address[1]}"
        console.print(
            f"[green]✓[/] bundle {address[:16]}… published to {store_url}; jobs 1 and 2 "
            f"registered: {STEPS} steps, a checkpoint every {EVERY}, reward {eth(REWARD)}, "
            f"stake {eth(STAKE)}, bond {eth(BOND)}"
        )

        common = ["--rpc", rpc_url, "--deployment", str(tmp / "deployment.json"), "--poll", "0.2"]
        accounts = {name: ["--test-account", str(ROLES[name])] for name in ROLES}
        procs = {
            "honest prover (job 1)": _spawn("honest", [
                "prover", "run", *common, "--job", "1", "--store", str(store),
                "--db", str(tmp / "honest.db"), *accounts["honest"],
            ], tmp),
            "cheating prover (job 2)": _spawn("cheating", [
                "prover", "run", *common, "--job", "2", "--store", str(store),
                "--db", str(tmp / "cheating.db"), *accounts["cheat"], "--fault", FAULT,
            ], tmp),
            "challenger": _spawn("challenger", [
                "challenger", "watch", *common, "--store", store_url,
                "--db", str(tmp / "challenger.db"), *accounts["challenger"],
                "--rate", "1.0", "--confirmations", "1",
            ], tmp),
        }  # fmt: skip
        for p in procs.values():
            stack.callback(_stop, p)
        console.print(f"[green]✓[/] started {len(procs)} processes: " + ", ".join(procs))
        if not follow(market, rpc_url, procs):
            for log in sorted(tmp.glob("*.log")):
                console.print(
                    f"[red]{log.stem}, last lines of its log:[/]\n{log.read_text()[-1500:]}"
                )
            return 1
        if market.credits(market.sender):  # the requester takes back the cheat's reward
            market.transact("withdraw", key="requester-withdraw")
        solvent = chain.provider.get_balance(contract.address) == int(contract.liabilities())
        summary(market, contract, tmp, solvent, time.monotonic() - t0)
        if not solvent:
            return 1
    console.print("[green]✓[/] processes and anvil stopped")
    return 0


def write_demo_bundle(folder: Path) -> str:
    """The bundle of the embedded default job: digits-mlp on scikit-learn's digits (what
    `trainproof job bundle --example digits-mlp` writes)."""
    from trainproof.jobcli import example_inputs

    inputs = example_inputs("digits-mlp", STEPS, "", "Apache-2.0", None)
    address, _ = save_bundle_dir(folder, **inputs, steps=STEPS)
    return address


def _spawn(slug: str, args: list[str], tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{slug}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "trainproof", *args], stdout=log, stderr=log, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def follow(market: ApeMarket, url: str, procs: dict[str, subprocess.Popen[bytes]]) -> bool:
    """Show jobs and games live until both jobs are closed and every game is settled."""
    window_moved = False
    deadline = time.monotonic() + 170
    with Live(console=console, refresh_per_second=6) as live:
        while time.monotonic() < deadline:
            jobs = {j: market.job(j) for j in (1, 2)}
            games = {g: market.game(g) for j in (1, 2) for g in market.games_of(j)}
            live.update(_view(jobs, games))
            closed = all(
                j.status in (JobStatus.FINALIZED, JobStatus.REJECTED) for j in jobs.values()
            )
            if (
                closed
                and all(g.settled for g in games.values())
                and all(p.poll() is not None for name, p in procs.items() if "prover" in name)
            ):
                return True
            if (
                not window_moved
                and jobs[2].status == JobStatus.REJECTED
                and jobs[1].status == JobStatus.COMMITTED
            ):  # the cheat is decided: let the challenge window pass for the honest job
                rpc(url, "evm_increaseTime", [WINDOW + 1])
                rpc(url, "evm_mine")
                window_moved = True
            rpc(url, "evm_mine")  # a live chain keeps making blocks; the challenger waits for them
            if any(p.poll() not in (None, 0) for p in procs.values()):
                console.print("[red]a service exited with an error[/]")
                return False
            time.sleep(0.3)
    console.print("[red]the demo did not finish in time[/]")
    return False


def _view(jobs: dict[int, Any], games: dict[int, Any]) -> Group:
    jt = Table(title="jobs (read from the chain)")
    for col in ("job", "trainer", "status", "open disputes"):
        jt.add_column(col)
    for jid, j in jobs.items():
        jt.add_row(str(jid), j.trainer[:10] + "…" if int(j.trainer, 16) else "—",
                   j.status.name.lower(), str(j.open_games))  # fmt: skip
    gt = Table(title="disputes, live")
    for col in ("game", "job", "moves", "level", "phase", "range", "element", "clocks (s left)"):
        gt.add_column(col)
    for gid, g in games.items():
        span = {
            "trace": f"ops {g.lo}..{g.hi}", "chunk": f"chunks {g.node_lo}..{g.node_hi}",
            "partial": f"terms {g.lo}..{g.hi}",
        }.get(g.phase.level, "")  # fmt: skip
        verdict = {Phase.TRAINER_WON: "trainer was right", Phase.CHALLENGER_WON: "trainer cheated"}
        gt.add_row(
            str(gid), str(g.job_id), str(g.seq), g.phase.level,
            verdict.get(g.phase, g.phase.name), span,
            str(g.element) if g.phase >= Phase.ELEMENT_PICK else "",
            f"T {g.trainer_clock} / C {g.challenger_clock}",
        )  # fmt: skip
    return Group(jt, gt)


def summary(market: ApeMarket, contract: Any, tmp: Path, solvent: bool, wall: float) -> None:
    from ape import chain as ape_chain

    paid: dict[str, int] = {}
    for log in contract.Credited.range(0, int(ape_chain.blocks.height) + 1):
        paid[str(log.account)] = paid.get(str(log.account), 0) + int(log.amount)
    names = {market.job(1).trainer: "honest trainer", market.job(2).trainer: "cheating trainer",
             market.sender: "requester"}  # fmt: skip
    table = Table(title="trainproof demo — summary")
    table.add_column("what")
    table.add_column("result")
    for jid in (1, 2):
        job = market.job(jid)
        table.add_row(f"job {jid}", f"{job.status.name.lower()} (trainer {job.trainer[:10]}…)")
    for jid in (1, 2):
        for gid in market.games_of(jid):
            g = market.game(gid)
            verdict = "trainer cheated" if g.phase == Phase.CHALLENGER_WON else "trainer was right"
            table.add_row(
                f"dispute {gid} (job {jid})",
                f"{g.seq} moves; step {g.step}, op {g.op}, element {g.element}: {verdict}",
            )
    burned = int(contract.burned())
    table.add_row("stake slashed", f"{eth(STAKE)}: half to the challenger, {eth(burned)} burned")
    for account, wei in paid.items():
        table.add_row(f"paid to {names.get(account, 'challenger')}", eth(wei))
    for name in ("honest", "cheating", "challenger"):
        table.add_row(f"gas sent by the {name} process", f"{_gas(tmp / f'{name}.db'):,}")
    table.add_row("contract solvent", "yes (balance = liabilities)" if solvent else "NO")
    table.add_row("wall time", f"{wall:.1f} s")
    console.print(table)


def _gas(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(gas_used), 0) FROM outbox").fetchone()[0])
