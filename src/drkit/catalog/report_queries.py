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

from sqlalchemy import (
    ColumnElement,
    String,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    type_coerce,
)
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


def _iso_text(session: Session, column: Any) -> Any:
    """``column`` (a DateTime) as canonical ISO-8601 UTC text, formatted by the database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    # SQLAlchemy stores SQLite DateTimes as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return func.replace(type_coerce(column, String), " ", "T").concat("Z")


def _seconds_between(session: Session, later: Any, earlier: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _raw_time(session: Session, column: Any) -> Any:
    """``column`` without SQLAlchemy's per-row DateTime conversion on SQLite (parsed later
    with the much faster ``datetime.fromisoformat``)."""
    if session.get_bind().dialect.name == "sqlite":
        return type_coerce(column, String)
    return column


def _parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@dataclass(frozen=True)
class BackupGaps:
    """Good backups of one target in the period and the longest wait between two of them."""

    target: str
    good_backups: int
    longest_gap_s: float | None
    longest_gap_ended_at: datetime | None
    last_good_at: datetime | None  # newest good backup before the period's end
    series: tuple[tuple[datetime, float], ...] = ()


def backup_gaps(session: Session, scope: Scope, targets: list[str], *,
                series: bool = False) -> dict[str, BackupGaps]:
    """Per target: the longest time between consecutive good backups (any repository) that
    ends inside the period (the previous backup may be older than the period), and the newest
    good backup before the period's end (the caller adds the exposure still open at the end).

    Two index seeks per target on ``(kind, status, target, finished_at)``, which covers both
    queries: the newest good backup before the period, then the good backups inside it.
    ``series``: also every (backup time, gap) pair, for charts.
    """
    result: dict[str, BackupGaps] = {}
    for target in targets:
        good = and_(Record.kind == "backup", Record.status == "succeeded",
                    Record.target == target)
        anchor = session.execute(select(_raw_time(session, func.max(Record.finished_at)))
                                 .where(good, Record.finished_at < scope.since)).scalar()
        previous = _parse_time(anchor) if anchor is not None else None
        count = 0
        longest: float | None = None
        ended: datetime | None = None
        points: list[tuple[datetime, float]] = []
        for (raw,) in session.execute(select(_raw_time(session, Record.finished_at))
                                      .where(good, in_period(scope))
                                      .order_by(Record.finished_at)):
            at = _parse_time(raw)
            count += 1
            if previous is not None:
                gap = (at - previous).total_seconds()
                if series:
                    points.append((at, gap))
                if longest is None or gap > longest:
                    longest, ended = gap, at
            previous = at
        result[target] = BackupGaps(target, count, longest, ended, previous, tuple(points))
    return result


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


def period_records_json(session: Session, scope: Scope) -> Iterator[str]:
    """Every record in the period in chain order, each as one JSON object built by the
    database (the stored evidence is spliced in as it is: it is already canonical JSON)."""
    fields: list[Any] = []
    for name in RECORD_COLUMNS[:-1]:
        column = getattr(Record, name)
        if name in ("started_at", "finished_at"):
            column = _iso_text(session, column)
        fields += [literal_column(f"'{'record_id' if name == 'id' else name}'"), column]
    builder = (func.json_build_object if session.get_bind().dialect.name == "postgresql"
               else func.json_object)
    obj = cast(builder(*fields), Text)  # as text: psycopg would decode json into a dict
    # Core execution on the session's connection: no ORM result machinery per row.
    for text, evidence in session.connection().execute(
            select(obj, Record.evidence).where(in_period(scope), subject_filter(scope))
            .order_by(Record.seq).execution_options(yield_per=5000)):
        yield f'{text[:-1]},"evidence":{evidence or "{}"}}}'


def period_records_csv(session: Session, scope: Scope) -> Iterator[Any]:
    """Every record in the period in chain order as plain rows, times as ISO-8601 text."""
    columns = [_iso_text(session, getattr(Record, name)).label(name)
               if name in ("started_at", "finished_at") else getattr(Record, name)
               for name in RECORD_COLUMNS]
    duration = _seconds_between(session, Record.finished_at, Record.started_at)
    yield from session.connection().execute(
        select(*columns, duration.label("duration_s"))
        .where(in_period(scope), subject_filter(scope)).order_by(Record.seq)
        .execution_options(yield_per=5000))


def period_records(session: Session, scope: Scope) -> Iterator[Any]:
    """Every record in the period in chain order, as plain rows (streamed in batches)."""
    columns = [getattr(Record, name) for name in RECORD_COLUMNS]
    yield from session.connection().execute(
        select(*columns).where(in_period(scope), subject_filter(scope)).order_by(Record.seq)
        .execution_options(yield_per=5000))
