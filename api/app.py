"""The verification-status REST API (FastAPI, ``/v1``), its SSE stream and the dashboard."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path as FsPath
from types import SimpleNamespace
from typing import Annotated, Any

from eth_utils import to_checksum_address
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import BigInteger, Connection, bindparam, cast, func, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import frontend
from api.db import Attestation, Block, Change, Checkpoint, Event, Game, Job, Meta, Move
from api.derive import LEVELS, phase_level, phase_name, status_filter, verification_status
from api.schemas import (
    UNVERIFIABLE,
    AccountRecord,
    AttestationIn,
    AttestationOut,
    BundleCheck,
    CheckpointList,
    CheckpointOut,
    CommitmentStatus,
    Coverage,
    DisputeDetail,
    DisputePage,
    GameSummary,
    IndexStatus,
    IntervalCoverage,
    JobDetail,
    JobPage,
    JobSummary,
    LevelHistory,
    MoveOut,
    Problem,
    RoleRecord,
    TimelineEntry,
    VerificationStatus,
)
from protocol import attestation as attest
from protocol.game import JobStatus, Phase

log = logging.getLogger("trainproof.api")
STATIC = FsPath(__file__).resolve().parent / "static"
ADDRESS_RE = r"^0x[0-9a-fA-F]{40}$"

_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        c: {
            "description": "problem details",
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
        }
        for c in codes
    }


class ApiError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status, self.title, self.detail = status, title, detail


def problem(
    status: int,
    title: str,
    detail: str | None,
    instance: str | None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(status=status, title=title, detail=detail, instance=instance, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type="application/problem+json",
    )


def cached(request: Request, model: BaseModel) -> Response:
    """JSON with a strong ETag; 304 when the client already has it."""
    body = model.__pydantic_serializer__.to_json(model)
    tag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": tag})
    return Response(body, media_type="application/json", headers={"ETag": tag})


# ---------------------------------------------------------------------- conversions


# The tip the index stands at, in one read: its number, and its block's timestamp when that
# block is indexed (the cast sits in a select list, so it only ever sees the "tip" row).
_TIP_NUMBER = (
    select(cast(Meta.value, BigInteger).label("number")).where(Meta.key == "tip").subquery()
)
_TIP = select(
    _TIP_NUMBER.c.number,
    select(Block.timestamp)
    .where(Block.number == _TIP_NUMBER.c.number)
    .scalar_subquery()
    .label("timestamp"),
).subquery()


#: The columns of a job's bundle check (api.bundles writes them).
_BUNDLE_COLUMNS = (
    Job.bundle,
    Job.bundle_status,
    Job.bundle_part,
    Job.bundle_why,
    Job.bundle_scope,
    Job.bundle_checked_at,
    Job.bundle_tries,
    Job.bundle_next_check,
)


def _bundle(job: Any) -> BundleCheck:
    """The ``bundle`` object of a job row (an ORM Job or a row with its bundle columns)."""
    status = job.bundle_status or "unchecked"
    return BundleCheck(
        address=job.bundle,
        status=status,
        unverifiable=status in UNVERIFIABLE,
        part=job.bundle_part,
        why=job.bundle_why,
        scope=job.bundle_scope,
        checked_at=job.bundle_checked_at,
        tries=job.bundle_tries or 0,
        next_check=job.bundle_next_check,
    )


# A job's status in one statement (one snapshot, one round trip): the job, the tip, and its
# games (a row each, or one row of NULLs).
_GAMES = Game.__table__
_STATUS = (
    select(
        Job.id,
        Job.status,
        Job.open_games,
        Job.run_root,
        Job.committed_at,
        Job.challenge_deadline,
        *_BUNDLE_COLUMNS,
        _TIP.c.number.label("tip_block"),
        _TIP.c.timestamp.label("tip_timestamp"),
        *(c.label(f"game_{c.name}") for c in _GAMES.c),
    )
    .select_from(Job)
    .outerjoin(_TIP, true())
    .outerjoin(_GAMES, _GAMES.c.job_id == Job.id)
    .where(Job.id == bindparam("id"))
    .order_by(_GAMES.c.id)
)


class Clock:
    """The indexed tip's block number and timestamp (what "now" is for clocks/windows)."""

    def __init__(self, block: int | None, timestamp: int | None) -> None:
        self.block = -1 if block is None else int(block)
        self.timestamp = timestamp

    @classmethod
    def read(cls, db: Session | Connection) -> Clock:
        row = db.execute(select(_TIP)).first()
        return cls(*row) if row else cls(None, None)


def _summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        job_hash=job.job_hash,
        requester=job.requester,
        trainer=job.trainer,
        status=verification_status(job.status, job.open_games),
        contract_status=job.status,
        reward=job.reward,
        stake=job.stake,
        bond=job.bond,
        steps=job.steps,
        every=job.every,
        intervals=job.steps // job.every,
        open_games=job.open_games,
        games_total=job.games_total,
        registered_at=job.registered_at,
        committed_at=job.committed_at,
        challenge_deadline=job.challenge_deadline,
        run_root=job.run_root,
        bundle=_bundle(job),
    )


def _game(g: Game | SimpleNamespace, now: int | None) -> GameSummary:
    running = 0 < g.phase < Phase.TRAINER_WON
    to_move = None
    t_left, c_left = g.trainer_clock, g.challenger_clock
    if running:
        trainer_moves = Phase(g.phase).trainer_moves
        to_move = "trainer" if trainer_moves else "challenger"
        elapsed = max(0, (now or g.last_move) - g.last_move)
        if trainer_moves:
            t_left = max(0, t_left - elapsed)
        else:
            c_left = max(0, c_left - elapsed)
    return GameSummary(
        id=g.id,
        job_id=g.job_id,
        challenger=g.challenger,
        interval=g.interval,
        phase=phase_name(g.phase),
        level=phase_level(g.phase),
        seq=g.seq,
        to_move=to_move,
        lo=g.lo,
        hi=g.hi,
        step=g.step,
        op=g.op,
        element=g.element,
        trainer_clock=g.trainer_clock,
        challenger_clock=g.challenger_clock,
        trainer_clock_left=t_left,
        challenger_clock_left=c_left,
        last_move=g.last_move,
        opened_at=g.opened_at,
        resolved_at=g.resolved_at,
        trainer_won=g.trainer_won,
        reason=g.reason,
        settled=g.settled,
    )


def _address(value: str, what: str) -> str:
    try:
        return to_checksum_address(value)
    except ValueError as e:
        raise ApiError(422, "Malformed address", f"{what} {value!r} is not an address") from e


# ---------------------------------------------------------------------- app


def create_app(
    sessions: sessionmaker,
    *,
    chain_id: int | None = None,
    contract: str | None = None,
    now: Callable[[], float] = time.time,
    sse_poll_s: float = 0.25,
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = frontend.MAX_BODY_BYTES,
) -> FastAPI:
    """The API over the index behind ``sessions``; ``chain_id``/``contract`` bind the EIP-712
    domain of attestations (taken from the index's metadata when omitted). Browsers on
    ``cors_origins`` may call it; request bodies over ``max_body_bytes`` are refused."""
    app = FastAPI(
        title="trainproof verification status",
        version="1.0.0",
        description="Job and commitment verification status, disputes, records and coverage, "
        "indexed from the TrainProof contract. Errors are RFC 9457 problem details.",
        docs_url=None,
        redoc_url=None,
    )
    frontend.install(app, cors_origins, max_body_bytes)
    v1 = APIRouter(prefix="/v1", responses=_problem_responses(422))
    # Point reads for the status endpoint run outside a transaction: one statement is one
    # snapshot, and on PostgreSQL that saves the BEGIN and ROLLBACK round trips. (SQLite's
    # driver opens no transaction for a lone SELECT, and switching it costs a PRAGMA per use.)
    engine = sessions.kw["bind"]
    reads = (
        engine
        if engine.dialect.name == "sqlite"
        else engine.execution_options(isolation_level="AUTOCOMMIT")
    )

    def meta() -> tuple[int | None, str | None]:
        if chain_id is not None and contract is not None:
            return chain_id, contract
        with sessions() as s:
            c, a = s.get(Meta, "chain_id"), s.get(Meta, "contract")
            return (int(c.value) if c else chain_id), (a.value if a else contract)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        resp = problem(exc.status_code, title, str(exc.detail), request.url.path)
        resp.headers.update(exc.headers or {})  # e.g. Allow on 405
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, "Invalid request", detail, request.url.path, errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled path=%s", request.url.path)
        return problem(500, "Internal error", type(exc).__name__, request.url.path)

    # ------------------------------------------------------------------ index

    @v1.get("/index", response_model=IndexStatus, summary="Indexer position")
    def index_status(request: Request) -> Response:
        with sessions() as s:
            clock = Clock.read(s)
        cid, addr = meta()
        return cached(
            request,
            IndexStatus(
                chain_id=cid, contract=addr, tip=clock.block, tip_timestamp=clock.timestamp
            ),
        )

    # ------------------------------------------------------------------ jobs

    @v1.get("/jobs", response_model=JobPage, summary="List jobs")
    def list_jobs(
        request: Request,
        status: VerificationStatus | None = None,
        trainer: Annotated[str | None, Query(pattern=ADDRESS_RE)] = None,
        requester: Annotated[str | None, Query(pattern=ADDRESS_RE)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        q = select(Job)
        if status is not None:
            code, open_wanted = status_filter(status)
            q = q.where(Job.status == code)
            if open_wanted is True:
                q = q.where(Job.open_games > 0)
            elif open_wanted is False:
                q = q.where(Job.open_games == 0)
        if trainer:
            q = q.where(Job.trainer == _address(trainer, "trainer"))
        if requester:
            q = q.where(Job.requester == _address(requester, "requester"))
        with sessions() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            jobs = s.scalars(q.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
        nxt = offset + limit if offset + limit < total else None
        page = JobPage(
            items=[_summary(j) for j in jobs],
            total=total,
            limit=limit,
            offset=offset,
            next_offset=nxt,
        )
        return cached(request, page)

    def _job(s: Session, job_id: int) -> Job:
        job = s.get(Job, job_id)
        if job is None:
            raise ApiError(404, "Job not found", f"no job {job_id} in the index")
        return job

    @v1.get(
        "/jobs/{job_id}",
        response_model=JobDetail,
        summary="Job with its timeline",
        responses=_problem_responses(404),
    )
    def job_detail(request: Request, job_id: int) -> Response:
        with sessions() as s:
            _check_id(job_id)
            job = _job(s, job_id)
            clock = Clock.read(s)
            events = s.scalars(
                select(Event)
                .where(Event.job_id == job_id, Event.name != "Credited")
                .order_by(Event.block_number, Event.log_index)
            ).all()
            games = s.scalars(select(Game).where(Game.job_id == job_id).order_by(Game.id)).all()
            timeline = [
                TimelineEntry(
                    block_number=e.block_number,
                    timestamp=e.timestamp,
                    tx_hash=e.tx_hash,
                    event=e.name,
                    game_id=e.game_id,
                    data=_short(e.data),
                )
                for e in events
                if e.name not in ("Moved", "ChunkOpened")
            ]
            summary = _summary(job).model_dump()
            detail = JobDetail(
                **summary,
                program_root=job.program_root,
                program_len=job.program_len,
                dataset_root=job.dataset_root,
                initial_root=job.initial_root,
                slots=job.slots,
                clock=job.clock,
                window=job.window,
                train_time=job.train_time,
                accepted_at=job.accepted_at,
                commit_deadline=job.commit_deadline,
                closed_at=job.closed_at,
                timeline=timeline,
                games=[_game(g, clock.timestamp) for g in games],
            )
        return cached(request, detail)

    @v1.get(
        "/jobs/{job_id}/status",
        response_model=CommitmentStatus,
        summary="Verification status of the job's commitment",
        responses=_problem_responses(404),
    )
    async def job_status(request: Request, job_id: int) -> Response:
        # The endpoint frontends poll: on the event loop (no thread hop), one indexed statement
        # through the Core (no ORM session), outside a transaction (no BEGIN/ROLLBACK trips).
        _check_id(job_id)
        with reads.connect() as c:
            rows = c.execute(_STATUS, {"id": job_id}).all()
        if not rows:
            raise ApiError(404, "Job not found", f"no job {job_id} in the index")
        job = rows[0]
        clock = Clock(job.tip_block, job.tip_timestamp)
        games = [
            SimpleNamespace(**{c.name: r._mapping[f"game_{c.name}"] for c in _GAMES.c})
            for r in rows
            if r.game_id is not None
        ]
        window_open = (
            job.status == JobStatus.COMMITTED
            and job.challenge_deadline is not None
            and (clock.timestamp is None or clock.timestamp <= job.challenge_deadline)
        )
        out = CommitmentStatus(
            job_id=job.id,
            status=verification_status(job.status, job.open_games),
            run_root=job.run_root,
            committed_at=job.committed_at,
            challenge_deadline=job.challenge_deadline,
            window_open=window_open,
            as_of_block=clock.block,
            as_of_timestamp=clock.timestamp,
            games=[_game(g, clock.timestamp) for g in games],
            bundle=_bundle(job),
        )
        return cached(request, out)

    @v1.get(
        "/jobs/{job_id}/checkpoints",
        response_model=CheckpointList,
        summary="Checkpoint roots of the committed run",
        responses=_problem_responses(404),
    )
    def checkpoints(request: Request, job_id: int) -> Response:
        with sessions() as s:
            _check_id(job_id)
            job = _job(s, job_id)
            rows = s.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.index)
            ).all()
            out = CheckpointList(
                job_id=job.id,
                run_root=job.run_root,
                every=job.every,
                checkpoints=[
                    CheckpointOut(index=c.index, step=c.index * job.every, root=c.root)
                    for c in rows
                ],
            )
        return cached(request, out)

    @v1.get(
        "/jobs/{job_id}/coverage",
        response_model=Coverage,
        summary="Replay coverage attested by challengers",
        responses=_problem_responses(404),
    )
    def coverage(request: Request, job_id: int) -> Response:
        with sessions() as s:
            _check_id(job_id)
            job = _job(s, job_id)
            intervals = job.steps // job.every
            rows = s.execute(
                select(Attestation.interval, func.count(func.distinct(Attestation.challenger)))
                .where(Attestation.job_id == job_id, Attestation.run_root == (job.run_root or ""))
                .group_by(Attestation.interval)
                .order_by(Attestation.interval)
            ).all()
            bonded = bonded_per_interval(s, job)
            n = s.scalar(
                select(func.count())
                .select_from(Attestation)
                .where(Attestation.job_id == job_id, Attestation.run_root == (job.run_root or ""))
            )
        per = [
            IntervalCoverage(
                interval=int(i), challengers=int(c), bonded_challengers=bonded.get(int(i), 0)
            )
            for i, c in rows
        ]
        out = Coverage(
            job_id=job.id,
            run_root=job.run_root,
            intervals=intervals,
            attestations=n or 0,
            covered_1=sum(1 for p in per if p.challengers >= 1) / intervals,
            covered_3=sum(1 for p in per if p.challengers >= 3) / intervals,
            bonded_covered_1=sum(1 for p in per if p.bonded_challengers >= 1) / intervals,
            bonded_covered_3=sum(1 for p in per if p.bonded_challengers >= 3) / intervals,
            per_interval=per,
        )
        return cached(request, out)

    # ------------------------------------------------------------------ disputes

    @v1.get("/disputes", response_model=DisputePage, summary="List dispute games")
    def list_disputes(
        request: Request,
        job_id: Annotated[int | None, Query(ge=1, lt=2**53)] = None,
        challenger: Annotated[str | None, Query(pattern=ADDRESS_RE)] = None,
        running: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        q = select(Game)
        if job_id is not None:
            q = q.where(Game.job_id == job_id)
        if challenger:
            q = q.where(Game.challenger == _address(challenger, "challenger"))
        if running is True:
            q = q.where(Game.phase < Phase.TRAINER_WON)
        elif running is False:
            q = q.where(Game.phase >= Phase.TRAINER_WON)
        with sessions() as s:
            clock = Clock.read(s)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            games = s.scalars(q.order_by(Game.id.desc()).limit(limit).offset(offset)).all()
        nxt = offset + limit if offset + limit < total else None
        return cached(
            request,
            DisputePage(
                items=[_game(g, clock.timestamp) for g in games],
                total=total,
                limit=limit,
                offset=offset,
                next_offset=nxt,
            ),
        )

    @v1.get(
        "/disputes/{game_id}",
        response_model=DisputeDetail,
        summary="A dispute with its per-level history",
        responses=_problem_responses(404),
    )
    def dispute(request: Request, game_id: int) -> Response:
        with sessions() as s:
            _check_id(game_id)
            g = s.get(Game, game_id)
            if g is None:
                raise ApiError(404, "Dispute not found", f"no game {game_id} in the index")
            clock = Clock.read(s)
            moves = s.scalars(select(Move).where(Move.game_id == game_id).order_by(Move.seq)).all()
        by_level: dict[str, list[MoveOut]] = {}
        before = Phase.TRACE_REVEAL
        for m in moves:
            # a move belongs to the level it was played at: the phase before it
            level = phase_level(before)
            before = m.phase
            by_level.setdefault(level, []).append(
                MoveOut(
                    seq=m.seq,
                    phase=phase_name(m.phase),
                    level=level,
                    lo=m.lo,
                    hi=m.hi,
                    values=list(m.values),
                    chunk_index=m.chunk_index,
                    block_number=m.block_number,
                    timestamp=m.timestamp,
                    tx_hash=m.tx_hash,
                )
            )
        levels = [LevelHistory(level=lv, moves=by_level[lv]) for lv in LEVELS if lv in by_level]
        out = DisputeDetail(**_game(g, clock.timestamp).model_dump(), levels=levels)
        return cached(request, out)

    # ------------------------------------------------------------------ accounts

    @v1.get(
        "/accounts/{address}",
        response_model=AccountRecord,
        summary="Trainer and challenger record of an address",
    )
    def account(request: Request, address: Annotated[str, Path(pattern=ADDRESS_RE)]) -> Response:
        import re

        if not re.fullmatch(ADDRESS_RE, address):
            raise ApiError(
                422, "Malformed address", f"{address!r} is not a 0x-prefixed 20-byte hex address"
            )
        addr = _address(address, "address")
        with sessions() as s:
            jobs = s.scalars(select(Job).where(Job.trainer == addr)).all()
            t_games = s.scalars(
                select(Game).join(Job, Job.id == Game.job_id).where(Job.trainer == addr)
            ).all()
            c_games = s.scalars(select(Game).where(Game.challenger == addr)).all()
            credits = s.execute(
                select(Event.name, Event.data).where(
                    Event.account == addr, Event.name.in_(("Credited", "Withdrawn"))
                )
            ).all()
        t_earned = sum(
            int(d["amount"])
            for n, d in credits
            if n == "Credited" and d["reason"] in ("reward and stake", "challenger bond")
        )
        c_earned = sum(
            int(d["amount"])
            for n, d in credits
            if n == "Credited" and d["reason"] in ("bond and stake share", "bond refund")
        )
        # own money back vs earnings: finalize credits a trainer exactly stake + reward; a won
        # game's settle credits its challenger exactly bond + share (refunds: the bond)
        t_returned = sum(int(j.stake) for j in jobs if j.status == JobStatus.FINALIZED)
        c_returned = sum(
            int(d["amount"]) for n, d in credits if n == "Credited" and d["reason"] == "bond refund"
        ) + sum(int(g.bond) for g in c_games if g.trainer_won is False and g.settled)
        record = AccountRecord(
            address=addr,
            as_trainer=RoleRecord(
                count=len(jobs),
                wins=sum(1 for g in t_games if g.trainer_won is True),
                losses=sum(1 for g in t_games if g.trainer_won is False),
                slashed=str(sum(int(j.stake) for j in jobs if j.status == JobStatus.REJECTED)),
                earned=str(t_earned),
                returned=str(t_returned),
                profit=str(t_earned - t_returned),
            ),
            as_challenger=RoleRecord(
                count=len(c_games),
                wins=sum(1 for g in c_games if g.trainer_won is False),
                losses=sum(1 for g in c_games if g.trainer_won is True),
                slashed=str(sum(int(g.bond) for g in c_games if g.trainer_won is True)),
                earned=str(c_earned),
                returned=str(c_returned),
                profit=str(c_earned - c_returned),
            ),
            credited=str(sum(int(d["amount"]) for n, d in credits if n == "Credited")),
            withdrawn=str(sum(int(d["amount"]) for n, d in credits if n == "Withdrawn")),
        )
        return cached(request, record)

    # ------------------------------------------------------------------ attestations

    @v1.post(
        "/attestations",
        response_model=AttestationOut,
        status_code=201,
        summary="Submit a signed coverage attestation (EIP-712)",
        responses=_problem_responses(400, 404, 409),
    )
    def post_attestation(body: AttestationIn) -> JSONResponse:
        cid, addr = meta()
        if cid is None or addr is None:
            raise ApiError(503, "Not configured", "the index has no chain id / contract yet")
        msg = attest.signable(
            cid,
            addr,
            attest.coverage_message(
                body.job_id,
                body.run_root,
                body.interval,
                body.challenger,
                body.timestamp,
                body.nonce,
            ),
        )
        try:
            signer = attest.recover(msg, body.signature)
        except Exception as e:
            raise ApiError(400, "Bad signature", f"cannot recover a signer: {e}") from e
        claimed = to_checksum_address(body.challenger)
        if signer != claimed:
            raise ApiError(
                400, "Bad signature", f"signed by {signer}, not by the challenger {claimed}"
            )
        t = now()
        if body.timestamp < t - attest.MAX_AGE_S:
            raise ApiError(
                400,
                "Expired attestation",
                f"signed at {body.timestamp}, older than {attest.MAX_AGE_S} s",
            )
        if body.timestamp > t + attest.MAX_SKEW_S:
            raise ApiError(
                400,
                "Attestation from the future",
                f"timestamp {body.timestamp} is ahead of the server clock",
            )
        d = attest.digest(msg)
        with sessions.begin() as s:
            job = _job(s, body.job_id)
            if job.run_root is None or job.run_root.lower() != body.run_root.lower():
                raise ApiError(
                    409,
                    "Not the committed run",
                    f"job {job.id} has run_root {job.run_root}, not {body.run_root}",
                )
            if body.interval >= job.steps // job.every:
                raise ApiError(
                    400, "No such interval", f"job {job.id} has {job.steps // job.every} intervals"
                )
            if (
                s.get(Attestation, d) is not None
                or s.scalar(
                    select(Attestation.digest).where(
                        Attestation.challenger == claimed, Attestation.nonce == body.nonce.lower()
                    )
                )
                is not None
            ):
                raise ApiError(
                    409,
                    "Replayed attestation",
                    f"attestation {d} or its nonce was already submitted",
                )
            s.add(
                Attestation(
                    digest=d,
                    challenger=claimed,
                    job_id=job.id,
                    run_root=job.run_root,
                    interval=body.interval,
                    nonce=body.nonce.lower(),
                    timestamp=body.timestamp,
                    signature=body.signature,
                    received_at=int(t),
                )
            )
            try:
                s.flush()
            except IntegrityError as e:
                raise ApiError(409, "Replayed attestation", "nonce already used") from e
        log.info("attestation job=%d interval=%d challenger=%s", job.id, body.interval, claimed)
        out = AttestationOut(
            digest=d, job_id=body.job_id, interval=body.interval, challenger=claimed
        )
        return JSONResponse(out.model_dump(), status_code=201)

    @v1.get("/attestations/domain", summary="The EIP-712 domain and types to sign")
    def attestation_domain() -> dict[str, Any]:
        cid, addr = meta()
        if cid is None or addr is None:
            raise ApiError(503, "Not configured", "the index has no chain id / contract yet")
        return {
            "domain": attest.domain(cid, addr),
            "types": attest.COVERAGE_TYPES,
            "primaryType": "Coverage",
            "max_age_s": attest.MAX_AGE_S,
        }

    # ------------------------------------------------------------------ live events

    @v1.get(
        "/events",
        summary="Server-sent status changes (text/event-stream)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def events(
        job_id: Annotated[int | None, Query(ge=1, lt=2**53)] = None,
        after: Annotated[int | None, Query(ge=0, lt=2**53)] = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        start = after
        if start is None and last_event_id and last_event_id.isdigit():
            start = int(last_event_id)
        if start is None:
            with sessions() as s:
                start = s.scalar(select(func.max(Change.id))) or 0

        async def stream() -> AsyncIterator[bytes]:
            cursor, sent, idle = start, 0, 0.0
            yield b": trainproof status stream\n\n"
            while True:
                with sessions() as s:
                    q = select(Change).where(Change.id > cursor).order_by(Change.id).limit(200)
                    if job_id is not None:
                        q = q.where(Change.job_id == job_id)
                    rows = s.scalars(q).all()
                for c in rows:
                    cursor = c.id
                    data = {
                        "kind": c.kind,
                        "job_id": c.job_id,
                        "game_id": c.game_id,
                        "block": c.block_number,
                        **c.data,
                    }
                    yield f"id: {c.id}\nevent: {c.kind}\ndata: {json.dumps(data)}\n\n".encode()
                    sent += 1
                    if limit is not None and sent >= limit:
                        return
                if not rows:
                    await asyncio.sleep(sse_poll_s)
                    idle += sse_poll_s
                    if idle >= 15:
                        idle = 0.0
                        yield b": keep-alive\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    app.include_router(v1)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard", StaticFiles(directory=STATIC, html=True), name="dashboard")
    return app


def _check_id(value: int) -> None:
    if not 1 <= value < 2**53:
        raise ApiError(404, "Not found", f"id {value} is out of range")


def _short(data: dict[str, Any]) -> dict[str, Any]:
    """Event data for a timeline: long byte strings (chunks) elided."""
    return {
        k: (v[:66] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in data.items()
    }


def bonded_signers(s: Session, job: Job) -> set[str]:
    """Addresses (lower case) that have put money at risk in the contract: challengers of
    any indexed dispute (a bond of at least MIN_BOND, 25 % of it burned if they lose) and
    trainers of other jobs (a stake). The job's own trainer and requester never count: their
    word about their own job is worth nothing (docs/protocol.md §6)."""
    who = {c.lower() for c in s.scalars(select(Game.challenger).distinct())}
    who |= {
        t.lower()
        for t in s.scalars(select(Job.trainer).where(Job.id != job.id, Job.trainer.is_not(None)))
        if t
    }
    return who - {a.lower() for a in (job.trainer, job.requester) if a}


def bonded_per_interval(s: Session, job: Job) -> dict[int, int]:
    """Per interval of the job's commitment, the distinct bonded signers that attested it."""
    bonded = bonded_signers(s, job)
    pairs = s.execute(
        select(Attestation.interval, Attestation.challenger)
        .where(Attestation.job_id == job.id, Attestation.run_root == (job.run_root or ""))
        .distinct()
    ).all()
    out: dict[int, int] = {}
    for interval, signer in pairs:
        if signer.lower() in bonded:
            out[int(interval)] = out.get(int(interval), 0) + 1
    return out
