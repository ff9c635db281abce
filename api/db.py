"""The index's SQLAlchemy 2 models and engine.

SQLite (a file) by default; PostgreSQL through ``DATABASE_URL`` (``postgresql+psycopg://...``).

Raw chain events are kept (``events``); every other table is derived from them, so a reorg
deletes the events of the forked blocks and re-derives only the jobs and games they touched.
Wei amounts are decimal strings (uint256 fits no SQL integer type on every backend).

The schema is made and upgraded by the Alembic revisions in ``api/migrations/versions``
(``migrate``, run by ``make_engine``; ``trainproof api migrate``). A change to these models
needs a new revision: ``trainproof api revision -m "what changed"`` autogenerates one.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
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
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

log = logging.getLogger("trainproof.api.db")

DEFAULT_DB = "sqlite:///trainproof-api.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema create_all made before there were migrations
BASELINE_TABLES = frozenset(
    {"meta", "blocks", "events", "jobs", "checkpoints", "games", "moves", "changes", "attestations"}
)
_PG_MIGRATION_LOCK = 0x7472_6E70_6D69_67  # pg_advisory_xact_lock key ("trnpmig")
# Alembic's ``context``/``op`` are module-level proxies: one command at a time per process
# (taken before the database's lock, so the two are always acquired in the same order)
_ALEMBIC = threading.Lock()


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
    # The job bundle (JobSpec.bundle, docs/protocol.md §5.4) and what api.bundles found when
    # it fetched and verified it (revision 0003; appended, so ALTER TABLE ADD COLUMN keeps the
    # columns in the models' order). None: the event predates the field.
    bundle: Mapped[str | None] = mapped_column(String(66))
    bundle_status: Mapped[str] = mapped_column(
        String(16), default="unchecked", server_default="unchecked"
    )
    bundle_part: Mapped[str | None] = mapped_column(String(300))
    bundle_why: Mapped[str | None] = mapped_column(String(2000))
    bundle_scope: Mapped[str | None] = mapped_column(String(120))
    bundle_checked_at: Mapped[int | None] = mapped_column(BigInteger)
    bundle_tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    bundle_next_check: Mapped[int | None] = mapped_column(BigInteger)


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
    __table_args__ = (
        # a stream that follows one job seeks to its next change instead of scanning them all
        Index("ix_change_job", "job_id", "id"),
        {"sqlite_autoincrement": True},
    )
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
    """An engine on ``url`` (see ``database_url``) whose schema has been migrated to head."""
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
    migrate(engine)
    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | Engine | None = None) -> Config:
    """An Alembic ``Config`` for the revisions shipped in ``api/migrations`` (no ini file);
    ``env.py`` runs on ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")  # for version_locations
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "api/migrations/versions has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: never migrated, or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def lock_for_migration(conn: Connection) -> None:
    """Serialize migrations of one database across processes, until ``conn``'s transaction
    ends: SQLite takes its write lock now (``BEGIN IMMEDIATE``; the DDL that follows then runs
    in that transaction, so it is all-or-nothing too); PostgreSQL takes a transaction-level
    advisory lock (its DDL is transactional anyway)."""
    name = conn.dialect.name
    if name == "sqlite":
        dbapi = conn.connection.dbapi_connection
        if getattr(dbapi, "in_transaction", False):
            raise RuntimeError("lock_for_migration needs a connection with no open transaction")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


def _stamp_legacy(conn: Connection, cfg: Config) -> None:
    """A database made by ``Base.metadata.create_all`` before migrations existed has the
    baseline tables but no ``alembic_version``: stamp it at the baseline instead of failing on
    CREATE TABLE. Some but not all of the baseline tables is not a schema we made: refuse."""
    if MigrationContext.configure(conn).get_current_revision() is not None:
        return
    present = BASELINE_TABLES & set(inspect(conn).get_table_names())
    if not present:
        return
    if present != BASELINE_TABLES:
        raise RuntimeError(
            f"{conn.engine.url.render_as_string(hide_password=True)} has index tables "
            f"{sorted(present)} but not {sorted(BASELINE_TABLES - present)} and no "
            "alembic_version: not a schema this code made; migrate it by hand or start afresh"
        )
    log.warning(
        "%s: tables made before migrations existed (no alembic_version); stamping revision %s",
        conn.engine.url.render_as_string(hide_password=True),
        BASELINE,
    )
    command.stamp(cfg, BASELINE)


def _already_exists(e: DBAPIError) -> bool:
    msg = str(e.orig).lower()
    return "already exists" in msg or "duplicate key" in msg


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade the database to ``revision`` (default: head) and return its revision.

    Idempotent, and safe to call from several processes at once on one database: the whole
    upgrade runs in one transaction holding ``lock_for_migration``, so a second caller waits
    and then finds nothing to do. Should DDL still collide with a concurrent creator (a
    backend without that lock), the transaction is rolled back and the version read again.
    """
    for attempt in range(3):
        try:
            with _ALEMBIC, engine.begin() as conn:
                lock_for_migration(conn)
                cfg = alembic_config(conn)
                _stamp_legacy(conn, cfg)
                command.upgrade(cfg, revision)
                return MigrationContext.configure(conn).get_current_revision()
        except DBAPIError as e:
            if attempt == 2 or not _already_exists(e):
                raise
            log.warning("concurrent schema creation (%s); checking the version again", e.orig)
    raise AssertionError("unreachable")
