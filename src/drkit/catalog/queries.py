"""Read-only questions asked of the catalog; each takes a Session and uses SQL aggregation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


def backup_states(session: Session, kind: str = "backup") -> list[RepositoryState]:
    """The state of every (target, repository) pair that has a backup record."""
    last_success = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind == kind, Record.status == "succeeded")
        .group_by(Record.target, Record.repository)
        .subquery()
    )
    last_run = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind == kind)
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
class LastDrill:
    plan: str
    finished_at: datetime
    status: str
    evidence: str


def last_drills(session: Session) -> dict[str, LastDrill]:
    """The newest drill record of each plan."""
    newest = (
        select(Record.plan, func.max(Record.seq).label("seq"))
        .where(Record.kind == "drill").group_by(Record.plan).subquery()
    )
    rows = session.scalars(select(Record).join(newest, Record.seq == newest.c.seq))
    return {r.plan or "": LastDrill(plan=r.plan or "", finished_at=r.finished_at,
                                    status=r.status, evidence=r.evidence) for r in rows}
