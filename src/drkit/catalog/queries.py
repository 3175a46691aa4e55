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


@dataclass(frozen=True)
class LastCheck:
    repository: str
    finished_at: datetime
    status: str
    evidence: str


def last_checks(session: Session) -> dict[str, LastCheck]:
    """The newest check record of each repository."""
    newest = (
        select(Record.repository, func.max(Record.seq).label("seq"))
        .where(Record.kind == "check").group_by(Record.repository).subquery()
    )
    rows = session.scalars(select(Record).join(newest, Record.seq == newest.c.seq))
    return {r.repository or "": LastCheck(repository=r.repository or "",
                                          finished_at=r.finished_at, status=r.status,
                                          evidence=r.evidence) for r in rows}


def expected_snapshots(session: Session, repository: str) -> dict[str, tuple[str, datetime]]:
    """Snapshots the catalog says should be in ``repository``: every good backup's snapshot
    not since removed by a recorded prune. Maps snapshot id -> (target, backed up at)."""
    import json

    expected = {
        r.snapshot_id: (r.target or "", r.finished_at)
        for r in session.execute(
            select(Record.snapshot_id, Record.target, Record.finished_at)
            .where(Record.kind == "backup", Record.status == "succeeded",
                   Record.repository == repository, Record.snapshot_id.is_not(None)))
        if r.snapshot_id
    }
    for (evidence,) in session.execute(
            select(Record.evidence).where(Record.kind == "prune", Record.status == "succeeded",
                                          Record.repository == repository)):
        for removed in json.loads(evidence).get("removed", []):
            for known in [k for k in expected if removed["id"].startswith(k)]:
                del expected[known]
    return expected
