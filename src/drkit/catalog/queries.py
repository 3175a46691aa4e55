"""Read-only questions asked of the catalog; each takes a Session and uses SQL aggregation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from drkit.catalog.models import Record


@dataclass(frozen=True)
class RepositoryState:
    """For one (target, repository): the last good backup and the latest run's outcome."""

    target: str
    repository: str
    last_success_at: datetime | None
    last_snapshot_id: str | None
    last_run_at: datetime | None
    last_status: str | None
    last_error: str | None


def backup_states(session: Session, kind: str = "backup", *, host: str | None = None
                  ) -> list[RepositoryState]:
    """The state of every (target, repository) pair that has a backup record (made by
    ``host``, when given: a catalog shared by deployments keeps each one's own)."""
    mine = (Record.hostname == host,) if host is not None else ()
    last_success = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind == kind, Record.status == "succeeded", *mine)
        .group_by(Record.target, Record.repository)
        .subquery()
    )
    last_run = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind == kind, *mine)
        .group_by(Record.target, Record.repository)
        .subquery()
    )
    successes = session.scalars(
        select(Record).join(last_success, Record.seq == last_success.c.seq))
    good = {(r.target, r.repository): r for r in successes}
    states = []
    for latest in session.scalars(select(Record).join(last_run, Record.seq == last_run.c.seq)):
        success = good.get((latest.target, latest.repository))
        states.append(RepositoryState(
            target=latest.target or "",
            repository=latest.repository or "",
            last_success_at=success.finished_at if success else None,
            last_snapshot_id=success.snapshot_id if success else None,
            last_run_at=latest.finished_at,
            last_status=latest.status,
            last_error=latest.error,
        ))
    return states


@dataclass(frozen=True)
class LastRun:
    """The newest record of one kind for one subject (a plan, a repository)."""

    subject: str
    finished_at: datetime
    status: str
    evidence: str


def _latest_by(session: Session, kind: str, subject: Any) -> dict[str, LastRun]:
    newest = (
        select(subject, func.max(Record.seq).label("seq"))
        .where(Record.kind == kind).group_by(subject).subquery()
    )
    rows = session.scalars(select(Record).join(newest, Record.seq == newest.c.seq))
    key = subject.key
    return {getattr(r, key) or "": LastRun(subject=getattr(r, key) or "",
                                           finished_at=r.finished_at, status=r.status,
                                           evidence=r.evidence) for r in rows}


def last_drills(session: Session) -> dict[str, LastRun]:
    """The newest drill record of each plan."""
    return _latest_by(session, "drill", Record.plan)


def last_checks(session: Session) -> dict[str, LastRun]:
    """The newest check record of each repository."""
    return _latest_by(session, "check", Record.repository)


def removed_snapshots(session: Session, repository: str) -> set[str]:
    """Snapshot ids that recorded prunes (finished or failed halfway) removed from
    ``repository``: what retention removed and the failed runs' snapshots they forgot."""
    removed: set[str] = set()
    for (evidence,) in session.execute(
            select(Record.evidence).where(Record.kind == "prune",
                                          Record.repository == repository)):
        data = json.loads(evidence)
        if data.get("dry_run"):
            continue
        removed.update(item["id"] for item in data.get("removed") or () if item.get("id"))
        removed.update(data.get("forgotten_failed") or ())
        # A forget that failed halfway with the storage gone: these were meant to go.
        removed.update(data.get("removal_uncertain") or ())
    return removed


def _is_removed(snapshot_id: str, removed: set[str]) -> bool:
    return snapshot_id in removed or any(full.startswith(snapshot_id) for full in removed)


def expected_snapshots(session: Session, repository: str) -> dict[str, tuple[str, datetime]]:
    """Snapshots the catalog says should be in ``repository``: every good backup's snapshot
    not since removed by a recorded prune. Maps snapshot id -> (target, backed up at)."""
    removed = removed_snapshots(session, repository)
    return {
        r.snapshot_id: (r.target or "", r.finished_at)
        for r in session.execute(
            select(Record.snapshot_id, Record.target, Record.finished_at)
            .where(Record.kind == "backup", Record.status == "succeeded",
                   Record.repository == repository, Record.snapshot_id.is_not(None)))
        if r.snapshot_id and not _is_removed(r.snapshot_id, removed)
    }


@dataclass(frozen=True)
class GoodSnapshot:
    """A snapshot the catalog recorded as a good backup."""

    snapshot_id: str
    finished_at: datetime
    record_id: int


def newest_good_snapshot(session: Session, *, target: str, repository: str,
                         host: str) -> GoodSnapshot | None:
    """The newest snapshot of ``target`` in ``repository`` that ``host``'s backups recorded
    as ``succeeded`` and no prune has removed: what a drill restores. restic's ``latest``
    is never asked: it may be a torn dump, an incomplete backup or another host's."""
    removed = removed_snapshots(session, repository)
    rows = session.execute(
        select(Record.id, Record.snapshot_id, Record.finished_at)
        .where(Record.kind == "backup", Record.status == "succeeded", Record.target == target,
               Record.repository == repository, Record.hostname == host,
               Record.snapshot_id.is_not(None))
        .order_by(Record.seq.desc()).execution_options(yield_per=100))
    for row in rows:
        if row.snapshot_id and not _is_removed(row.snapshot_id, removed):
            return GoodSnapshot(snapshot_id=row.snapshot_id, finished_at=row.finished_at,
                                record_id=row.id)
    return None


def snapshot_verdict(session: Session, snapshot_id: str) -> str | None:
    """The status of the backup run that made ``snapshot_id`` (a prefix is enough), if any."""
    return session.scalar(
        select(Record.status).where(Record.kind == "backup",
                                    Record.snapshot_id.startswith(snapshot_id))
        .order_by(Record.seq.desc()).limit(1))


def failed_run_snapshots(session: Session, *, target: str, repository: str,
                         host: str) -> list[str]:
    """Snapshots that ``host``'s failed backup runs of ``target`` left in ``repository`` (a
    torn dump, an incomplete backup) and that no prune has forgotten yet."""
    removed = removed_snapshots(session, repository)
    rows = session.scalars(
        select(Record.snapshot_id)
        .where(Record.kind == "backup", Record.status != "succeeded", Record.target == target,
               Record.repository == repository, Record.hostname == host,
               Record.snapshot_id.is_not(None)))
    return sorted({s for s in rows if s and not _is_removed(s, removed)})


def last_prune_failed(session: Session, *, target: str, repository: str, host: str) -> bool:
    """Whether ``host``'s last prune of ``target`` in ``repository`` failed (its prune phase
    may not have freed the data of what it forgot)."""
    status = session.scalar(
        select(Record.status).where(Record.kind == "prune", Record.target == target,
                                    Record.repository == repository, Record.hostname == host)
        .order_by(Record.seq.desc()).limit(1))
    return status is not None and status != "succeeded"
