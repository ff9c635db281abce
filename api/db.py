"""The index's SQLAlchemy 2 models and engine.

SQLite (a file) by default; PostgreSQL through ``DATABASE_URL`` (``postgresql+psycopg://...``).

Raw chain events are kept (``events``); every other table is derived from them, so a reorg
deletes the events of the forked blocks and re-derives only the jobs and games they touched.
Wei amounts are decimal strings (uint256 fits no SQL integer type on every backend).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

DEFAULT_DB = "sqlite:///trainproof-api.db"


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Indexer bookkeeping: ``tip`` (last indexed block), ``contract``, ``chain_id``."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Block(Base):
    """Hashes of indexed blocks (the tip of each sync and every block with logs)."""

    __tablename__ = "blocks"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66))
    timestamp: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    """One decoded TrainProof log."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("block_number", "log_index", name="uq_event_position"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    log_index: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[str] = mapped_column(String(66))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    game_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    account: Mapped[str | None] = mapped_column(String(42), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_hash: Mapped[str] = mapped_column(String(66))
    requester: Mapped[str] = mapped_column(String(42), index=True)
    trainer: Mapped[str | None] = mapped_column(String(42), index=True)
    status: Mapped[int] = mapped_column(Integer, index=True)
    reward: Mapped[str] = mapped_column(String(80))
    stake: Mapped[str] = mapped_column(String(80))
    bond: Mapped[str] = mapped_column(String(80))
    program_root: Mapped[str] = mapped_column(String(66))
    program_len: Mapped[int] = mapped_column(BigInteger)
    dataset_root: Mapped[str] = mapped_column(String(66))
    initial_root: Mapped[str] = mapped_column(String(66))
    steps: Mapped[int] = mapped_column(BigInteger)
    every: Mapped[int] = mapped_column(BigInteger)
    slots: Mapped[int] = mapped_column(BigInteger)
    clock: Mapped[int] = mapped_column(BigInteger)
    window: Mapped[int] = mapped_column(BigInteger)
    train_time: Mapped[int] = mapped_column(BigInteger)
    registered_at: Mapped[int] = mapped_column(BigInteger)
    registered_block: Mapped[int] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    commit_deadline: Mapped[int | None] = mapped_column(BigInteger)
    committed_at: Mapped[int | None] = mapped_column(BigInteger)
    challenge_deadline: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    run_root: Mapped[str | None] = mapped_column(String(66))
    open_games: Mapped[int] = mapped_column(Integer, default=0)
    games_total: Mapped[int] = mapped_column(Integer, default=0)
    updated_block: Mapped[int] = mapped_column(BigInteger)


class Checkpoint(Base):
    """C_{i*k} of a committed run (index 0 is the job's initial root C_0)."""

    __tablename__ = "checkpoints"
    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(66))


class Game(Base):
    """A dispute game; the view fields mirror ``TrainProof.game(id)`` at the indexed tip."""

    __tablename__ = "games"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_id: Mapped[int] = mapped_column(BigInteger, index=True)
    challenger: Mapped[str] = mapped_column(String(42), index=True)
    interval: Mapped[int] = mapped_column(BigInteger)
    bond: Mapped[str] = mapped_column(String(80))
    phase: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    lo: Mapped[int] = mapped_column(BigInteger, default=0)
    hi: Mapped[int] = mapped_column(BigInteger, default=0)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    op: Mapped[int] = mapped_column(BigInteger, default=0)
    numel: Mapped[int] = mapped_column(BigInteger, default=0)
    node_lo: Mapped[int] = mapped_column(BigInteger, default=0)
    node_hi: Mapped[int] = mapped_column(BigInteger, default=0)
    element: Mapped[int] = mapped_column(BigInteger, default=0)
    trainer_clock: Mapped[int] = mapped_column(BigInteger)
    challenger_clock: Mapped[int] = mapped_column(BigInteger)
    last_move: Mapped[int] = mapped_column(BigInteger)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    opened_at: Mapped[int] = mapped_column(BigInteger)
    resolved_at: Mapped[int | None] = mapped_column(BigInteger)
    trainer_won: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(64))
    updated_block: Mapped[int] = mapped_column(BigInteger)


class Move(Base):
    """One move of a game (a ``Moved`` or ``ChunkOpened`` log)."""

    __tablename__ = "moves"
    game_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    phase: Mapped[int] = mapped_column(Integer)
    lo: Mapped[int] = mapped_column(BigInteger)
    hi: Mapped[int] = mapped_column(BigInteger)
    values: Mapped[list[str]] = mapped_column(JSON)
    chunk_index: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))


class Change(Base):
    """The feed of status changes the SSE stream tails (appended, never rewritten)."""

    __tablename__ = "changes"
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # job | game | reorg
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    game_id: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Attestation(Base):
    """A challenger's signed claim that one interval of a commitment replayed and matched."""

    __tablename__ = "attestations"
    __table_args__ = (
        UniqueConstraint("challenger", "nonce", name="uq_attestation_nonce"),
        Index("ix_attestation_job", "job_id", "run_root"),
    )
    digest: Mapped[str] = mapped_column(String(66), primary_key=True)
    challenger: Mapped[str] = mapped_column(String(42), index=True)
    job_id: Mapped[int] = mapped_column(BigInteger)
    run_root: Mapped[str] = mapped_column(String(66))
    interval: Mapped[int] = mapped_column(BigInteger)
    nonce: Mapped[str] = mapped_column(String(66))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(140))
    received_at: Mapped[int] = mapped_column(BigInteger)


def database_url(explicit: str | None = None) -> str:
    """``explicit``, else ``$DATABASE_URL``, else a SQLite file in the working directory.
    A bare path is taken as a SQLite file."""
    url = explicit or os.environ.get("DATABASE_URL") or DEFAULT_DB
    if "://" not in url:
        url = f"sqlite:///{Path(url).resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10)
    Base.metadata.create_all(engine)
    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
