"""Good backups by target and time, covering each one's repository and start (its recovery
point): the report's RPO exposure per repository reads this index alone, as the gaps between
good backups read the index it replaces (whose columns are its first four, so it serves the
same lookups).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_records_kind_status_target_finished_repo_started", "records",
                    ["kind", "status", "target", "finished_at", "repository", "started_at"])
    op.drop_index("ix_records_kind_status_target_finished", "records")


def downgrade() -> None:
    op.create_index("ix_records_kind_status_target_finished", "records",
                    ["kind", "status", "target", "finished_at"])
    op.drop_index("ix_records_kind_status_target_finished_repo_started", "records")
