"""Backups as anomaly detection sees them: each target's recent history, the anomalies the
backups were flagged with (``evidence.anomaly.flagged``) and their acknowledgements (records
of kind ``ack``, which name the flagged record). Read-only questions; a Session each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drkit.catalog.chain import optional_time
from drkit.catalog.models import AnomalyIndex, Record

if TYPE_CHECKING:
    from drkit.catalog.snapshots import GoodSnapshot

# Prefilter only (the evidence is parsed to confirm): canonical JSON is compact, and a
# string value cannot hold `"flagged":true` unescaped.
_FLAGGED = '%"flagged":true%'


@dataclass(frozen=True)
class PastBackup:
    """One earlier successful backup, as the catalog recorded it."""

    record_id: int
    started_at: datetime
    summary: dict[str, Any]
    entropy: dict[str, Any] | None = None
    flagged: bool = False
    acknowledged: bool = False


@dataclass
class Anomaly:
    """A backup flagged as unlike its history, and its acknowledgement if any."""

    record_id: int
    target: str
    repository: str
    host: str
    snapshot_id: str | None
    started_at: datetime
    finished_at: datetime
    reasons: list[str]
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    ack_record: int | None = None
    ack_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.ack_record is None

    def to_json(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "target": self.target,
                "repository": self.repository, "host": self.host,
                "snapshot_id": self.snapshot_id, "finished_at": optional_time(self.finished_at),
                "reasons": self.reasons, "open": self.open,
                "acknowledged_by": self.acknowledged_by,
                "acknowledged_at": optional_time(self.acknowledged_at),
                "ack_record": self.ack_record, "ack_reason": self.ack_reason}


def _verdict(evidence: str) -> dict[str, Any] | None:
    try:
        data = json.loads(evidence)
    except ValueError:
        return None
    anomaly = data.get("anomaly") if isinstance(data, dict) else None
    return anomaly if isinstance(anomaly, dict) and anomaly.get("flagged") is True else None


def acknowledgements(session: Session, target: str | None = None) -> dict[int, Record]:
    """The ``ack`` records (of ``target``'s backups, when given) by the record they name."""
    query = select(Record).where(Record.kind == "ack")
    if target is not None:
        query = query.where(Record.target == target)
    out: dict[int, Record] = {}
    for ack in session.scalars(query.order_by(Record.seq)):
        named = json.loads(ack.evidence).get("record_id")
        if isinstance(named, int):
            out.setdefault(named, ack)
    return out


def recent_backups(session: Session, *, target: str, repository: str, host: str,
                   limit: int) -> list[PastBackup]:
    """The last ``limit`` successful backups of ``target`` in ``repository`` by ``host``,
    oldest first, each with whether it was flagged and acknowledged."""
    rows = session.execute(
        select(Record.id, Record.started_at, Record.evidence)
        .where(Record.kind == "backup", Record.status == "succeeded", Record.target == target,
               Record.repository == repository, Record.hostname == host)
        .order_by(Record.seq.desc()).limit(limit)).all()
    acks: dict[int, Record] | None = None
    out = []
    for row in reversed(rows):
        data = json.loads(row.evidence)
        summary = data.get("restic_summary")
        if not isinstance(summary, dict):
            continue
        anomaly = data.get("anomaly")
        flagged = isinstance(anomaly, dict) and anomaly.get("flagged") is True
        acknowledged = False
        if flagged:
            acks = acknowledgements(session, target) if acks is None else acks
            acknowledged = row.id in acks
        entropy = data.get("entropy_sample")
        out.append(PastBackup(record_id=row.id, started_at=row.started_at, summary=summary,
                              entropy=entropy if isinstance(entropy, dict) else None,
                              flagged=flagged, acknowledged=acknowledged))
    return out


def anomalies(session: Session, *, host: str | None = None, since: datetime | None = None,
              until: datetime | None = None, target: str | None = None,
              from_chain: bool = False) -> list[Anomaly]:
    """Every backup flagged as an anomaly (by ``host``, in the period, of ``target``), oldest
    first, with its acknowledgement. Found through ``anomaly_index`` (each hit's own evidence
    confirms it), or, ``from_chain``, by reading every backup record (what reports do)."""
    query = select(Record).where(Record.kind == "backup", Record.status == "succeeded")
    if from_chain:
        query = query.where(Record.evidence.like(_FLAGGED))
    else:
        indexed = select(AnomalyIndex.record_id)
        if host is not None:
            indexed = indexed.where(AnomalyIndex.hostname == host)
        if target is not None:
            indexed = indexed.where(AnomalyIndex.target == target)
        query = query.where(Record.id.in_(indexed))
    if host is not None:
        query = query.where(Record.hostname == host)
    if target is not None:
        query = query.where(Record.target == target)
    if since is not None:
        query = query.where(Record.finished_at >= since)
    if until is not None:
        query = query.where(Record.finished_at < until)
    found = []
    acks: dict[int, Record] | None = None
    for record in session.scalars(query.order_by(Record.seq)):
        verdict = _verdict(record.evidence)
        if verdict is None:
            continue
        acks = acknowledgements(session) if acks is None else acks
        ack = acks.get(record.id)
        ack_data = json.loads(ack.evidence) if ack is not None else {}
        found.append(Anomaly(
            record_id=record.id, target=record.target or "", repository=record.repository or "",
            host=record.hostname, snapshot_id=record.snapshot_id,
            started_at=record.started_at, finished_at=record.finished_at,
            reasons=list(verdict.get("reasons") or []),
            acknowledged_by=ack.actor if ack is not None else None,
            acknowledged_at=ack.finished_at if ack is not None else None,
            ack_record=ack.id if ack is not None else None,
            ack_reason=ack_data.get("reason"), details=verdict))
    return found


def last_normal(session: Session, *, target: str, repository: str, host: str
                ) -> tuple[GoodSnapshot | None, str, list[Anomaly]]:
    """The good snapshot of ``target`` in ``repository`` to go back to, why, and the open
    anomalies that decided it.

    Judged by the data, not by the repository: the anomalies of every repository count (one
    prepared source is backed up to each; a new repository may still be warming up when
    another flags the run), and a copy is judged by its source backup. With an anomaly open,
    it is the newest good snapshot whose data was backed up before the oldest open anomaly's
    run began; with none open, the newest whose data was never flagged.
    """
    from drkit.catalog.snapshots import good_snapshots

    # From the chain itself, not the index: what is restored and what prune keeps must not
    # depend on a table outside the hash chain (one target's backups: an index range).
    flagged = anomalies(session, host=host, target=target, from_chain=True)
    good = good_snapshots(session, target=target, repository=repository, host=host)
    opened = [a for a in flagged if a.open]
    if opened:
        first = min(opened, key=lambda a: a.started_at)
        chosen = next((g for g in good if g.backed_up_at < first.started_at), None)
        return chosen, (f"the newest good backup before the open anomaly of record "
                        f"{first.record_id} (in {first.repository})"), opened
    # The flagged runs' data: the flagged records, and any snapshot of the same data (the
    # run's other repositories, copies) by when it was backed up.
    marked = {a.record_id for a in flagged}
    chosen = next((g for g in good if g.record_id not in marked and not any(
        a.started_at <= g.backed_up_at <= a.finished_at for a in flagged)), None)
    return chosen, "the newest good backup never flagged as an anomaly", []
