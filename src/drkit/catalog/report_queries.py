"""Queries behind ``drkit report``: SQL aggregation over a period, nothing loaded wholesale.

Each function takes a Session and a :class:`Scope` (the period and which plans, targets and
repositories are in the report). Counting is done by the database (GROUP BY); the exposures
between good backups come from index seeks and one ordered scan per target, so a report over
100,000 records stays well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
from drkit.catalog.snapshots import GOOD_KINDS

# The columns of a record in report order (CSV header, JSON keys); evidence is kept as text.
RECORD_COLUMNS = ("seq", "id", "run_id", "kind", "status", "target", "repository", "plan",
                  "started_at", "finished_at", "snapshot_id", "hostname", "drkit_version",
                  "restic_version", "error", "hash", "prev_hash", "format", "actor",
                  "config_hash", "evidence")


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
        and_(Record.kind.in_(("drill", "recover")), _in(Record.plan, scope.plans)),
        and_(Record.kind.in_(("backup", "copy", "prune", "restore", "ack", "spot")),
             _in(Record.target, scope.targets)),
        and_(Record.kind.in_(("check", "repo_init", "freshness")),
             _in(Record.repository, scope.repositories)),
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


@dataclass
class CopyExposure:
    """One copy of a target (its backups to one repository) over the period.

    A good backup's ``started_at`` is its **recovery point**: the run begins before the data
    is captured, so what it stored is at least that new. Until a good backup finishes, the
    newest recoverable data is the previous one's, captured at the previous one's start: the
    exposure that ends at a good backup is its ``finished_at`` minus the recovery point held
    until then. The exposure still open at the period's end is added by the caller.
    """

    repository: str
    good_backups: int = 0                      # in the period
    recovery_point: datetime | None = None     # the newest one before the period's end
    last_good_at: datetime | None = None       # when the newest good backup finished
    longest_s: float | None = None
    longest_ended_at: datetime | None = None
    series: list[tuple[datetime, float]] = field(default_factory=list)

    def good_backup(self, started: datetime, finished: datetime, *, counted: bool = True,
                    series: bool = False) -> None:
        """Take one good backup, in ``finished_at`` order (``counted``: it is in the period;
        the anchor before the period only sets the recovery point)."""
        if counted:
            self.good_backups += 1
            if self.recovery_point is not None:
                exposure = (finished - self.recovery_point).total_seconds()
                if series:
                    self.series.append((finished, exposure))
                if self.longest_s is None or exposure > self.longest_s:
                    self.longest_s, self.longest_ended_at = exposure, finished
        # Backups of one copy may overlap: the recovery point only moves forward.
        if self.recovery_point is None or started > self.recovery_point:
            self.recovery_point = started
        self.last_good_at = finished


def copy_exposures(session: Session, scope: Scope, target: str,
                   repositories: list[str] | None, *, series: bool = False
                   ) -> dict[str, CopyExposure]:
    """Per repository of ``target``: its good backups in the period and the exposures they
    end (:class:`CopyExposure`). ``repositories``: the target's declared ones, which are all
    in the result (with no good backup, too); others met in the period are added after them.
    ``None``: the repositories the target's backups of the period went to.

    One ordered scan of the target's good backups in the period, plus per repository one seek
    back for the newest good backup before the period (the anchor of the first exposure), both
    on ``(kind, status, target, finished_at, repository, started_at)``, which covers them.
    """
    good = and_(Record.kind.in_(GOOD_KINDS), Record.status == "succeeded",
                Record.target == target)
    if repositories is None:
        repositories = sorted(r for (r,) in session.execute(
            select(Record.repository).distinct()
            .where(Record.kind.in_(GOOD_KINDS), Record.target == target, in_period(scope)))
            if r is not None)
    copies: dict[str, CopyExposure] = {}

    def copy_of(repository: str) -> CopyExposure:
        copy = copies.get(repository)
        if copy is None:
            copy = copies[repository] = CopyExposure(repository)
            anchor = session.execute(
                select(_raw_time(session, Record.started_at),
                       _raw_time(session, Record.finished_at))
                .where(good, Record.repository == repository, Record.finished_at < scope.since)
                .order_by(Record.finished_at.desc()).limit(1)).first()
            if anchor is not None:
                copy.good_backup(_parse_time(anchor[0]), _parse_time(anchor[1]), counted=False)
        return copy

    for repository in repositories:
        copy_of(repository)
    parse = datetime.fromisoformat if session.get_bind().dialect.name == "sqlite" else None
    # Core on the session's connection: no ORM result machinery per row.
    rows = session.connection().execute(
        select(Record.repository, _raw_time(session, Record.started_at),
               _raw_time(session, Record.finished_at))
        .where(good, in_period(scope)).order_by(Record.finished_at)).all()
    for repository, started, finished in rows:
        copy = copies.get(repository) or copy_of(repository or "")
        if parse is not None:
            started, finished = parse(started), parse(finished)
        copy.good_backup(started, finished, series=series)
    return copies


def last_passed_drills(session: Session, plans: list[str],
                       before: datetime) -> dict[str, datetime]:
    """When each of ``plans``' newest passed drill finished before ``before`` (any time
    earlier, not only in the period)."""
    rows = session.execute(
        select(Record.plan, _raw_time(session, func.max(Record.finished_at)))
        .where(Record.kind == "drill", Record.status == "passed", _in(Record.plan,
                                                                      frozenset(plans)),
               Record.finished_at < before)
        .group_by(Record.plan))
    return {plan: _parse_time(at) for plan, at in rows if plan and at is not None}


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


def config_in_force(session: Session, until: datetime, hostname: str) -> Record | None:
    """The config and plans in force on ``hostname`` at ``until``: the ``config`` record
    whose hash the host's last record before then carries (found by the chain's order and
    that record's own hash-protected field, not by a time someone could write)."""
    last = session.scalars(select(Record).where(
        Record.hostname == hostname, Record.finished_at < until,
        Record.config_hash.is_not(None)).order_by(Record.seq.desc()).limit(1)).first()
    if last is None:
        return None
    return session.scalars(select(Record).where(
        Record.kind == "config", Record.hostname == hostname,
        Record.config_hash == last.config_hash, Record.seq <= last.seq)
        .order_by(Record.seq.desc()).limit(1)).first()


def last_seq(session: Session, scope: Scope) -> int | None:
    """The period's last record's sequence."""
    found = session.scalar(select(func.max(Record.seq)).where(in_period(scope)))
    return int(found) if found is not None else None
