"""Queries behind ``drkit report``: SQL aggregation over a period, nothing loaded wholesale.

Each function takes a Session and a :class:`Scope` (the period and which plans, targets and
repositories are in the report). Counting and the gaps between good backups are done by the
database (GROUP BY, a LAG window), so a report over 100,000 records stays well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, true
from sqlalchemy.orm import Session

from drkit.catalog.models import ChainHead, Record

# The columns of a record in report order (CSV header, JSON keys); evidence is kept as text.
RECORD_COLUMNS = ("seq", "id", "run_id", "kind", "status", "target", "repository", "plan",
                  "started_at", "finished_at", "snapshot_id", "hostname", "drkit_version",
                  "restic_version", "error", "hash", "prev_hash", "evidence")


@dataclass(frozen=True)
class Scope:
    """The period ``[since, until)`` (naive UTC) and the subjects a report covers.

    ``None`` for plans/targets/repositories means all of them (records of subjects no longer
    declared included); a set limits the report to those names.
    """

    since: datetime
    until: datetime
    plans: frozenset[str] | None = None
    targets: frozenset[str] | None = None
    repositories: frozenset[str] | None = None

    @property
    def unfiltered(self) -> bool:
        return self.plans is None and self.targets is None and self.repositories is None


def _in(column: Any, names: frozenset[str] | None) -> ColumnElement[bool]:
    if names is None:
        return true()
    result: ColumnElement[bool] = column.in_(sorted(names)) if names else false()
    return result


def subject_filter(scope: Scope) -> ColumnElement[bool]:
    """Which records belong to the scope's subjects (whatever their time)."""
    if scope.unfiltered:
        return true()
    return or_(
        and_(Record.kind == "drill", _in(Record.plan, scope.plans)),
        and_(Record.kind.in_(("backup", "prune")), _in(Record.target, scope.targets)),
        and_(Record.kind.in_(("check", "repo_init")), _in(Record.repository, scope.repositories)),
    )


def in_period(scope: Scope) -> ColumnElement[bool]:
    return and_(Record.finished_at >= scope.since, Record.finished_at < scope.until)


def chain_head(session: Session) -> tuple[int, str]:
    """The newest record's sequence number and hash (what the report is built from)."""
    head = session.get(ChainHead, 1)
    return (head.seq, head.hash) if head else (0, "0" * 64)


def counts_by_status(session: Session, scope: Scope) -> list[tuple[str, str | None, str, int]]:
    """(kind, subject, status, count) for every record in the period; the subject is the
    target for backups/prunes, the repository for checks, the plan for drills."""
    subject = case((Record.kind == "drill", Record.plan),
                   (Record.kind.in_(("check", "repo_init")), Record.repository),
                   else_=Record.target)
    rows = session.execute(
        select(Record.kind, subject.label("subject"), Record.status, func.count())
        .where(in_period(scope), subject_filter(scope))
        .group_by(Record.kind, subject, Record.status))
    return [(kind, name, status, count) for kind, name, status, count in rows]


def _seconds_between(session: Session, later: Any, earlier: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


@dataclass(frozen=True)
class BackupGaps:
    """Good backups of one target in the period and the longest wait between two of them."""

    target: str
    good_backups: int
    longest_gap_s: float | None
    longest_gap_ended_at: datetime | None
    last_good_at: datetime | None  # newest good backup before the period's end


def backup_gaps(session: Session, scope: Scope) -> dict[str, BackupGaps]:
    """Per target: the longest time between consecutive good backups (any repository) that
    ends inside the period (the previous backup may be older than the period), and the newest
    good backup before the period's end (the caller adds the exposure still open at the end)."""
    good = and_(Record.kind == "backup", Record.status == "succeeded",
                Record.finished_at < scope.until, _in(Record.target, scope.targets))
    previous = func.lag(Record.finished_at).over(partition_by=Record.target,
                                                 order_by=Record.finished_at)
    lagged = (select(Record.target, Record.finished_at, previous.label("previous"))
              .where(good).subquery())
    gap = _seconds_between(session, lagged.c.finished_at, lagged.c.previous).label("gap")
    gaps = select(lagged.c.target, lagged.c.finished_at, gap).where(
        lagged.c.finished_at >= scope.since).subquery()
    longest = (select(gaps.c.target, func.max(gaps.c.gap).label("longest"),
                      func.count().label("good"))
               .group_by(gaps.c.target).subquery())
    result: dict[str, BackupGaps] = {}
    rows = session.execute(
        select(longest.c.target, longest.c.good, longest.c.longest, gaps.c.finished_at)
        .join(gaps, and_(gaps.c.target == longest.c.target, gaps.c.gap == longest.c.longest),
              isouter=True))
    for target, count, longest_s, ended in rows:
        if target in result:  # two gaps of the same length: keep the first
            continue
        result[target] = BackupGaps(target=target, good_backups=count,
                                    longest_gap_s=float(longest_s) if longest_s is not None
                                    else None, longest_gap_ended_at=ended, last_good_at=None)
    for target, last in session.execute(
            select(Record.target, func.max(Record.finished_at)).where(good)
            .group_by(Record.target)):
        if target is None:
            continue
        known = result.get(target)
        result[target] = BackupGaps(
            target=target, good_backups=known.good_backups if known else 0,
            longest_gap_s=known.longest_gap_s if known else None,
            longest_gap_ended_at=known.longest_gap_ended_at if known else None,
            last_good_at=last)
    return result


def gap_series(session: Session, scope: Scope) -> dict[str, list[tuple[datetime, float]]]:
    """Per target, each good backup in the period with the wait since the previous one (for
    the RPO-exposure chart)."""
    good = and_(Record.kind == "backup", Record.status == "succeeded",
                Record.finished_at < scope.until, _in(Record.target, scope.targets))
    previous = func.lag(Record.finished_at).over(partition_by=Record.target,
                                                 order_by=Record.finished_at)
    lagged = (select(Record.target, Record.finished_at, previous.label("previous"))
              .where(good).subquery())
    gap = _seconds_between(session, lagged.c.finished_at, lagged.c.previous)
    series: dict[str, list[tuple[datetime, float]]] = {}
    for target, at, seconds in session.execute(
            select(lagged.c.target, lagged.c.finished_at, gap)
            .where(lagged.c.finished_at >= scope.since, lagged.c.previous.is_not(None))
            .order_by(lagged.c.target, lagged.c.finished_at)):
        series.setdefault(target, []).append((at, float(seconds)))
    return series


def records_of_kind(session: Session, scope: Scope, kind: str) -> list[Record]:
    """Every record of ``kind`` in the period (used for drills and checks, which are few)."""
    return list(session.scalars(
        select(Record).where(Record.kind == kind, in_period(scope), subject_filter(scope))
        .order_by(Record.seq)))


def latest_before_end(session: Session, scope: Scope, kind: str,
                      subject: Any) -> dict[str, Record]:
    """The newest record of ``kind`` per subject that finished inside the period."""
    newest = (select(subject, func.max(Record.seq).label("seq"))
              .where(Record.kind == kind, in_period(scope), subject_filter(scope))
              .group_by(subject).subquery())
    return {getattr(r, subject.key) or "": r
            for r in session.scalars(select(Record).join(newest, Record.seq == newest.c.seq))}


def period_records(session: Session, scope: Scope) -> Iterator[Any]:
    """Every record in the period in chain order, as plain rows (streamed in batches)."""
    columns = [getattr(Record, name) for name in RECORD_COLUMNS]
    yield from session.execute(
        select(*columns).where(in_period(scope), subject_filter(scope)).order_by(Record.seq)
        .execution_options(yield_per=5000))
