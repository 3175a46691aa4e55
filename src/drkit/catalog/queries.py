"""Read-only questions asked of the catalog; each takes a Session and uses SQL aggregation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
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
                  host: str | None = None,
                  pairs: Sequence[tuple[str, str]] | None = None
                  ) -> list[RepositoryState]:
    """The state of every (target, repository) pair that has a backup record (made by
    ``host``, when given: a catalog shared by deployments keeps each one's own). With
    ``host`` and ``pairs`` (target, repository), only those: two index lookups a pair
    instead of a pass over every record."""
    mine = (Record.hostname == host,) if host is not None else ()
    if host is not None and pairs is not None:
        return _states_of(session, kinds, host, pairs)
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


# Two result columns and a few parameters a pair: well under SQLite's 2,000 columns and
# 999 parameters of old builds, and PostgreSQL's 1,664 target-list entries.
_PAIRS_A_STATEMENT = 64


def states_by_host(session: Session, kinds: tuple[str, ...],
                   wanted: Sequence[tuple[str, str, str]]
                   ) -> dict[tuple[str, str], RepositoryState]:
    """The state of each (host, target, repository) asked for, keyed (target, repository):
    each target's records as made by the host whose data it is."""
    by_host: dict[str, list[tuple[str, str]]] = {}
    for host, target, repository in wanted:
        by_host.setdefault(host, []).append((target, repository))
    return {(s.target, s.repository): s for host, pairs in by_host.items()
            for s in _states_of(session, kinds, host, pairs)}


def _states_of(session: Session, kinds: tuple[str, ...], host: str,
               pairs: Sequence[tuple[str, str]]) -> list[RepositoryState]:
    unique = list(dict.fromkeys(pairs))
    if not unique:
        return []
    # One statement of two index lookups a pair, written as text: SQLAlchemy would spend
    # longer compiling a hundred scalar subqueries than the database spends running them.
    kinds_sql = ", ".join(f":k{i}" for i in range(len(kinds)))
    base = (f"SELECT max(seq) FROM records WHERE kind IN ({kinds_sql}) AND hostname = :host "
            "AND target = :t{i} AND repository = :r{i}")
    newest: dict[tuple[str, str], tuple[int | None, int | None]] = {}
    for start in range(0, len(unique), _PAIRS_A_STATEMENT):
        chunk = unique[start:start + _PAIRS_A_STATEMENT]
        parts = []
        params: dict[str, Any] = {"host": host,
                                  **{f"k{i}": kind for i, kind in enumerate(kinds)}}
        for i, (target, repository) in enumerate(chunk):
            lookup = base.format(i=i)
            parts += [f"({lookup})", f"({lookup} AND status = 'succeeded')"]
            params.update({f"t{i}": target, f"r{i}": repository})
        row = session.execute(text("SELECT " + ", ".join(parts)), params).one()
        newest.update({pair: (row[2 * i], row[2 * i + 1]) for i, pair in enumerate(chunk)})
    wanted = {seq for pair in newest.values() for seq in pair if seq is not None}
    records = {r.seq: r for r in session.scalars(select(Record).where(
        Record.seq.in_(sorted(wanted))))} if wanted else {}
    states = []
    for (target, repository), (last, good) in newest.items():
        if last is None:
            continue
        latest, success = records[last], records.get(good) if good is not None else None
        states.append(RepositoryState(
            target=target, repository=repository,
            last_success_at=success.finished_at if success else None,
            last_snapshot_id=success.snapshot_id if success else None,
            last_run_at=latest.finished_at, last_status=latest.status,
            last_error=latest.error,
            recovery_point_at=success.started_at if success else None))
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
