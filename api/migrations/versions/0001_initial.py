"""initial schema

The index schema of the first release: what ``Base.metadata.create_all`` made before there
were migrations (such databases are stamped at this revision by ``api.db.migrate``).

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Nine tables, no foreign keys (every table but ``events`` is derived from ``events`` and is
re-derived after a reorg). Chain ids, block numbers and game/job ids are BIGINT; the two
surrogate keys (``events.id``, ``changes.id``) are BIGSERIAL on PostgreSQL and
``INTEGER PRIMARY KEY AUTOINCREMENT`` on SQLite (its rowid alias, never reused), every other
integer key is explicit (``autoincrement=False``: no sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SURROGATE_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "blocks",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )

    op.create_table(
        "events",
        sa.Column("id", _SURROGATE_ID, nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("game_id", sa.BigInteger(), nullable=True),
        sa.Column("account", sa.String(length=42), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("block_number", "log_index", name="uq_event_position"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_block_number", "events", ["block_number"])
    op.create_index("ix_events_job_id", "events", ["job_id"])
    op.create_index("ix_events_game_id", "events", ["game_id"])
    op.create_index("ix_events_account", "events", ["account"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("job_hash", sa.String(length=66), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("trainer", sa.String(length=42), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("reward", sa.String(length=80), nullable=False),
        sa.Column("stake", sa.String(length=80), nullable=False),
        sa.Column("bond", sa.String(length=80), nullable=False),
        sa.Column("program_root", sa.String(length=66), nullable=False),
        sa.Column("program_len", sa.BigInteger(), nullable=False),
        sa.Column("dataset_root", sa.String(length=66), nullable=False),
        sa.Column("initial_root", sa.String(length=66), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("every", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.BigInteger(), nullable=False),
        sa.Column("clock", sa.BigInteger(), nullable=False),
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("train_time", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", sa.BigInteger(), nullable=False),
        sa.Column("registered_block", sa.BigInteger(), nullable=False),
        sa.Column("accepted_at", sa.BigInteger(), nullable=True),
        sa.Column("commit_deadline", sa.BigInteger(), nullable=True),
        sa.Column("committed_at", sa.BigInteger(), nullable=True),
        sa.Column("challenge_deadline", sa.BigInteger(), nullable=True),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.Column("run_root", sa.String(length=66), nullable=True),
        sa.Column("open_games", sa.Integer(), nullable=False),
        sa.Column("games_total", sa.Integer(), nullable=False),
        sa.Column("updated_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_requester", "jobs", ["requester"])
    op.create_index("ix_jobs_trainer", "jobs", ["trainer"])
    op.create_index("ix_jobs_status", "jobs", ["status"])

    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("root", sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "index"),
    )

    op.create_table(
        "games",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("challenger", sa.String(length=42), nullable=False),
        sa.Column("interval", sa.BigInteger(), nullable=False),
        sa.Column("bond", sa.String(length=80), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.BigInteger(), nullable=False),
        sa.Column("numel", sa.BigInteger(), nullable=False),
        sa.Column("node_lo", sa.BigInteger(), nullable=False),
        sa.Column("node_hi", sa.BigInteger(), nullable=False),
        sa.Column("element", sa.BigInteger(), nullable=False),
        sa.Column("trainer_clock", sa.BigInteger(), nullable=False),
        sa.Column("challenger_clock", sa.BigInteger(), nullable=False),
        sa.Column("last_move", sa.BigInteger(), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("opened_at", sa.BigInteger(), nullable=False),
        sa.Column("resolved_at", sa.BigInteger(), nullable=True),
        sa.Column("trainer_won", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("updated_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_games_job_id", "games", ["job_id"])
    op.create_index("ix_games_challenger", "games", ["challenger"])

    op.create_table(
        "moves",
        sa.Column("game_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("chunk_index", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint("game_id", "seq"),
    )

    op.create_table(
        "changes",
        sa.Column("id", _SURROGATE_ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("game_id", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "attestations",
        sa.Column("digest", sa.String(length=66), nullable=False),
        sa.Column("challenger", sa.String(length=42), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("run_root", sa.String(length=66), nullable=False),
        sa.Column("interval", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.String(length=66), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(length=140), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
        sa.UniqueConstraint("challenger", "nonce", name="uq_attestation_nonce"),
    )
    op.create_index("ix_attestations_challenger", "attestations", ["challenger"])
    op.create_index("ix_attestation_job", "attestations", ["job_id", "run_root"])


def downgrade() -> None:
    # dropping a table drops its indexes and constraints with it
    for table in (
        "attestations",
        "changes",
        "moves",
        "games",
        "checkpoints",
        "jobs",
        "events",
        "blocks",
        "meta",
    ):
        op.drop_table(table)
