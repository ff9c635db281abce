"""A commitment in parts (commit_run, docs/protocol.md §3.3) on the contract: three parts
of 4,097 intervals, the run root, every `# dev:` rule of commit_run (titanoboa, both builds,
see game_fixtures.BUILDS), a dispute of the last interval, the 65,536-interval cap, and on
anvil the checkpoint list recovered from the CheckpointRoots events by both markets and a
trainer that resumes a half-sent commitment."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import boa
import pytest
from game_fixtures import BOND, REWARD, STAKE, TRAIN_TIME, account, deploy, reverts, run_proof

from protocol.constants import COMMIT_PART, MAX_CHECKPOINTS
from protocol.game import JobSpec, JobStatus, commit_parts
from protocol.market import ApeMarket, Web3Market
from protocol.merkle import proof_length
from replay.dispute.players import TrainerPlayer
from replay.runner import run_root_of

M = 2 * COMMIT_PART + 1  # intervals: parts of 2047, 2048 and 2 roots


def roots(m: int, salt: str = "") -> list[bytes]:
    """C_0..C_m, synthetic."""
    return [hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(m + 1)]


def spec(m: int, c0: bytes) -> JobSpec:
    h = hashlib.sha256(b"job").digest()
    return JobSpec(
        program_root=h, program_len=3, dataset_root=h, initial_root=c0, bundle=h, steps=m,
        every=1, slots=4, stake=STAKE, bond=BOND, clock=3600, window=7200,
        train_time=TRAIN_TIME,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["deployed", "debug"])
def tp(request: pytest.FixtureRequest) -> Any:
    return deploy(request.param)


@pytest.fixture(scope="module")
def people() -> dict[str, str]:
    return {name: account() for name in ("requester", "trainer", "anyone")}


def accepted(tp: Any, people: dict[str, str], s: JobSpec) -> int:
    job_id = tp.register_job(s.as_tuple(), sender=people["requester"], value=REWARD)
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=STAKE)
    return job_id


def test_three_parts_every_rule_and_a_dispute(tp: Any, people: dict[str, str]) -> None:
    c = roots(M)
    job_id = accepted(tp, people, spec(M, c[0]))
    parts = commit_parts(c[1:])
    assert [len(p) for p in parts] == [COMMIT_PART - 1, COMMIT_PART, 2]
    trainer = people["trainer"]
    with reverts(tp, "not the trainer"):
        tp.commit_run(job_id, 0, parts[0], sender=people["anyone"])
    with reverts(tp, "wrong part"):
        tp.commit_run(job_id, 1, parts[1], sender=trainer)
    with reverts(tp, "part not full"):
        tp.commit_run(job_id, 0, parts[0][:-1], sender=trainer)
    with reverts(tp, "part not full"):
        tp.commit_run(job_id, 0, c[1 : COMMIT_PART + 1], sender=trainer)  # C_0 is not sent
    assert tp.commit_run(job_id, 0, parts[0], sender=trainer) == b"\x00" * 32
    assert tp.committed_parts(job_id) == 1
    with reverts(tp, "wrong part"):
        tp.commit_run(job_id, 0, parts[0], sender=trainer)  # twice
    with reverts(tp, "wrong part"):
        tp.commit_run(job_id, 2, parts[2], sender=trainer)  # out of order
    tp.commit_run(job_id, 1, parts[1], sender=trainer)
    assert tp.jobs(job_id).status == JobStatus.ACCEPTED
    with reverts(tp, "wrong checkpoint count"):
        tp.commit_run(job_id, 2, parts[2][:1], sender=trainer)
    with reverts(tp, "wrong checkpoint count"):
        tp.commit_run(job_id, 2, [*parts[2], c[0]], sender=trainer)
    with reverts(tp, "wrong checkpoint count"):
        tp.commit_run(job_id, 2, [], sender=trainer)
    run_root = tp.commit_run(job_id, 2, parts[2], sender=trainer)
    logs = tp.get_logs()
    assert [type(e).__name__ for e in logs] == ["CheckpointRoots", "RunCommitted"]
    assert logs[0].part == 2 and list(logs[0].roots) == parts[2]
    job = tp.jobs(job_id)
    assert job.status == JobStatus.COMMITTED and run_root == job.run_root == run_root_of(c)
    with reverts(tp, "not accepted"):
        tp.commit_run(job_id, 3, parts[2], sender=trainer)
    # proofs in the run tree of M + 1 leaves have at most ceil(log2(M + 1)) hashes
    assert max(proof_length(i, M + 1) for i in range(M + 1)) == M.bit_length() == 13
    proof_lo, proof_hi = run_proof(c, M - 1), run_proof(c, M)
    with reverts(tp, "bad proof of C_c+1"):
        tp.open_dispute(job_id, M - 1, c[M - 1], proof_lo, c[M], proof_hi[:-1],
                        sender=people["anyone"], value=BOND)  # fmt: skip
    with reverts(tp, "no such interval"):
        tp.open_dispute(job_id, M, c[M], proof_hi, c[M], proof_hi,
                        sender=people["anyone"], value=BOND)  # fmt: skip
    game_id = tp.open_dispute(job_id, M - 1, c[M - 1], proof_lo, c[M], proof_hi,
                              sender=people["anyone"], value=BOND)  # fmt: skip
    assert tp.game(game_id).interval == M - 1


def test_a_single_part_and_the_deadline(tp: Any, people: dict[str, str]) -> None:
    for m in (1, COMMIT_PART - 1):
        c = roots(m, "single")
        job_id = accepted(tp, people, spec(m, c[0]))
        (part,) = commit_parts(c[1:])
        with reverts(tp, "wrong checkpoint count"):
            tp.commit_run(job_id, 0, part[:-1], sender=people["trainer"])
        assert tp.commit_run(job_id, 0, part, sender=people["trainer"]) == run_root_of(c)
    # a deadline passing between parts: the rest is refused, the job expires
    c = roots(COMMIT_PART, "late")
    job_id = accepted(tp, people, spec(COMMIT_PART, c[0]))
    parts = commit_parts(c[1:])
    tp.commit_run(job_id, 0, parts[0], sender=people["trainer"])
    boa.env.time_travel(seconds=TRAIN_TIME + 1)
    with reverts(tp, "commit deadline passed"):
        tp.commit_run(job_id, 1, parts[1], sender=people["trainer"])
    tp.expire_job(job_id, sender=people["anyone"])
    assert tp.jobs(job_id).status == JobStatus.EXPIRED


def test_the_cap(tp: Any, people: dict[str, str]) -> None:
    c0 = roots(0)[0]
    tp.register_job(spec(MAX_CHECKPOINTS, c0).as_tuple(), sender=people["requester"], value=1)
    with reverts(tp, "too many checkpoints"):
        tp.register_job(
            spec(MAX_CHECKPOINTS + 1, c0).as_tuple(), sender=people["requester"], value=1
        )
    assert tp.COMMIT_PART() == COMMIT_PART


@pytest.mark.parametrize("chain", ["anvil"], indirect=True)
def test_recovered_from_events_and_resumed(chain: Any, market: Any) -> None:
    """On anvil: a trainer that sent part 0 and crashed resumes with part 1; both markets
    assemble C_1..C_m from the CheckpointRoots events and check them against the run root."""
    from web3 import Web3

    requester, trainer_acct = chain.test_account(1), chain.test_account(2)
    c = roots(M, "anvil")
    s = spec(M, c[0])
    start = int(chain.provider.web3.eth.block_number)
    job_id = int(market.register_job(s.as_tuple(), sender=requester, value=REWARD).events[0].job_id)
    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer_acct, value=STAKE)
    ape_market = ApeMarket(market, trainer_acct)
    first = ape_market.transact("commit_run", job_id, 0, commit_parts(c[1:])[0], key="p0")
    assert first is not None and first.success and ape_market.committed_parts(job_id) == 1
    trainer = TrainerPlayer(ape_market, SimpleNamespace(checkpoint_roots=lambda: c), job_id)
    last = trainer.commit()  # parts 1 and 2
    assert last is not None and last.success and ape_market.committed_parts(job_id) == 3
    assert [e["event"] for e in last.logs] == ["CheckpointRoots", "RunCommitted"]
    head = int(chain.provider.web3.eth.block_number)
    (got,) = ape_market.commitments(start, head)
    assert got.job_id == job_id and got.run_root == run_root_of(c) and got.checkpoint_roots == c[1:]
    assert ape_market.commitments(start, head) == [got]  # assembled once, then remembered
    w3 = Web3(Web3.HTTPProvider(chain.provider.uri))
    outbox = SimpleNamespace(account=SimpleNamespace(address=str(trainer_acct.address)))
    (via_rpc,) = Web3Market(w3, market.address, outbox, start_block=start).commitments(start, head)
    assert via_rpc.checkpoint_roots == c[1:] and via_rpc.block == got.block
