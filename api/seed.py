"""A synthetic index: decoded TrainProof events, folded in through the indexer's own
:func:`api.derive.apply` (for tests, the dashboard check and the benchmark)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.db import Block, Event, Job, Meta
from api.derive import apply
from protocol.game import JobStatus, Phase

CHAIN_ID = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
T0 = 1_800_000_000


def _h(*parts: object) -> str:
    return "0x" + hashlib.sha256(repr(parts).encode()).hexdigest()


def _addr(i: int) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + hashlib.sha256(f"acct{i}".encode()).hexdigest()[:40])


TRAINERS = [_addr(i) for i in range(8)]
REQUESTERS = [_addr(100 + i) for i in range(8)]
CHALLENGERS = [_addr(200 + i) for i in range(8)]


class _Log:
    def __init__(self, s: Session, block0: int) -> None:
        self.s, self.block, self.li = s, block0, 0

    def next_block(self) -> None:
        self.block += 1
        self.li = 0

    def __call__(
        self,
        name: str,
        data: dict[str, Any],
        job_id: int | None = None,
        game_id: int | None = None,
        account: str | None = None,
    ) -> None:
        ev = Event(
            block_number=self.block,
            log_index=self.li,
            tx_hash=_h("tx", self.block, self.li),
            timestamp=T0 + 12 * self.block,
            name=name,
            job_id=job_id,
            game_id=game_id,
            account=account,
            data=data,
        )
        self.li += 1
        self.s.add(ev)
        self.s.flush()
        apply(self.s, ev)


def spec(i: int) -> dict[str, Any]:
    return {
        "program_root": _h("p", i),
        "program_len": 359,
        "dataset_root": _h("d", i),
        "initial_root": _h("c0", i),
        "bundle": _h("bundle", i),
        "steps": 40,
        "every": 10,
        "slots": 188,
        "stake": 10**18,
        "bond": 10**17,
        "clock": 3600,
        "window": 7200,
        "train_time": 3600,
    }


def seed(sessions: sessionmaker, jobs: int = 12, seed_: int = 7, bulk: bool = False) -> None:
    """``jobs`` jobs cycling through every status; every fourth committed job has a dispute
    (running ones mid-partial-bisection, finished ones won by either side)."""
    rng = random.Random(seed_)
    with sessions.begin() as s:
        s.merge(Meta(key="chain_id", value=str(CHAIN_ID)))
        s.merge(Meta(key="contract", value=CONTRACT))
        log = _Log(s, 1)
        game_id = 0
        for j in range(1, jobs + 1):
            kind = j % 6  # 0 open 1 training 2 committed 3 disputed 4 finalized 5 rejected
            requester, trainer = REQUESTERS[j % 8], TRAINERS[j % 5]
            sp = spec(j)
            log(
                "JobRegistered",
                {
                    "job_id": j,
                    "job_hash": _h("job", j),
                    "requester": requester,
                    "spec": sp,
                    "reward": 5 * 10**17,
                },
                job_id=j,
            )
            if kind == 0:
                log.next_block()
                continue
            log(
                "JobAccepted",
                {
                    "job_id": j,
                    "trainer": trainer,
                    "stake": sp["stake"],
                    "commit_deadline": T0 + 3600,
                },
                job_id=j,
            )
            if kind == 1:
                log.next_block()
                continue
            roots = [_h("c", j, i) for i in range(1, 5)]
            log("CheckpointRoots", {"job_id": j, "part": 0, "roots": roots}, job_id=j)
            log(
                "RunCommitted",
                {
                    "job_id": j,
                    "trainer": trainer,
                    "run_root": _h("run", j),
                    "challenge_deadline": T0 + 12 * log.block + 7200,
                },
                job_id=j,
            )
            if kind in (3, 5) and not bulk:
                game_id += 1
                log.next_block()
                ch = CHALLENGERS[rng.randrange(8)]
                log(
                    "DisputeOpened",
                    {
                        "game_id": game_id,
                        "job_id": j,
                        "challenger": ch,
                        "interval": rng.randrange(4),
                        "bond": sp["bond"],
                    },
                    job_id=j,
                    game_id=game_id,
                )
                _play(log, j, game_id, finish=kind == 5)
            if kind == 4:
                log.next_block()
                log("JobClosed", {"job_id": j, "status": int(JobStatus.FINALIZED)}, job_id=j)
                log(
                    "Credited",
                    {"account": trainer, "amount": 15 * 10**17, "reason": "reward and stake"},
                    account=trainer,
                )
            log.next_block()
        s.merge(Block(number=log.block, hash=_h("block", log.block), timestamp=T0 + 12 * log.block))
        s.merge(Meta(key="tip", value=str(log.block)))
        for j in range(1, jobs + 1):  # what api.bundles would have found
            s.execute(update(Job).where(Job.id == j).values(**BUNDLE_CHECKS[j % 4]))


#: Bundle check verdicts the seeded jobs cycle through (job j gets ``BUNDLE_CHECKS[j % 4]``).
BUNDLE_CHECKS: tuple[dict[str, Any], ...] = (
    {"bundle_status": "verified", "bundle_scope": "complete: 40 batches, 1 pages",
     "bundle_checked_at": T0 + 30},
    {"bundle_status": "unavailable", "bundle_part": "manifest",
     "bundle_why": "blob not usable from any of 1 stores: not in the store",
     "bundle_checked_at": T0 + 30, "bundle_tries": 3, "bundle_next_check": T0 + 510},
    {"bundle_status": "invalid", "bundle_part": "batch of step 3",
     "bundle_why": "its tensors do not hash to the step's dataset leaf",
     "bundle_checked_at": T0 + 30, "bundle_tries": 1},
    {"bundle_status": "unchecked"},
)  # fmt: skip


def _play(log: _Log, job_id: int, game_id: int, finish: bool) -> None:
    """Moves through trace, op, chunk, element and into the partials; ``finish``: the trainer
    loses at the one-step."""
    span = 10 * 359
    lo, hi, seq = 0, span, 0
    while hi - lo > 1:
        log.next_block()
        log(
            "Moved",
            {
                "game_id": game_id,
                "seq": seq,
                "phase": int(Phase.TRACE_PICK),
                "lo": lo,
                "hi": hi,
                "values": [_h("r", game_id, seq, i) for i in range(7)],
            },
            job_id=job_id,
            game_id=game_id,
        )
        seq += 1
        step = max(1, (hi - lo) // 8)
        lo, hi = lo + step, min(hi, lo + 2 * step)
        nxt = int(Phase.TRACE_REVEAL) if hi - lo > 1 else int(Phase.OPEN_OP)
        log(
            "Moved",
            {"game_id": game_id, "seq": seq, "phase": nxt, "lo": lo, "hi": hi, "values": []},
            job_id=job_id,
            game_id=game_id,
        )
        seq += 1
    for phase, values in ((Phase.CHUNK_REVEAL, 2), (Phase.CHUNK_PICK, 2), (Phase.CHUNK_OPEN, 0)):
        log.next_block()
        log(
            "Moved",
            {
                "game_id": game_id,
                "seq": seq,
                "phase": int(phase),
                "lo": 0,
                "hi": 3,
                "values": [_h("n", seq, i) for i in range(values)],
            },
            job_id=job_id,
            game_id=game_id,
        )
        seq += 1
    log(
        "ChunkOpened",
        {"game_id": game_id, "seq": seq, "chunk_index": 1, "chunk": "0x" + "00" * 8},
        job_id=job_id,
        game_id=game_id,
    )
    seq += 1
    log(
        "Moved",
        {
            "game_id": game_id,
            "seq": seq,
            "phase": int(Phase.PARTIAL_REVEAL),
            "lo": 0,
            "hi": 128,
            "values": [],
        },
        job_id=job_id,
        game_id=game_id,
    )
    seq += 1
    if finish:
        log.next_block()
        log("JobClosed", {"job_id": job_id, "status": int(JobStatus.REJECTED)}, job_id=job_id)
        log(
            "GameResolved",
            {"game_id": game_id, "job_id": job_id, "trainer_won": False, "reason": "one-step"},
            job_id=job_id,
            game_id=game_id,
        )
