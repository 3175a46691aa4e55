"""Read-only questions asked of the catalog; each takes a Session and uses SQL aggregation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from drkit.catalog.models import Record


@dataclass(frozen=True)
class RepositoryState:
    """For one (target, repository): the last good backup and the latest run's outcome.

    ``recovery_point_at`` is the last good backup's ``started_at`` (its recovery point): the
    run begins before the data is captured, so the data it holds is at least that new.
    """

    target: str
    repository: str
    last_success_at: datetime | None
    last_snapshot_id: str | None
    last_run_at: datetime | None
    last_status: str | None
    last_error: str | None
    recovery_point_at: datetime | None = None


def backup_states(session: Session, kinds: tuple[str, ...] = ("backup",), *,
                  host: str | None = None
                  ) -> list[RepositoryState]:
    """The state of every (target, repository) pair that has a backup record (made by
    ``host``, when given: a catalog shared by deployments keeps each one's own)."""
    mine = (Record.hostname == host,) if host is not None else ()
    last_success = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind.in_(kinds), Record.status == "succeeded", *mine)
        .group_by(Record.target, Record.repository)
        .subquery()
    )
    last_run = (
        select(Record.target, Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind.in_(kinds), *mine)
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
            recovery_point_at=success.started_at if success else None,
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


def last_passed_drills(session: Session) -> dict[str, datetime]:
    """When each plan's newest passed drill finished."""
    rows = session.execute(
        select(Record.plan, func.max(Record.finished_at))
        .where(Record.kind == "drill", Record.status == "passed").group_by(Record.plan))
    return {plan: finished for plan, finished in rows if plan}


def last_checks(session: Session) -> dict[str, LastRun]:
    """The newest check record of each repository."""
    return _latest_by(session, "check", Record.repository)
