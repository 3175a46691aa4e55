"""Index drill records by plan and time (reports and status ask per plan over a period).

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


def downgrade() -> None:
    op.drop_index("ix_records_kind_plan_finished", "records")
