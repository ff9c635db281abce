"""The prover and challenger services against a real anvil.

In-process (each service's ``step()`` called in turn): every fault kind is caught and the
cheat slashed; a lying challenger loses its bond; an honest commitment finalises and pays;
withheld or tampered checkpoints send the challenger to full replay with the right verdict.
As processes: both services SIGKILLed at random moments mid-dispute and restarted — the
honest side still wins and no transaction is ever sent twice.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from web3 import Web3

from api.app import create_app
from api.db import make_engine, make_sessions
from api.indexer import Indexer
from challenger.service import ChallengerConfig, ChallengerService
from protocol.agent import AgentConfig, load_account
from protocol.anvil import AnvilNode, free_port, rpc
from protocol.blobs import FileStore
from protocol.chain import ChainSettings, Deployment, connect, deploy_market
from protocol.game import JobStatus, commit_parts
from protocol.market import ApeMarket
from prover.service import ProverConfig, ProverService
from replay.dispute.players import example_computation, job_spec_for, write_job_bundle

STEPS, EVERY = 4, 2
ETH = 10**18
STAKE, BOND, REWARD = 2 * ETH, ETH // 10, ETH
WINDOW = 3600  # the shortest the contract accepts (MIN_WINDOW, = MIN_CLOCK)
JUMP = 300  # chain seconds passed every 5 polls
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group(name="services")


@pytest.fixture
def world(tmp_path):
    """A fresh anvil with the market deployed and one registered digits-mlp job."""
    with AnvilNode() as node, connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
        deployment = deploy_market(ch)
        path = tmp_path / "deployment.json"
        deployment.save(path)
        market = ch.at("TrainProof", deployment.contracts["TrainProof"])
        comp = example_computation("digits-mlp", STEPS, EVERY)
        bundle = write_job_bundle(FileStore(tmp_path / "store"), comp)
        assert write_job_bundle(FileStore(tmp_path / "bundle"), comp) == bundle  # bundle only
        spec = job_spec_for(
            comp, bundle=bundle, stake=STAKE, bond=BOND, clock=WINDOW, window=WINDOW,
            train_time=600,
        )  # fmt: skip
        market.register_job(spec.as_tuple(), sender=ch.test_account(1), value=REWARD)
        yield node, path, ApeMarket(market, ch.test_account(1)), tmp_path


def prover(world, fault: str | None = None) -> ProverService:
    node, deployment, _, tmp = world
    return ProverService(ProverConfig(
        rpc=node.url, deployment=deployment, db=tmp / "prover.db", test_account=2, job=1,
        store=[str(tmp / "store")], fault=fault, poll=0.1,
    ))  # fmt: skip


def challenger(
    world, lie: bool = False, store: str | None = None, attest_to: str | None = None
) -> ChallengerService:
    node, deployment, _, tmp = world
    return ChallengerService(ChallengerConfig(
        rpc=node.url, deployment=deployment, db=tmp / "challenger.db", test_account=3,
        store=[store or str(tmp / "store")], rate=1.0, confirmations=0, lie=lie, poll=0.1,
        attest_to=attest_to,
    ))  # fmt: skip


def run_both(
    world,
    p: ProverService,
    c: ChallengerService,
    max_polls: int = 400,
    each: Callable[[], object] | None = None,
) -> None:
    node = world[0]
    for i in range(max_polls):
        status = p.step()
        c.step()
        if each is not None:
            each()
        if status.done and not c._games():
            return
        if i % 5 == 4:  # let chain time pass: clocks and the challenge window run on it
            rpc(node.url, "evm_increaseTime", [JUMP])
            rpc(node.url, "evm_mine")
    raise AssertionError("the services did not finish")


@pytest.mark.parametrize(
    "fault", ["step=3,op=222,elem=5", "lazy:step=2", "wrong-batch:step=1", "skip-steps:step=1"]
)
def test_every_fault_kind_is_caught_and_slashed(world, fault) -> None:
    market = world[2]
    p, c = prover(world, fault), challenger(world)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.REJECTED
    (game_id,) = market.games_of(1)
    g = market.game(game_id)
    assert g.phase.name == "CHALLENGER_WON" and g.settled
    assert market.credits(c.agent.address) == 0  # withdrawn: bond + half the stake


def test_lying_challenger_loses_its_bond(world) -> None:
    market = world[2]
    p, c = prover(world), challenger(world, lie=True)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.FINALIZED
    (game_id,) = market.games_of(1)
    assert market.game(game_id).phase.name == "TRAINER_WON"


def test_honest_commitment_without_dispute_finalises_and_pays(world) -> None:
    node, _, market, _ = world
    p, c = prover(world), challenger(world)
    before = int(str(rpc(node.url, "eth_getBalance", [p.agent.address, "latest"])), 16)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.FINALIZED
    assert market.games_of(1) == []
    after = int(str(rpc(node.url, "eth_getBalance", [p.agent.address, "latest"])), 16)
    assert after - before > REWARD - ETH // 100  # reward earned, stake back, minus gas


@pytest.mark.parametrize("damage", ["missing", "tampered", "truncated"])
def test_bad_checkpoints_route_to_replay_from_an_earlier_one(world, damage, caplog) -> None:
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    market, tmp = world[2], world[3]
    p = prover(world, "step=3,op=222,elem=5")
    while p.step().status != JobStatus.COMMITTED:
        pass
    blobs = tmp / "store" / "blobs"
    pointers = [json.loads(f.read_text()) for f in (tmp / "store" / "roots").glob("*.json")]
    later = [a for ptr in pointers if ptr["step"] > 0 for a in (ptr["manifest"], ptr["tensors"])]
    files = [blobs / a[:2] / a[2:] for a in later]
    for f in files:  # damage every checkpoint published after C_0 (the bundle stays intact)
        if damage == "missing":
            f.unlink()
        elif damage == "tampered":
            data = f.read_bytes()
            f.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        else:
            f.write_bytes(f.read_bytes()[:-64])
    c = challenger(world)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.REJECTED  # the verdict is still right
    assert "event=checkpoint_rejected" in caplog.text
    assert "event=replay_from" in caplog.text and "from=0" in caplog.text


# ---------------------------------------------------------------- bad bundles


def watcher_copy(world) -> tuple[Path, Path]:
    """A copy of the prover's store (bundle and published checkpoints) for the watcher alone,
    and the blob folder of that copy, to damage without touching what the prover reads."""
    import shutil

    tmp = world[3]
    shutil.copytree(tmp / "store", tmp / "watcher")
    return tmp / "watcher", tmp / "watcher" / "blobs"


def bundle_manifest(world) -> dict:
    tmp, market = world[3], world[2]
    address = market.job(1).spec.bundle.hex()
    return json.loads((tmp / "store" / "blobs" / address[:2] / address[2:]).read_text())


def test_a_swapped_batch_leaves_the_other_intervals_disputable(world, caplog) -> None:
    """Step 0's batch in the watcher's only store is another step's: interval 0 can't be
    replayed (said, with the part), interval 1 can, holds the cheat, and is disputed."""
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    market = world[2]
    p = prover(world, "step=3,op=222,elem=5")
    while p.step().status != JobStatus.COMMITTED:
        pass
    store, blobs = watcher_copy(world)
    index = FileStore(store).get(bundle_manifest(world)["dataset"]["index"]["address"])
    page = FileStore(store).get(index[:32].hex())  # page 0: 96 bytes per step
    batch0, batch1 = page[64:96].hex(), page[96 + 64 : 96 + 96].hex()
    (blobs / batch0[:2] / batch0[2:]).write_bytes((blobs / batch1[:2] / batch1[2:]).read_bytes())
    c = challenger(world, store=str(store))
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.REJECTED
    assert "event=interval_unverifiable job=1 interval=0 part='batch of step 0'" in caplog.text
    assert json.loads(c.db.get("job:1"))["verdict"] == "disputed"


def test_a_bundle_that_does_not_verify_marks_the_job_unverifiable(world, caplog) -> None:
    """C_0's tensors in the watcher's only store are altered: the job is unverifiable (log
    line naming the part, the watcher's record), retried with backoff, final after the
    window; the watcher never disputes what it could not check."""
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    market = world[2]
    p = prover(world)
    while p.step().status != JobStatus.COMMITTED:
        pass
    store, blobs = watcher_copy(world)
    tensors = bundle_manifest(world)["initial"]["tensors"]["address"]
    f = blobs / tensors[:2] / tensors[2:]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40  # one bit of the last parameter
    f.write_bytes(bytes(data))
    c = challenger(world, store=str(store))
    c.step()
    record = json.loads(c.db.get("job:1"))
    assert record["verdict"] == "unverifiable" and record["part"] == "initial state tensors", record
    assert "event=unverifiable job=1 part='initial state tensors'" in caplog.text
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.FINALIZED and market.games_of(1) == []
    deadline = time.time() + 2 ** json.loads(c.db.get("job:1"))["tries"] + 5
    while not json.loads(c.db.get("job:1")).get("final") and time.time() < deadline:
        c.step()  # the next retry, after its backoff (seconds of real time), finds it closed
        time.sleep(0.2)
    final = "event=unverifiable_final job=1 status=FINALIZED part='initial state tensors'"
    assert final in caplog.text
    assert json.loads(c.db.get("job:1"))["final"] is True


def test_a_job_binding_another_bundle_is_refused_by_both_services(world, caplog) -> None:
    """A job registered with the bundle of another run (same model, 6 steps, not 4): the
    prover refuses to train it; a trainer that commits anyway meets a watcher that marks
    the job unverifiable, naming the manifest, and does not dispute."""
    from ape import accounts

    from protocol.agent import AgentError

    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    node, deployment, market, tmp = world
    comp = example_computation("digits-mlp", STEPS, EVERY)
    other = write_job_bundle(FileStore(tmp / "store"), example_computation("digits-mlp", 6, 2))
    spec = market.job(1).spec.model_copy(update={"bundle": other})
    market.contract.register_job(spec.as_tuple(), sender=market.account, value=REWARD)
    with pytest.raises(AgentError, match=r"bundle manifest: its dataset root 0x[0-9a-f]{64} is"):
        ProverService(ProverConfig(
            rpc=node.url, deployment=deployment, db=tmp / "p2.db", test_account=2, job=2,
            store=[str(tmp / "store")], poll=0.1,
        ))  # fmt: skip
    trainer = accounts.test_accounts[2]
    market.contract.accept_job(2, market.contract.jobs(2).job_hash, sender=trainer, value=STAKE)
    for part, roots in enumerate(commit_parts(comp.checkpoint_roots()[1:])):
        market.contract.commit_run(2, part, roots, sender=trainer)
    c = challenger(world)
    c.step()
    record = json.loads(c.db.get("job:2"))
    assert record["verdict"] == "unverifiable" and record["part"] == "manifest", record
    assert "event=unverifiable job=2 part='manifest'" in caplog.text
    assert market.games_of(2) == []


# ---------------------------------------------------------------- kill tests


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "trainproof", *args], stdout=out, stderr=out, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def sent_per_key(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT key, nonce FROM outbox WHERE status != 'superseded'").fetchall()


@pytest.mark.slow
def test_services_survive_sigkill_mid_dispute(world) -> None:
    node, deployment, market, tmp = world
    common = ["--rpc", node.url, "--deployment", str(deployment), "--poll", "0.1"]
    prover_args = ["prover", "run", *common, "--job", "1", "--store", str(tmp / "store"),
                   "--db", str(tmp / "prover.db"), "--test-account", "2",
                   "--fault", "step=3,op=222,elem=5"]  # fmt: skip
    challenger_args = ["challenger", "watch", *common, "--store", str(tmp / "store"),
                       "--db", str(tmp / "challenger.db"), "--test-account", "3",
                       "--rate", "1.0", "--confirmations", "0"]  # fmt: skip
    rng = random.Random(1)
    kills = {"prover": 0, "challenger": 0}
    procs = {"prover": spawn(prover_args, tmp / "prover.log"),
             "challenger": spawn(challenger_args, tmp / "challenger.log")}  # fmt: skip

    def restart(name: str) -> None:
        procs[name].send_signal(signal.SIGKILL)
        procs[name].wait()
        kills[name] += 1
        args = prover_args if name == "prover" else challenger_args
        procs[name] = spawn(args, tmp / f"{name}.log")

    def over() -> bool:
        games = market.games_of(1)
        return bool(games) and market.game(games[0]).phase.over

    deadline = time.monotonic() + 300
    try:
        while not market.games_of(1):  # the kills start once the dispute is open
            assert time.monotonic() < deadline, "no dispute was opened"
            time.sleep(0.2)
        target = "prover"
        while min(kills.values()) < 6 and not over():  # at random moments, mid-dispute
            time.sleep(rng.uniform(0.5, 2.0))
            if not over():
                restart(target)
                target = "challenger" if target == "prover" else "prover"
        watcher = load_account(AgentConfig(rpc=node.url, deployment=deployment, db=tmp / "x.db",
                                           test_account=3)).address  # fmt: skip
        while not (market.job(1).status == JobStatus.REJECTED and market.game(1).settled
                   and market.credits(watcher) == 0):  # fmt: skip
            assert time.monotonic() < deadline, "the game did not finish (settled, withdrawn)"
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert kills["prover"] >= 5 and kills["challenger"] >= 5, kills
    assert market.job(1).status == JobStatus.REJECTED  # the honest side still won
    for name, account in (("prover", 2), ("challenger", 3)):
        address = load_account(AgentConfig(rpc=node.url, deployment=deployment, db=tmp / "x.db",
                                           test_account=account)).address  # fmt: skip
        rows = sent_per_key(tmp / f"{name}.db")
        sent = int(str(rpc(node.url, "eth_getTransactionCount", [address, "latest"])), 16)
        assert sent == len(rows), f"{name}: every transaction it sent is one recorded intent"
        for tx in transactions_from(node.url, address):
            receipt = rpc(node.url, "eth_getTransactionReceipt", [tx])
            assert int(receipt["status"], 16) == 1, f"{name} sent a transaction that failed"  # type: ignore[index]


def transactions_from(url: str, address: str) -> list[str]:
    head = int(str(rpc(url, "eth_blockNumber")), 16)
    hashes = []
    for n in range(head + 1):
        block = rpc(url, "eth_getBlockByNumber", [hex(n), True])
        for tx in block["transactions"]:  # type: ignore[index]
            if tx["from"].lower() == address.lower():
                hashes.append(tx["hash"])
    return hashes


@pytest.fixture
def api_server(world) -> Iterator[tuple[str, Indexer]]:
    """The verification-status API on a real port, indexing the world's anvil."""
    node, deployment_path, _, tmp = world
    deployment = Deployment.load(deployment_path)
    address = deployment.contracts["TrainProof"]
    sessions = make_sessions(make_engine(f"sqlite:///{tmp / 'api.db'}"))
    indexer = Indexer(Web3(Web3.HTTPProvider(node.url)), address, sessions,
                      start_block=deployment.block)  # fmt: skip
    app = create_app(sessions, chain_id=deployment.chain_id, contract=address)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", indexer
    server.should_exit = True
    thread.join(timeout=10)


def test_challenger_attests_coverage_to_the_api(world, api_server, caplog) -> None:
    """Every interval the challenger replayed and found matching reaches the API as a signed
    attestation, even though the API indexes the commitment only after the first try."""
    url, indexer = api_server
    p, c = prover(world), challenger(world, attest_to=url)
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    run_both(world, p, c, each=indexer.sync)
    deadline = time.monotonic() + 60
    while c.db.items("attest:"):  # those still backing off
        assert time.monotonic() < deadline, c.db.items("attest:")
        indexer.sync()
        c.step()
        time.sleep(0.2)
    assert "event=attestation_deferred" in caplog.text  # the API was behind at first
    with urllib.request.urlopen(f"{url}/v1/jobs/1/coverage", timeout=10) as resp:
        coverage = json.load(resp)
    intervals = STEPS // EVERY
    assert coverage["intervals"] == intervals and coverage["attestations"] == intervals
    assert coverage["covered_1"] == 1.0 and coverage["covered_3"] == 0.0
    assert [i["challengers"] for i in coverage["per_interval"]] == [1] * intervals
