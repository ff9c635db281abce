"""The API against real contracts on ape's local network and anvil: a full dispute played by
the reference players (a trainer with a MATMUL fault: trace, op, chunk, element, partial and
one-step levels), indexed after every move; what the API says must equal the chain's views.
On anvil, a reorg (evm_snapshot / evm_revert) rolls the index back. The index is a SQLite file
and, where the server binaries are installed, a PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import make_engine, make_sessions
from api.derive import verification_status
from api.indexer import ChainMoved, Indexer
from protocol.anvil import rpc
from protocol.game import GameState, JobStatus, Phase
from protocol.market import ApeMarket
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import get_example
from replay.data.dataset import Dataset
from replay.dispute.players import (
    ChallengerPlayer,
    Computation,
    Fault,
    TrainerPlayer,
    job_spec_for,
)

STAKE, BOND, REWARD = 10**18, 10**17, 5 * 10**17
CLOCK, WINDOW, TRAIN_TIME = 3600, 7200, 3600
STEPS, EVERY = 4, 2
#: digits-mlp op 7 is a MATMUL (640 outputs, 128 terms): its dispute descends every level;
#: op 3 is an ADD (a lying challenger's computation for the reorg test)
FAULTS = {
    "matmul": Fault(kind="element", step=3, op=7, element=300),
    "add": Fault(kind="element", step=3, op=3, element=5),
}


@cache
def computation(name: str = "honest") -> Computation:
    ex = get_example("digits-mlp")
    program = compile_train(ex.model)
    comp = Computation(
        program,
        Dataset(ex.dataset),
        initial_state(ex.model, program),
        STEPS,
        EVERY,
        fault=FAULTS.get(name),
        cache=STEPS,
    )
    comp.checkpoint_roots()
    return comp


@pytest.fixture(scope="module")
def world(chain, index_url) -> Iterator[tuple]:
    executor = chain.deploy("Executor")
    market = chain.deploy("TrainProof", executor.address)
    start = chain.block_number
    engine = make_engine(index_url)
    sessions = make_sessions(engine)
    w3 = chain.provider.web3
    indexer = Indexer(w3, market.address, sessions, start_block=start, batch_size=50)
    client = TestClient(create_app(sessions, chain_id=chain.chain_id, contract=market.address))
    yield chain, market, indexer, client
    engine.dispose()


def advance(seconds: int) -> None:
    from ape import chain as ape_chain

    ape_chain.pending_timestamp += seconds
    ape_chain.mine()


def check_job(market, client: TestClient, job_id: int) -> dict:
    job = market.jobs(job_id)
    status = client.get(f"/v1/jobs/{job_id}/status").json()
    assert status["status"] == verification_status(int(job.status), int(job.open_games))
    assert status["run_root"] == ("0x" + bytes(job.run_root).hex() if job.status >= 3 else None)
    return status


def check_game(market, client: TestClient, game_id: int) -> dict:
    view = GameState.from_chain(market.game(game_id))
    api = client.get(f"/v1/disputes/{game_id}").json()
    assert api["phase"] == view.phase.name.lower()
    assert api["level"] == view.phase.level
    for f in ("seq", "lo", "hi", "element", "trainer_clock", "challenger_clock", "last_move"):
        assert api[f] == getattr(view, f), f
    assert api["settled"] == view.settled
    to_move = market.to_move(game_id)
    if view.phase.over:
        assert api["to_move"] is None
    else:
        who = "trainer" if view.phase.trainer_moves else "challenger"
        assert api["to_move"] == who
        assert str(to_move) == (
            market.jobs(view.job_id).trainer if who == "trainer" else view.challenger
        )
    return api


def test_dispute_followed_move_by_move(world) -> None:
    chain, market, indexer, client = world
    honest, cheat = computation("honest"), computation("matmul")
    requester, trainer_acct, challenger_acct = (chain.test_account(i) for i in (3, 4, 5))
    spec = job_spec_for(
        honest, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=TRAIN_TIME
    )
    receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
    job_id = int(receipt.events[0].job_id)
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "open"
    listed = client.get("/v1/jobs", params={"requester": str(requester)}).json()
    assert [j["id"] for j in listed["items"]] == [job_id]

    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer_acct, value=STAKE)
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "training"

    trainer = TrainerPlayer(ApeMarket(market, trainer_acct), cheat, job_id)
    challenger = ChallengerPlayer(ApeMarket(market, challenger_acct), honest, job_id)
    trainer.commit()
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "committed"
    cps = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]
    assert [c["root"] for c in cps] == ["0x" + r.hex() for r in cheat.checkpoint_roots()]
    assert [c["step"] for c in cps] == [0, 2, 4]

    committed = cheat.checkpoint_roots()
    interval = challenger.first_bad_interval(committed)
    game_id = challenger.open(committed, interval, BOND)
    indexer.sync()
    status = check_job(market, client, job_id)
    assert status["status"] == "disputed"
    assert [g["id"] for g in status["games"]] == [game_id]
    check_game(market, client, game_id)

    levels_seen = []
    for _ in range(60):
        g = GameState.from_chain(market.game(game_id))
        if g.phase.over:
            break
        player = trainer if g.phase.trainer_moves else challenger
        assert player.move(game_id) is not None
        indexer.sync()
        api = check_game(market, client, game_id)
        check_job(market, client, job_id)
        levels_seen.append(api["level"])
    assert GameState.from_chain(market.game(game_id)).phase == Phase.CHALLENGER_WON
    assert {"trace", "chunk", "partial", "resolved"} <= set(levels_seen)

    detail = client.get(f"/v1/disputes/{game_id}").json()
    assert [lv["level"] for lv in detail["levels"]][:2] == ["trace", "op"]
    assert "partial" in [lv["level"] for lv in detail["levels"]]
    n_moves = sum(len(lv["moves"]) for lv in detail["levels"])
    assert n_moves == sum(1 for m in trainer.moves + challenger.moves if m.seq >= 0)
    assert detail["reason"] == "one-step" and detail["trainer_won"] is False
    assert check_job(market, client, job_id)["status"] == "rejected"
    assert int(market.jobs(job_id).status) == JobStatus.REJECTED

    market.settle(game_id, sender=requester)
    indexer.sync()
    assert check_game(market, client, game_id)["settled"] is True
    rec = client.get(f"/v1/accounts/{challenger_acct}").json()["as_challenger"]
    assert rec["wins"] >= 1 and int(rec["earned"]) >= BOND + STAKE // 2
    rec_t = client.get(f"/v1/accounts/{trainer_acct}").json()["as_trainer"]
    assert rec_t["losses"] >= 1 and int(rec_t["slashed"]) >= STAKE

    timeline = client.get(f"/v1/jobs/{job_id}").json()["timeline"]
    names = [e["event"] for e in timeline]
    assert names[:5] == [
        "JobRegistered",
        "JobAccepted",
        "CheckpointRoots",
        "RunCommitted",
        "DisputeOpened",
    ]
    assert "GameResolved" in names and "JobClosed" in names

    # resuming is idempotent: a fresh indexer on the same database re-reads nothing new
    again = Indexer(indexer.w3, market.address, indexer.sessions, start_block=indexer.start_block)
    assert again.sync().events == 0


def test_reorg_rolls_back(world) -> None:
    chain, market, indexer, client = world
    if chain.provider.name != "foundry":
        pytest.skip("reorgs need anvil's evm_snapshot/evm_revert (ape's local network has none)")
    url = chain.provider.uri
    honest = computation("honest")
    requester, trainer_acct, challenger_acct = (chain.test_account(i) for i in (6, 7, 8))
    spec = job_spec_for(
        honest, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=TRAIN_TIME
    )
    job_id = int(
        market.register_job(spec.as_tuple(), sender=requester, value=REWARD).events[0].job_id
    )
    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer_acct, value=STAKE)
    trainer = TrainerPlayer(ApeMarket(market, trainer_acct), honest, job_id)
    trainer.commit()
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "committed"

    snap = rpc(url, "evm_snapshot")
    # a (lying) challenger disputes interval 1 and the trainer answers once: both reorged away
    challenger = ChallengerPlayer(ApeMarket(market, challenger_acct), computation("add"), job_id)
    game_id = challenger.open(honest.checkpoint_roots(), 1, BOND)
    trainer.move(game_id)
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "disputed"
    assert check_game(market, client, game_id)["seq"] == 1
    changes_before = client.get("/v1/disputes", params={"job_id": job_id}).json()["total"]
    assert changes_before == 1

    assert rpc(url, "evm_revert", [snap]) is True
    # the other branch: different blocks at the same heights, and a longer chain
    for _ in range(3):
        rpc(url, "evm_mine")
    result = indexer.sync()
    assert result.rolled_back_to is not None
    status = check_job(market, client, job_id)
    assert status["status"] == "committed" and status["games"] == []
    assert client.get(f"/v1/disputes/{game_id}").status_code == 404
    assert client.get("/v1/disputes", params={"job_id": job_id}).json()["total"] == 0
    names = [e["event"] for e in client.get(f"/v1/jobs/{job_id}").json()["timeline"]]
    assert names == ["JobRegistered", "JobAccepted", "CheckpointRoots", "RunCommitted"]

    # the dispute is played on the new branch: indexed again, matching the chain
    game_id2 = challenger.open(honest.checkpoint_roots(), 1, BOND)
    indexer.sync()
    assert check_job(market, client, job_id)["status"] == "disputed"
    check_game(market, client, game_id2)


def test_reorg_while_a_range_is_read(world, monkeypatch) -> None:
    """The chain reorganises between reading a range's logs and its blocks: nothing of the
    range is stored, and the next sync indexes the new branch."""
    chain, market, indexer, client = world
    if chain.provider.name != "foundry":
        pytest.skip("reorgs need anvil's evm_snapshot/evm_revert (ape's local network has none)")
    url = chain.provider.uri
    tip = indexer.sync().tip
    snap = rpc(url, "evm_snapshot")
    spec = job_spec_for(
        computation("honest"), stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=1
    )
    receipt = market.register_job(spec.as_tuple(), sender=chain.test_account(5), value=REWARD)
    job_id = int(receipt.events[0].job_id)
    read_logs = indexer.w3.eth.get_logs

    def logs_then_reorg(params: dict) -> list:
        logs = read_logs(params)
        assert rpc(url, "evm_revert", [snap]) is True
        for _ in range(3):  # other blocks at the same heights (no registration in them)
            rpc(url, "evm_mine")
        return logs

    monkeypatch.setattr(indexer.w3.eth, "get_logs", logs_then_reorg)
    with pytest.raises(ChainMoved, match="changed while range"):
        indexer.sync()
    monkeypatch.undo()
    assert indexer.tip() == tip  # the range's transaction was rolled back whole
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert indexer.sync().tip > tip
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404  # not on this branch
    assert int(market.job_count()) == job_id - 1
