"""Job bundles: each job's bundle address (``JobSpec.bundle``) and what the API's bundle
checker (``api.bundles``) found when it fetched and verified the bundle.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Eight columns appended to ``jobs``. Jobs indexed before this revision keep ``bundle`` NULL
(their events carry no bundle) and start ``unchecked``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("bundle", lambda: sa.Column("bundle", sa.String(length=66), nullable=True)),
    (
        "bundle_status",
        lambda: sa.Column(
            "bundle_status", sa.String(length=16), server_default="unchecked", nullable=False
        ),
    ),
    ("bundle_part", lambda: sa.Column("bundle_part", sa.String(length=300), nullable=True)),
    ("bundle_why", lambda: sa.Column("bundle_why", sa.String(length=2000), nullable=True)),
    ("bundle_scope", lambda: sa.Column("bundle_scope", sa.String(length=120), nullable=True)),
    ("bundle_checked_at", lambda: sa.Column("bundle_checked_at", sa.BigInteger(), nullable=True)),
    (
        "bundle_tries",
        lambda: sa.Column("bundle_tries", sa.Integer(), server_default="0", nullable=False),
    ),
    ("bundle_next_check", lambda: sa.Column("bundle_next_check", sa.BigInteger(), nullable=True)),
)


def upgrade() -> None:
    for _name, column in COLUMNS:
        op.add_column("jobs", column())


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, _column in reversed(COLUMNS):
            batch.drop_column(name)
