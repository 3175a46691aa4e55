"""Indexes for reports and status over large catalogs (100,000 records: each query < 0.1 s).

- drills by plan and time;
- good backups by target and time: the RPO-gap computation reads this index alone;
- the newest (good) backup of each target and repository: ``status`` reads these alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_records_kind_plan_finished", "records", ["kind", "plan", "finished_at"])
    op.create_index("ix_records_kind_status_target_finished", "records",
                    ["kind", "status", "target", "finished_at"])
    op.create_index("ix_records_kind_status_target_repository_seq", "records",
                    ["kind", "status", "target", "repository", "seq"])
    op.create_index("ix_records_kind_target_repository_seq", "records",
                    ["kind", "target", "repository", "seq"])


def downgrade() -> None:
    op.drop_index("ix_records_kind_target_repository_seq", "records")
    op.drop_index("ix_records_kind_status_target_repository_seq", "records")
    op.drop_index("ix_records_kind_status_target_finished", "records")
    op.drop_index("ix_records_kind_plan_finished", "records")
