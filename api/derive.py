"""Derived state: how one decoded TrainProof event changes jobs, checkpoints, games and moves.

The indexer and the seeding helpers both go through :func:`apply`, so a rebuilt index (after
a reorg) is the same function of the same events.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import Change, Checkpoint, Event, Game, Job, Move
from protocol.constants import COMMIT_PART
from protocol.game import JobStatus, Phase

STATUS_NAMES: dict[int, str] = {
    JobStatus.OPEN: "open",
    JobStatus.ACCEPTED: "training",
    JobStatus.COMMITTED: "committed",
    JobStatus.FINALIZED: "finalized",
    JobStatus.REJECTED: "rejected",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.EXPIRED: "expired",
}
#: Verification statuses a commitment can be in (``disputed`` = committed with open games).
VERIFICATION_STATUSES = (
    "open",
    "training",
    "committed",
    "disputed",
    "finalized",
    "rejected",
    "cancelled",
    "expired",
)
#: Dispute levels in descent order (protocol.game.Phase.level).
LEVELS = ("trace", "op", "chunk", "element", "partial", "one-step", "resolved")


def verification_status(status: int, open_games: int) -> str:
    if status == JobStatus.COMMITTED and open_games > 0:
        return "disputed"
    return STATUS_NAMES.get(status, "unknown")


def status_filter(name: str) -> tuple[int, bool | None]:
    """(contract status, open games wanted?) for a verification status name."""
    if name == "disputed":
        return JobStatus.COMMITTED, True
    code = {v: k for k, v in STATUS_NAMES.items()}[name]
    return code, (False if name == "committed" else None)


def phase_name(phase: int) -> str:
    try:
        return Phase(phase).name.lower()
    except ValueError:
        return "none"


def phase_level(phase: int) -> str:
    try:
        return Phase(phase).level
    except ValueError:
        return "none"


def _emit_job(s: Session, job: Job, block: int) -> None:
    s.add(
        Change(
            kind="job",
            job_id=job.id,
            game_id=None,
            block_number=block,
            data={"status": verification_status(job.status, job.open_games)},
        )
    )


def _emit_game(s: Session, game: Game, block: int) -> None:
    s.add(
        Change(
            kind="game",
            job_id=game.job_id,
            game_id=game.id,
            block_number=block,
            data={
                "phase": phase_name(game.phase),
                "level": phase_level(game.phase),
                "seq": game.seq,
            },
        )
    )


def apply(s: Session, ev: Event, emit: bool = True) -> None:
    """Fold one stored event into the derived tables (the event row is already in ``s``)."""
    d: dict[str, Any] = ev.data
    n, ts = ev.block_number, ev.timestamp
    if ev.name == "JobRegistered":
        spec = d["spec"]
        job = Job(
            id=d["job_id"],
            job_hash=d["job_hash"],
            requester=d["requester"],
            trainer=None,
            status=JobStatus.OPEN,
            reward=str(d["reward"]),
            stake=str(spec["stake"]),
            bond=str(spec["bond"]),
            program_root=spec["program_root"],
            program_len=spec["program_len"],
            dataset_root=spec["dataset_root"],
            initial_root=spec["initial_root"],
            bundle=spec.get("bundle"),  # None: a contract from before JobSpec.bundle
            steps=spec["steps"],
            every=spec["every"],
            slots=spec["slots"],
            clock=spec["clock"],
            window=spec["window"],
            train_time=spec["train_time"],
            registered_at=ts,
            registered_block=n,
            open_games=0,
            games_total=0,
            updated_block=n,
        )
        s.add(job)
        s.flush()
        if emit:
            _emit_job(s, job, n)
        return
    if ev.name in ("Credited", "Withdrawn"):
        return
    if ev.name in ("Moved", "ChunkOpened"):
        _apply_move(s, ev, emit)
        return
    job = s.get(Job, ev.job_id)
    if job is None:  # an event of a job registered before the start block
        return
    job.updated_block = n
    if ev.name == "JobAccepted":
        job.trainer = d["trainer"]
        job.status = JobStatus.ACCEPTED
        job.accepted_at = ts
        job.commit_deadline = d["commit_deadline"]
    elif ev.name == "RunCommitted":
        job.status = JobStatus.COMMITTED
        job.run_root = d["run_root"]
        job.committed_at = ts
        job.challenge_deadline = d["challenge_deadline"]
    elif ev.name == "CheckpointRoots":
        # part p holds C_i for p * COMMIT_PART <= i < (p + 1) * COMMIT_PART; part 0 omits C_0
        part = d["part"]
        if part == 0:
            s.add(Checkpoint(job_id=job.id, index=0, root=job.initial_root))
        for i, root in enumerate(d["roots"], start=max(1, part * COMMIT_PART)):
            s.add(Checkpoint(job_id=job.id, index=i, root=root))
    elif ev.name == "JobClosed":
        job.status = d["status"]
        job.closed_at = ts
    elif ev.name == "DisputeOpened":
        span = job.every * job.program_len
        game = Game(
            id=d["game_id"],
            job_id=job.id,
            challenger=d["challenger"],
            interval=d["interval"],
            bond=str(d["bond"]),
            phase=Phase.TRACE_REVEAL if span > 1 else Phase.OPEN_OP,
            seq=0,
            lo=0,
            hi=span,
            trainer_clock=job.clock,
            challenger_clock=job.clock,
            last_move=ts,
            settled=False,
            opened_at=ts,
            updated_block=n,
        )
        s.add(game)
        job.open_games += 1
        job.games_total += 1
        s.flush()
        if emit:
            _emit_game(s, game, n)
    elif ev.name == "GameResolved":
        game = s.get(Game, d["game_id"])
        if game is not None:
            if d["reason"] == "abandoned":
                game.phase = Phase.ABANDONED
            else:
                game.phase = Phase.TRAINER_WON if d["trainer_won"] else Phase.CHALLENGER_WON
            game.trainer_won = None if d["reason"] == "abandoned" else bool(d["trainer_won"])
            game.reason = d["reason"]
            game.resolved_at = ts
            # the verdict closes the history (a one-step, a decision, a timeout, abandon)
            s.merge(
                Move(
                    game_id=game.id,
                    seq=game.seq,
                    phase=game.phase,
                    lo=game.lo,
                    hi=game.hi,
                    values=[],
                    chunk_index=None,
                    block_number=n,
                    timestamp=ts,
                    tx_hash=ev.tx_hash,
                )
            )
            game.updated_block = n
            if emit:
                _emit_game(s, game, n)
        job.open_games = max(0, job.open_games - 1)
    s.flush()
    if emit:
        _emit_job(s, job, n)


def _apply_move(s: Session, ev: Event, emit: bool) -> None:
    d = ev.data
    game = s.get(Game, d["game_id"])
    if game is None:
        return
    if ev.name == "Moved":
        move = Move(
            game_id=game.id,
            seq=d["seq"],
            phase=d["phase"],
            lo=d["lo"],
            hi=d["hi"],
            values=d["values"],
            chunk_index=None,
            block_number=ev.block_number,
            timestamp=ev.timestamp,
            tx_hash=ev.tx_hash,
        )
        game.phase = d["phase"]
    else:
        move = Move(
            game_id=game.id,
            seq=d["seq"],
            phase=Phase.ELEMENT_PICK,
            lo=d["chunk_index"],
            hi=d["chunk_index"] + 1,
            values=[],
            chunk_index=d["chunk_index"],
            block_number=ev.block_number,
            timestamp=ev.timestamp,
            tx_hash=ev.tx_hash,
        )
        game.phase = Phase.ELEMENT_PICK
    s.merge(move)
    game.seq = d["seq"] + 1
    game.last_move = ev.timestamp
    game.updated_block = ev.block_number
    s.flush()
    if emit:
        _emit_game(s, game, ev.block_number)


def game_job(s: Session, game_id: int) -> int | None:
    return s.scalar(select(Game.job_id).where(Game.id == game_id))
