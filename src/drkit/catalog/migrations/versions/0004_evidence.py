"""Evidence an auditor can trust: record format 2 (who ran it, which config was in force)
and signed checkpoints of the chain's head.

Existing records keep format 1 (their hash covers the fields it always covered); new ones
are written in format 2, whose hash also covers ``format``, ``actor`` and ``config_hash``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("format", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("actor", sa.String(255), nullable=True))
        batch.add_column(sa.Column("config_hash", sa.String(64), nullable=True))
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("anchored", sa.Text(), nullable=True),
    )
    op.create_index("ix_checkpoints_seq", "checkpoints", ["seq"])


def downgrade() -> None:
    op.drop_index("ix_checkpoints_seq", "checkpoints")
    op.drop_table("checkpoints")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("config_hash")
        batch.drop_column("actor")
        batch.drop_column("format")
