"""Monitoring: an index of the backups flagged as anomalies, and indexes that let `status`
and `drkit metrics` find each target's newest runs of this host without reading every
record.

``anomaly_index`` is derived from the chain (a row per backup record whose evidence says
``anomaly.flagged``), written in the same transaction as the record; `status`, `metrics`,
`ack` and `pick: last_normal` read it, reports read the chain itself. Existing flagged
records are indexed here.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "anomaly_index",
        sa.Column("record_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("target", sa.String(128), nullable=True),
        sa.Column("repository", sa.String(128), nullable=True),
    )
    op.create_index("ix_anomaly_index_hostname_target", "anomaly_index",
                    ["hostname", "target"])
    op.create_index("ix_records_kind_status_hostname_target_repository_seq", "records",
                    ["kind", "status", "hostname", "target", "repository", "seq"])
    op.create_index("ix_records_kind_hostname_target_repository_seq", "records",
                    ["kind", "hostname", "target", "repository", "seq"])
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, hostname, target, repository, evidence FROM records "
        "WHERE kind = 'backup' AND evidence LIKE :flagged"),
        {"flagged": '%"flagged":true%'}).all()
    found = []
    for record_id, hostname, target, repository, evidence in rows:
        anomaly = json.loads(evidence).get("anomaly")
        if isinstance(anomaly, dict) and anomaly.get("flagged") is True:
            found.append({"record_id": record_id, "hostname": hostname, "target": target,
                          "repository": repository})
    if found:
        bind.execute(sa.text("INSERT INTO anomaly_index (record_id, hostname, target, "
                             "repository) VALUES (:record_id, :hostname, :target, "
                             ":repository)"), found)


def downgrade() -> None:
    op.drop_index("ix_records_kind_hostname_target_repository_seq", "records")
    op.drop_index("ix_records_kind_status_hostname_target_repository_seq", "records")
    op.drop_index("ix_anomaly_index_hostname_target", "anomaly_index")
    op.drop_table("anomaly_index")
