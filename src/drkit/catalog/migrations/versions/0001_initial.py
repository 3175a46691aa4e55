"""The catalog as drkit 0.1 created it: the record chain and its head.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("target", sa.String(128)),
        sa.Column("repository", sa.String(128)),
        sa.Column("plan", sa.String(128)),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("drkit_version", sa.String(32), nullable=False),
        sa.Column("restic_version", sa.String(32)),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("snapshot_id", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_records_kind_target_finished", "records",
                    ["kind", "target", "finished_at"])
    op.create_index("ix_records_kind_repository_finished", "records",
                    ["kind", "repository", "finished_at"])
    op.create_index("ix_records_finished", "records", ["finished_at"])
    op.create_index("ix_records_run_id", "records", ["run_id"])
    op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chain_head")
    op.drop_index("ix_records_run_id", "records")
    op.drop_index("ix_records_finished", "records")
    op.drop_index("ix_records_kind_repository_finished", "records")
    op.drop_index("ix_records_kind_target_finished", "records")
    op.drop_table("records")
