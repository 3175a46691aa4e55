"""``drkit ack RECORD_ID --reason TEXT``: somebody looked at a flagged backup and says why it
is fine (a migration, a re-encoding, a cleanup). The acknowledgement is a record in the chain
(kind ``ack``, with the flagged record's id and hash, the reason and the actor), so it can be
neither backdated nor quietly dropped; `status` stops failing on that anomaly, the backup joins
its target's baseline again, and reports show both."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from drkit.catalog.anomalies import Anomaly, anomalies
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Record
from drkit.catalog.store import Catalog, NewRecord
from drkit.errors import BadRequestError


def _ackable(session: Session, record_id: int, host: str) -> tuple[Record, Anomaly]:
    """Backup record ``record_id`` and its open anomaly; a bad request when it is no flagged
    backup of ``host`` or was acknowledged already."""
    record = session.get(Record, record_id)
    if record is None or record.kind != "backup":
        raise BadRequestError(f"record {record_id} is not a backup",
                              hint="`drkit status` lists the open anomalies")
    if record.hostname != host:
        raise BadRequestError(f"backup record {record_id} was made by host "
                              f"{record.hostname!r}: acknowledge it there (this is {host!r})")
    flagged = next((a for a in anomalies(session, target=record.target, host=host,
                                         from_chain=True) if a.record_id == record_id), None)
    if flagged is None:
        raise BadRequestError(f"backup record {record_id} was not flagged as an anomaly")
    if not flagged.open:
        raise BadRequestError(f"the anomaly of record {record_id} was acknowledged already "
                              f"(record {flagged.ack_record})")
    return record, flagged


def check_ackable(catalog: Catalog, record_ids: Sequence[int]) -> None:
    """Raise the bad request :func:`acknowledge` would, for the first of ``record_ids`` that
    cannot be acknowledged (so that a list is acknowledged whole or not at all)."""
    with catalog.read_session() as session:
        for record_id in record_ids:
            _ackable(session, record_id, catalog.hostname)


def acknowledge(catalog: Catalog, record_id: int, *, reason: str) -> Anomaly:
    """Record that the anomaly of backup record ``record_id`` was looked at. A bad request
    when the record is no flagged backup of this host, was acknowledged already, or
    ``reason`` is empty. Decided under the chain's lock: two acks cannot both land."""
    if not reason.strip():
        raise BadRequestError("say why the anomaly is fine: --reason TEXT")
    found: list[Anomaly] = []

    def decide(session: Session) -> NewRecord:
        record, flagged = _ackable(session, record_id, catalog.hostname)
        found.append(flagged)
        now = utcnow()
        return NewRecord(kind="ack", status="recorded", target=flagged.target,
                         repository=flagged.repository, snapshot_id=record.snapshot_id,
                         started_at=now, finished_at=now,
                         evidence={"record_id": record_id, "record_hash": record.hash,
                                   "reason": reason, "reasons": flagged.reasons})

    ack = catalog.append_decided(decide)
    (flagged,) = found
    flagged.ack_record, flagged.acknowledged_at = ack.id, ack.finished_at
    flagged.acknowledged_by, flagged.ack_reason = ack.actor, reason
    return flagged
