"""What operators run into (issue 16), against a real anvil: a dispute that failed to send is
retried until it lands, the services and the API indexer survive a node outage and keep
their state, and a node restart is ridden out by running services."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_services import BOND, EVERY, REWARD, STAKE, STEPS, WINDOW, prover, run_both, world
from web3 import Web3

from api.app import create_app
from api.db import make_engine, make_sessions
from api.indexer import Indexer
from challenger.service import ChallengerConfig, ChallengerService
from protocol.anvil import AnvilNode, free_port, rpc
from protocol.blobs import FileStore
from protocol.chain import ChainSettings, Deployment, connect, deploy_market
from protocol.game import JobStatus
from protocol.market import ApeMarket
from prover.service import ProverConfig, ProverService
from replay.dispute.players import example_computation, job_spec_for, write_job_bundle

__all__ = ["world"]  # the fixture, shared with test_services

pytestmark = pytest.mark.xdist_group(name="services")

FAULT = "step=3,op=222,elem=5"  # op 222 is a MATMUL (the first layer's weight gradient)


def unfunded_challenger(world) -> ChallengerService:
    node, deployment, _, tmp = world
    return ChallengerService(ChallengerConfig(
        rpc=node.url, deployment=deployment, db=tmp / "challenger.db", test_account=10,
        store=[str(tmp / "store")], rate=1.0, confirmations=0, poll=0.1,
    ))  # fmt: skip


def test_failed_dispute_is_retried_after_funding_and_restart(world, caplog) -> None:
    """Account 10 of the test mnemonic has no ETH on anvil: the dispute fails, loudly; funded
    and restarted with the same state file, the watcher disputes and the cheat is slashed."""
    node, _, market, _ = world
    caplog.set_level(logging.INFO, logger="trainproof")
    p = prover(world, FAULT)
    while p.step().status != JobStatus.COMMITTED:
        pass
    c = unfunded_challenger(world)
    c.step()
    assert market.games_of(1) == []
    failed = [r for r in caplog.records if "event=dispute_failed" in r.getMessage()]
    assert failed and failed[0].levelno == logging.ERROR
    assert f"fund {c.agent.address}" in failed[0].getMessage()
    c.agent.db.close()

    rpc(node.url, "anvil_setBalance", [c.agent.address, hex(10 * 10**18)])
    restarted = unfunded_challenger(world)
    assert "event=dispute_pending" in caplog.text
    run_both(world, p, restarted)
    assert market.job(1).status == JobStatus.REJECTED
    (game_id,) = market.games_of(1)
    assert market.game(game_id).challenger == restarted.agent.address


def test_a_trainer_send_that_fails_says_so_and_lands_once_funded(world, caplog) -> None:
    node, deployment, market, tmp = world
    caplog.set_level(logging.INFO, logger="trainproof")

    def unfunded_prover() -> ProverService:
        return ProverService(ProverConfig(
            rpc=node.url, deployment=deployment, db=tmp / "p11.db", test_account=11, job=1,
            store=[str(tmp / "store")], poll=0.1,
        ))  # fmt: skip

    p = unfunded_prover()
    p.step()
    failed = [r for r in caplog.records if "event=send_failed key=accept:1" in r.getMessage()]
    assert failed and failed[0].levelno == logging.ERROR
    assert f"fund {p.agent.address}" in failed[0].getMessage()
    assert "event=accepted" not in caplog.text  # not claimed when it did not happen
    assert market.job(1).status == JobStatus.OPEN
    rpc(node.url, "anvil_setBalance", [p.agent.address, hex(10 * 10**18)])
    p = unfunded_prover()  # a restart: no backoff left to wait for
    while p.step().status == JobStatus.OPEN:
        pass
    assert market.job(1).trainer == p.agent.address
    assert "event=accepted job=1" in caplog.text


def test_dispute_abandoned_only_when_the_window_closed(world, caplog) -> None:
    node = world[0]
    caplog.set_level(logging.INFO, logger="trainproof")
    p = prover(world, FAULT)
    while p.step().status != JobStatus.COMMITTED:
        pass
    c = unfunded_challenger(world)
    c.step()
    assert c.db.items("pending_dispute:")  # kept for the next try
    rpc(node.url, "evm_increaseTime", [WINDOW + 1])
    rpc(node.url, "evm_mine")
    for key, raw in c.db.items("pending_dispute:"):  # due now, not after its backoff
        c.db.put(key, json.dumps({**json.loads(raw), "next": 0.0}))
    c.step()
    assert c.db.items("pending_dispute:") == []
    assert "event=dispute_abandoned" in caplog.text


# ---------------------------------------------------------------- the API's index


def test_indexer_keeps_its_index_when_the_node_is_down(world, tmp_path, caplog) -> None:
    node, deployment_path, _, _ = world
    deployment = Deployment.load(deployment_path)
    address = deployment.contracts["TrainProof"]
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'api.db'}"))
    live = Indexer(Web3(Web3.HTTPProvider(node.url)), address, sessions,
                   start_block=deployment.block)  # fmt: skip
    tip = live.sync().tip
    client = TestClient(create_app(sessions, chain_id=deployment.chain_id, contract=address))
    assert client.get("/v1/jobs/1").status_code == 200

    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the node is down
    down = Indexer(Web3(Web3.HTTPProvider(dead_url, request_kwargs={"timeout": 2})), address,
                   sessions, start_block=deployment.block)  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
        down.sync()
    caplog.set_level(logging.INFO, logger="trainproof.api.indexer")
    stop = threading.Event()
    worker = threading.Thread(target=down.run_forever, args=(0.05, stop), daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while "node unreachable" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=30)
    assert "rolled_back" not in caplog.text and "reorg" not in caplog.text
    assert client.get("/v1/index").json()["tip"] == tip
    assert client.get("/v1/jobs/1").status_code == 200
    assert live.sync().rolled_back_to is None  # back: nothing to roll back


# ---------------------------------------------------------------- a node restart


def spawn(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "trainproof", *args], stdout=out, stderr=out, cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def wait_for(what: str, check, timeout: float = 120, procs=(), logs=None) -> None:
    """Wait until ``check()``; fail at once if one of ``procs`` died, and on failure show the
    tail of each log in ``logs``."""
    deadline = time.monotonic() + timeout

    def tails() -> str:
        return "".join(f"\n--- {name}:\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-8:]) for name, path in
            (logs or {}).items())  # fmt: skip

    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}{tails()}"
        assert all(p.poll() is None for p in procs), f"a service died{tails()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_services_survive_a_node_restart(tmp_path) -> None:
    state, port = tmp_path / "anvil-state.json", free_port()
    node = AnvilNode(port=port, extra_args=["--state", str(state)]).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
            deployment = deploy_market(ch)
            deployment.save(tmp_path / "deployment.json")
            contract = ch.at("TrainProof", deployment.contracts["TrainProof"])
            comp = example_computation("digits-mlp", STEPS, EVERY)
            bundle = write_job_bundle(FileStore(tmp_path / "store"), comp)
            spec = job_spec_for(
                comp, bundle=bundle, stake=STAKE, bond=BOND, clock=WINDOW, window=WINDOW,
                train_time=600,
            )  # fmt: skip
            contract.register_job(spec.as_tuple(), sender=ch.test_account(1), value=REWARD)
        common = ["--rpc", node.url, "--deployment", str(tmp_path / "deployment.json"),
                  "--poll", "0.1"]  # fmt: skip
        logs = {"prover": tmp_path / "prover.log", "challenger": tmp_path / "challenger.log"}
        procs.append(spawn(["challenger", "watch", *common, "--store", str(tmp_path / "store"),
                            "--db", str(tmp_path / "c.db"), "--test-account", "3",
                            "--rate", "1.0", "--confirmations", "0"], logs["challenger"],
                           tmp_path))  # fmt: skip
        procs.append(spawn(["prover", "run", *common, "--job", "1", "--store",
                            str(tmp_path / "store"), "--db", str(tmp_path / "p.db"),
                            "--test-account", "2", "--fault", FAULT], logs["prover"],
                           tmp_path))  # fmt: skip

        def logged(name: str, text: str) -> bool:
            return text in logs[name].read_text(errors="replace")

        seen = {"procs": procs, "logs": logs}
        wait_for("both services to start", lambda: all(logged(n, "event=start") for n in logs),
                 **seen)  # fmt: skip
        wait_for("the commitment", lambda: logged("prover", "event=committed"), **seen)
        node.stop()  # SIGTERM: anvil writes its state file
        # within seconds (the backoff starts at 2 polls), not after a transaction's mining
        # timeout: an unanswered receipt query is the node being down, not "not mined yet"
        wait_for("both to notice", lambda: all(logged(n, "event=node_unreachable") for n in logs),
                 timeout=30, **seen)  # fmt: skip
        assert all(p.poll() is None for p in procs), "a service died with the node"
        node = AnvilNode(port=port, extra_args=["--state", str(state)]).start()
        with connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
            market = ApeMarket(ch.at("TrainProof", deployment.contracts["TrainProof"]),
                               ch.test_account(1))  # fmt: skip

            def rejected() -> bool:
                games = market.games_of(1)
                return (
                    market.job(1).status == JobStatus.REJECTED
                    and bool(games)
                    and all(market.game(g).settled for g in games)
                )

            wait_for("the cheat to be slashed", rejected, timeout=300, **seen)
        assert all(logged(n, "event=node_back") for n in logs)
        assert all(p.poll() is None or p.returncode == 0 for p in procs)
        for name in logs:
            assert "Traceback" not in logs[name].read_text(errors="replace"), name
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        node.stop()


# ---------------------------------------------------------------- what the logs say


def watcher(world, **kw) -> ChallengerService:
    node, deployment, _, tmp = world
    cfg = {"rpc": node.url, "deployment": deployment, "db": tmp / "challenger.db",
           "test_account": 3, "store": [str(tmp / "store")], "rate": 1.0, "confirmations": 0,
           "poll": 0.1, **kw}  # fmt: skip
    return ChallengerService(ChallengerConfig(**cfg))


def committed(world, fault: str | None = None):
    p = prover(world, fault)
    while p.step().status != JobStatus.COMMITTED:
        pass
    return p


def test_an_empty_sample_says_not_checked(world, caplog) -> None:
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    committed(world)
    watcher(world, rate=1e-12).step()
    assert "event=not_checked job=1" in caplog.text and "not checked this time" in caplog.text
    assert "bad=None" not in caplog.text


def test_an_unreachable_store_is_passed_over_for_verifiable_data(world, caplog) -> None:
    """The watcher's first store does not answer, its second holds the bundle but no
    checkpoint: it says so, replays from C_0 and still reaches the verdict."""
    caplog.set_level(logging.INFO, logger="trainproof")
    market, tmp = world[2], world[3]
    p = committed(world, FAULT)
    dead = f"http://127.0.0.1:{free_port()}"
    c = watcher(world, store=[dead, str(tmp / "bundle")])
    c.step()
    assert f"event=blob_unusable store={dead}" in caplog.text
    assert "event=replay_from job=1 interval=1 from=0" in caplog.text
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.REJECTED


def test_a_stalled_head_with_confirmations_is_reported(world, caplog) -> None:
    """Plain anvil mines only on transactions: after the commitment no block comes."""
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    committed(world)
    c = watcher(world, confirmations=2)
    for _ in range(25):
        c.step()
    assert "event=waiting_for_blocks jobs=[1]" in caplog.text
    assert "--block-time" in caplog.text
    assert c.db.get("job:1") is None  # still waiting, as asked


def test_from_block_skips_history(world, caplog) -> None:
    caplog.set_level(logging.INFO, logger="trainproof.challenger")
    node = world[0]
    committed(world, FAULT)
    head = int(str(rpc(node.url, "eth_blockNumber")), 16)
    c = watcher(world, from_block=head + 1)
    assert f"from block {head + 1}" in caplog.text
    c.step()
    assert c.db.get("job:1") is None  # the commitment is before --from-block
    watcher(world, db=world[3] / "other.db").step()
    assert "event=checked job=1" in caplog.text  # without it, history is checked


# ---------------------------------------------------------------- /v1/accounts on a real chain


def indexed_client(world, tmp_path) -> tuple[Indexer, TestClient]:
    node, deployment_path, _, _ = world
    deployment = Deployment.load(deployment_path)
    address = deployment.contracts["TrainProof"]
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'api.db'}"))
    indexer = Indexer(Web3(Web3.HTTPProvider(node.url)), address, sessions,
                      start_block=deployment.block)  # fmt: skip
    return indexer, TestClient(create_app(sessions, chain_id=deployment.chain_id,
                                          contract=address))  # fmt: skip


def test_accounts_separate_stake_returned_from_reward(world, tmp_path) -> None:
    market = world[2]
    p, c = prover(world), watcher(world)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.FINALIZED
    indexer, client = indexed_client(world, tmp_path)
    indexer.sync()
    rec = client.get(f"/v1/accounts/{p.agent.address}").json()["as_trainer"]
    assert int(rec["returned"]) == STAKE and int(rec["profit"]) == REWARD
    assert int(rec["earned"]) == STAKE + REWARD


def test_accounts_separate_bond_returned_from_share(world, tmp_path) -> None:
    market = world[2]
    p, c = prover(world, FAULT), watcher(world)
    run_both(world, p, c)
    assert market.job(1).status == JobStatus.REJECTED
    indexer, client = indexed_client(world, tmp_path)
    indexer.sync()
    rec = client.get(f"/v1/accounts/{c.agent.address}").json()["as_challenger"]
    assert int(rec["returned"]) == BOND and int(rec["profit"]) == STAKE // 2  # the winner's half
    trainer = client.get(f"/v1/accounts/{p.agent.address}").json()["as_trainer"]
    assert int(trainer["returned"]) == 0 and int(trainer["slashed"]) == STAKE


def test_outbox_retires_a_reverted_intent(tmp_path) -> None:
    from protocol.outbox import Outbox, StateDB

    db = StateDB(tmp_path / "o.db")
    outbox = Outbox(db, w3=None, account=None)
    db.conn.execute(
        "INSERT INTO outbox (key, nonce, raw, hash, status, gas_used, block, created) "
        "VALUES ('settle:1', 3, x'00', '0xab', 'failed', 21000, 9, 0)"
    )
    assert outbox.retire("settle:1") is True
    assert outbox.status("settle:1") is None  # free: the next send builds a new transaction
    assert outbox.status("settle:1#reverted1") == "failed"  # its gas was spent: still there
    assert outbox.retire("settle:1") is False


def test_an_outbox_waiting_for_a_receipt_reports_a_dead_node_at_once(tmp_path) -> None:
    """A transaction is broadcast to a node that mines nothing, and the node dies while the
    outbox waits for the receipt: that is the node failing (transient: the agent backs off
    and confirms the intent later), not a transaction not mined yet, which would hold the
    agent for the whole mining timeout without a word."""
    import requests

    from protocol.agent import AgentConfig, is_transient, load_account
    from protocol.outbox import Outbox, StateDB

    node = AnvilNode(port=free_port(), extra_args=["--no-mining"]).start()
    try:
        w3 = Web3(Web3.HTTPProvider(node.url))
        account = load_account(AgentConfig(rpc=node.url, deployment=tmp_path / "none.json",
                                           db=tmp_path / "x.db", test_account=5))  # fmt: skip
        outbox = Outbox(StateDB(tmp_path / "o.db"), w3, account, poll=0.05)
        signed = account.sign_transaction({
            "from": account.address, "nonce": 0, "chainId": w3.eth.chain_id,
            "to": "0x" + "22" * 20, "value": 1, "gas": 21_000, "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9})  # fmt: skip
        threading.Timer(1.0, node.stop).start()
        start = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError) as e:
            outbox._confirm("transfer:1", bytes(signed.raw_transaction), signed.hash.hex(), 0)
        assert is_transient(e.value) and time.monotonic() - start < 15
    finally:
        node.stop()


def test_a_recorded_but_unsent_transaction_does_not_block_the_next(world, tmp_path) -> None:
    """Killed between recording a transaction and broadcasting it, and its intent never asked
    for again (the game got settled by the other side): the next intent still lands."""
    from protocol.agent import AgentConfig, load_account
    from protocol.outbox import Outbox, StateDB

    node = world[0]
    w3 = Web3(Web3.HTTPProvider(node.url))
    account = load_account(AgentConfig(rpc=node.url, deployment=world[1], db=tmp_path / "x.db",
                                       test_account=5))  # fmt: skip
    outbox = Outbox(StateDB(tmp_path / "o.db"), w3, account, poll=0.05)
    first = w3.eth.get_transaction_count(account.address, "latest")

    def transfer(params: dict) -> dict:
        return {**params, "to": "0x" + "22" * 20, "value": 1, "gas": 21_000,
                "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}  # fmt: skip

    signed = account.sign_transaction(transfer({"from": account.address, "nonce": first,
                                                "chainId": w3.eth.chain_id}))  # fmt: skip
    outbox.db.conn.execute(
        "INSERT INTO outbox (key, nonce, raw, hash, status, created) "
        "VALUES (?, ?, ?, ?, 'sent', 0)",
        ("settle:7", first, bytes(signed.raw_transaction), signed.hash.hex()),
    )  # as Outbox.send records it, then SIGKILL before the broadcast
    sent = outbox.send("withdraw:7:1", transfer)
    assert sent is not None and sent.success
    assert w3.eth.get_transaction_count(account.address, "latest") == first + 2
