"""Index status changes by job: an SSE stream that follows one job seeks to its next change
instead of scanning every change since it connected.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:18:51.858884
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_change_job", "changes", ["job_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_change_job", table_name="changes")
