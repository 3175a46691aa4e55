"""ORM models of the catalog. Query functions live in :mod:`drkit.catalog.queries`.

``records`` is append-only: a finished record is never updated (runs in flight are journaled
apart, see :mod:`drkit.catalog.inflight`). ``chain_head`` holds the newest hash and is the row
whose lock serializes appends across processes and hosts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

GENESIS_HASH = "0" * 64


class Base(DeclarativeBase):
    pass


class Record(Base):
    """One finished run (backup, repo init, check, prune, drill, report) and its evidence."""

    __tablename__ = "records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    run_id: Mapped[str] = mapped_column(String(36), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    target: Mapped[str | None] = mapped_column(String(128))
    repository: Mapped[str | None] = mapped_column(String(128))
    plan: Mapped[str | None] = mapped_column(String(128))
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    drkit_version: Mapped[str] = mapped_column(String(32), nullable=False)
    restic_version: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # Format 2 (drkit.catalog.chain): who ran it and which effective config was in force.
    format: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    actor: Mapped[str | None] = mapped_column(String(255))
    config_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_records_kind_target_finished", "kind", "target", "finished_at"),
        Index("ix_records_kind_repository_finished", "kind", "repository", "finished_at"),
        Index("ix_records_kind_plan_finished", "kind", "plan", "finished_at"),
        # Good backups in time order with each one's repository and recovery point: the
        # report's RPO exposure reads this index alone.
        Index("ix_records_kind_status_target_finished_repo_started", "kind", "status",
              "target", "finished_at", "repository", "started_at"),
        Index("ix_records_kind_status_target_repository_seq", "kind", "status", "target",
              "repository", "seq"),
        Index("ix_records_kind_target_repository_seq", "kind", "target", "repository", "seq"),
        Index("ix_records_finished", "finished_at"),
        Index("ix_records_run_id", "run_id"),
        # Each host's newest runs per target and repository (status, metrics).
        Index("ix_records_kind_status_hostname_target_repository_seq", "kind", "status",
              "hostname", "target", "repository", "seq"),
        Index("ix_records_kind_hostname_target_repository_seq", "kind", "hostname", "target",
              "repository", "seq"),
    )


class ChainHead(Base):
    """The single row (id 1) holding the newest record's sequence number and hash."""

    __tablename__ = "chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class Checkpoint(Base):
    """A signed statement of the chain's head: its ``payload`` (canonical JSON: sequence,
    head hash, the hashes of the records since the previous checkpoint, time, host, signer)
    and an Ed25519 ``signature`` of it (base64). Written after every run that appended
    records; copies are anchored outside the database (a local append-only file, the
    evidence bucket under object lock), which is what makes them evidence. ``anchored``
    says where the copy in the bucket went (set after the upload; not part of the payload).
    """

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    head_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    signature: Mapped[str] = mapped_column(String(128), nullable=False)
    anchored: Mapped[str | None] = mapped_column(Text)


class AnomalyIndex(Base):
    """Derived from the chain: one row per backup record whose evidence flags an anomaly,
    written in the record's own transaction, so that `status` and `metrics` need not read
    every record's evidence. Reports read the chain itself."""

    __tablename__ = "anomaly_index"

    record_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    target: Mapped[str | None] = mapped_column(String(128))
    repository: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_anomaly_index_hostname_target", "hostname", "target"),)
