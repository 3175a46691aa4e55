"""What the catalog says about snapshots: which are good backups, which failed runs left
behind (to be forgotten), which prunes removed. The catalog decides what is true; restic's
``latest`` is never asked. Each function takes a Session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drkit.catalog.models import Record

# Records that put a good snapshot of a target into a repository: a backup, or a copy of a
# good backup's snapshot into a copy repository (``drkit copy``).
GOOD_KINDS = ("backup", "copy")


def removed_snapshots(session: Session, repository: str, *, uncertain: bool = True
                      ) -> set[str]:
    """Snapshot ids that recorded prunes (finished or failed halfway) removed from
    ``repository``: what retention removed and the failed runs' snapshots they forgot; with
    ``uncertain``, also those a forget that failed with the storage gone may have removed."""
    removed: set[str] = set()
    for (evidence,) in session.execute(
            select(Record.evidence).where(Record.kind == "prune",
                                          Record.repository == repository)):
        data = json.loads(evidence)
        if data.get("dry_run"):
            continue
        removed.update(item["id"] for item in data.get("removed") or () if item.get("id"))
        removed.update(data.get("forgotten_failed") or ())
        if uncertain:
            removed.update(data.get("removal_uncertain") or ())
    return removed


def _is_removed(snapshot_id: str, removed: set[str]) -> bool:
    return snapshot_id in removed or any(full.startswith(snapshot_id) for full in removed)


def expected_snapshots(session: Session, repository: str, host: str
                       ) -> dict[str, tuple[str, datetime]]:
    """Snapshots the catalog says ``host``'s backups put in ``repository``: every good
    backup's snapshot not since removed (or maybe removed) by a recorded prune. (A catalog
    shared by deployments may hold another's repository of the same name.) Maps snapshot id
    -> (target, backed up at)."""
    removed = removed_snapshots(session, repository)
    return {
        r.snapshot_id: (r.target or "", r.finished_at)
        for r in session.execute(
            select(Record.snapshot_id, Record.target, Record.finished_at)
            .where(Record.kind.in_(GOOD_KINDS), Record.status == "succeeded",
                   Record.repository == repository, Record.hostname == host,
                   Record.snapshot_id.is_not(None)))
        if r.snapshot_id and not _is_removed(r.snapshot_id, removed)
    }


@dataclass(frozen=True)
class GoodSnapshot:
    """A snapshot the catalog recorded as a good backup."""

    snapshot_id: str
    finished_at: datetime
    record_id: int
    # When its data was backed up: the record's finish for a backup, the source backup's
    # for a copy (which may be made long after). ``--at`` and ``random_within`` use it.
    data_at: datetime | None = None

    @property
    def backed_up_at(self) -> datetime:
        return self.data_at or self.finished_at


def good_snapshots(session: Session, *, target: str, repository: str, host: str,
                   since: datetime | None = None, limit: int | None = None
                   ) -> list[GoodSnapshot]:
    """Snapshots of ``target`` in ``repository`` that ``host``'s backups recorded as
    ``succeeded`` (finished after ``since``) and no prune has removed, newest first."""
    removed = removed_snapshots(session, repository)
    query = (select(Record.id, Record.snapshot_id, Record.finished_at, Record.kind,
                    Record.evidence)
             .where(Record.kind.in_(GOOD_KINDS), Record.status == "succeeded",
                    Record.target == target, Record.repository == repository,
                    Record.hostname == host, Record.snapshot_id.is_not(None))
             .order_by(Record.seq.desc()).execution_options(yield_per=100))
    if since is not None:
        query = query.where(Record.finished_at >= since)
    found: list[GoodSnapshot] = []
    for row in session.execute(query):
        if row.snapshot_id and not _is_removed(row.snapshot_id, removed):
            data_at = _source_time(row.evidence) if row.kind == "copy" else None
            if since is not None and data_at is not None and data_at < since:
                continue
            found.append(GoodSnapshot(snapshot_id=row.snapshot_id, finished_at=row.finished_at,
                                      record_id=row.id, data_at=data_at))
            if limit is not None and len(found) >= limit:
                break
    return found


def _source_time(evidence: str) -> datetime | None:
    """A copy record's source backup time (naive UTC), if it says."""
    value = json.loads(evidence).get("source_finished_at")
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=None)


def newest_good_snapshot(session: Session, *, target: str, repository: str,
                         host: str) -> GoodSnapshot | None:
    """The newest snapshot of ``target`` in ``repository`` that ``host``'s backups recorded
    as ``succeeded`` and no prune has removed: what a drill restores. restic's ``latest``
    is never asked: it may be a torn dump, an incomplete backup or another host's."""
    found = good_snapshots(session, target=target, repository=repository, host=host, limit=1)
    return found[0] if found else None


def drill_count(session: Session, plan: str) -> int:
    """How many drills of ``plan`` the catalog holds (drives ``repository: rotate``)."""
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).select_from(Record)
                              .where(Record.kind == "drill", Record.plan == plan)) or 0)


def snapshot_verdict(session: Session, snapshot_id: str) -> str | None:
    """The status of the backup run that made ``snapshot_id`` (a prefix, or the full id of
    a snapshot whose record keeps the short one), if any."""
    return session.scalar(
        select(Record.status).where(Record.kind.in_(GOOD_KINDS),
                                    Record.snapshot_id.startswith(snapshot_id)
                                    | (Record.snapshot_id == snapshot_id[:8]))
        .order_by(Record.seq.desc()).limit(1))


def backup_evidence(session: Session, snapshot_id: str, repository: str) -> dict[str, Any]:
    """The evidence of the backup run that made ``snapshot_id`` in ``repository`` (empty when
    the catalog has no such run). Backup records keep the short id."""
    evidence = session.scalar(
        select(Record.evidence).where(Record.kind.in_(GOOD_KINDS),
                                      Record.repository == repository,
                                      Record.snapshot_id.in_({snapshot_id, snapshot_id[:8]}))
        .order_by(Record.seq.desc()).limit(1))
    try:
        loaded = json.loads(evidence) if evidence else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


@dataclass(frozen=True)
class Unusable:
    """What a prune must do before retention: ``forget`` these snapshots of failed runs;
    ``held_back``: incomplete backups (restic exit 3) newer than the last good one, kept
    until a backup succeeds, and while there are any, retention waits (restic would count them
    as snapshots to keep and drop a good one instead)."""

    forget: list[str]
    held_back: list[str]


def unusable_snapshots(session: Session, *, target: str, repository: str,
                       host: str) -> Unusable:
    """The snapshots that ``host``'s failed backup runs of ``target`` left in ``repository``
    and that no prune has surely forgotten yet: torn dumps and snapshots of stopped runs are
    to be forgotten; an incomplete backup only once a later backup of the target succeeded,
    so that cleaning up never leaves a target with less than it had."""
    removed = removed_snapshots(session, repository, uncertain=False)
    mine = (Record.kind == "backup", Record.target == target,
            Record.repository == repository, Record.hostname == host)
    last_good = session.scalar(select(Record.seq).where(
        *mine, Record.status == "succeeded").order_by(Record.seq.desc()).limit(1)) or 0
    forget, held = set(), set()
    for snapshot_id, seq, evidence in session.execute(
            select(Record.snapshot_id, Record.seq, Record.evidence)
            .where(*mine, Record.status != "succeeded", Record.snapshot_id.is_not(None))):
        if not snapshot_id or _is_removed(snapshot_id, removed):
            continue
        if json.loads(evidence).get("snapshot_state") == "incomplete" and seq > last_good:
            held.add(snapshot_id)
        else:
            forget.add(snapshot_id)
    return Unusable(forget=sorted(forget), held_back=sorted(held))


def failed_run_snapshots(session: Session, *, repository: str, host: str) -> set[str]:
    """The snapshots ``host``'s failed runs left in ``repository`` (torn dumps, incomplete
    backups): never evidence that a target is backed up."""
    return {snapshot for (snapshot,) in session.execute(
        select(Record.snapshot_id).where(Record.kind == "backup", Record.status != "succeeded",
                                         Record.repository == repository,
                                         Record.hostname == host,
                                         Record.snapshot_id.is_not(None))) if snapshot}


def had_runs_cut_short(session: Session, *, target: str, repository: str, host: str) -> bool:
    """Whether any of ``host``'s backup runs of ``target`` to ``repository`` failed or was
    cut short without naming a snapshot (restic may still have committed one)."""
    return session.scalar(select(Record.id).where(
        Record.kind == "backup", Record.status != "succeeded", Record.target == target,
        Record.repository == repository, Record.hostname == host,
        Record.snapshot_id.is_(None)).limit(1)) is not None


def unrecorded_in_runs_cut_short(session: Session, *, target: str, repository: str,
                                 host: str, present: list[tuple[str, datetime]]
                                 ) -> list[str]:
    """Of the ``present`` snapshots (id, time) of ``host``'s ``target`` in ``repository``,
    those the catalog knows nothing of that were made during a backup run of it that failed
    or was cut short (killed, crashed, stopped just after restic committed): the run never
    said they are whole. A run still in flight has no record yet and its snapshot is not
    inside any finished run's time span."""
    known = [s for s in session.scalars(select(Record.snapshot_id).where(
        Record.kind == "backup", Record.repository == repository,
        Record.snapshot_id.is_not(None))) if s]
    windows = session.execute(select(Record.started_at, Record.finished_at).where(
        Record.kind == "backup", Record.status != "succeeded", Record.target == target,
        Record.repository == repository, Record.hostname == host,
        Record.snapshot_id.is_(None))).all()
    found = []
    for snapshot_id, when in present:
        naive = when.astimezone(UTC).replace(tzinfo=None)
        if any(snapshot_id.startswith(k) for k in known):
            continue
        if any(start <= naive <= end for start, end in windows):
            found.append(snapshot_id)
    return found


def last_prune_failed(session: Session, *, target: str, repository: str, host: str) -> bool:
    """Whether ``host``'s last prune of ``target`` in ``repository`` failed (its prune phase
    may not have freed the data of what it forgot)."""
    status = session.scalar(
        select(Record.status).where(Record.kind == "prune", Record.target == target,
                                    Record.repository == repository, Record.hostname == host)
        .order_by(Record.seq.desc()).limit(1))
    return status is not None and status != "succeeded"


def copied_sources(session: Session, repository: str) -> set[str]:
    """The source snapshots (short ids) recorded as copied into ``repository``, or as found
    gone from the source by a copy (never to be asked for again)."""
    found: set[str] = set()
    for (evidence,) in session.execute(
            select(Record.evidence).where(Record.kind == "copy",
                                          Record.repository == repository)):
        data = json.loads(evidence)
        source = data.get("source_snapshot") if "source_snapshots" not in data else None
        if isinstance(source, str):
            found.add(source[:8])
        found.update(str(gone)[:8] for gone in data.get("source_missing") or ())
    return found


def good_backup_records(session: Session, *, target: str, repository: str,
                        host: str) -> list[Record]:
    """``host``'s good backup records of ``target`` in ``repository`` whose snapshots no
    prune has removed, oldest first (what ``drkit copy`` copies)."""
    removed = removed_snapshots(session, repository)
    return [r for r in session.scalars(
        select(Record).where(Record.kind == "backup", Record.status == "succeeded",
                             Record.target == target, Record.repository == repository,
                             Record.hostname == host, Record.snapshot_id.is_not(None))
        .order_by(Record.seq))
        if r.snapshot_id and not _is_removed(r.snapshot_id, removed)]
