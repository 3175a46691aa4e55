"""Remediation items as their records tell them (``kind: remediation``, ``open`` then
``closed``): read by reports and by ``drkit remediation``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drkit.catalog.chain import optional_time
from drkit.catalog.models import Record


@dataclass
class Item:
    """One remediation item as its records tell it."""

    id: str
    plan: str
    owner: str
    due: date
    text: str
    opened_at: datetime
    opened_record: int
    drill_record: int | None = None
    closed_at: datetime | None = None
    closed_record: int | None = None
    note: str | None = None

    def open_at(self, moment: datetime) -> bool:
        """Whether the item was still open at ``moment``."""
        return self.opened_at <= moment and (self.closed_at is None or self.closed_at > moment)

    def late_at(self, moment: datetime) -> bool:
        """Whether, at ``moment``, it was closed after its due date or is open past it."""
        due_end = datetime.combine(self.due, datetime.max.time())
        if self.closed_at is not None and self.closed_at <= moment:
            return self.closed_at > due_end
        return moment > due_end

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "plan": self.plan, "owner": self.owner,
                "due": self.due.isoformat(), "text": self.text,
                "opened_at": optional_time(self.opened_at), "opened_record": self.opened_record,
                "drill_record": self.drill_record, "closed_at": optional_time(self.closed_at),
                "closed_record": self.closed_record, "note": self.note,
                "status": "closed" if self.closed_at else "open"}


def items(session: Session) -> list[Item]:
    """Every remediation item, oldest first."""
    found: dict[str, Item] = {}
    for record in session.scalars(select(Record).where(Record.kind == "remediation")
                                  .order_by(Record.seq)):
        evidence = json.loads(record.evidence)
        ident = str(evidence.get("item"))
        if record.status == "open" and ident not in found:  # an item opens once
            found[ident] = Item(
                id=ident, plan=record.plan or "", owner=str(evidence.get("owner")),
                due=date.fromisoformat(str(evidence.get("due"))),
                text=str(evidence.get("text")), opened_at=record.finished_at,
                opened_record=record.id, drill_record=evidence.get("drill_record"))
        elif record.status == "closed" and ident in found and \
                found[ident].closed_at is None:
            found[ident].closed_at = _not_before(session, record)
            found[ident].closed_record = record.id
            found[ident].note = evidence.get("note")
    return list(found.values())


def _not_before(session: Session, record: Record) -> datetime:
    """When ``record`` was written, at the earliest: its own time, but never before the
    newest signed checkpoint that does not cover it (the record did not exist then), so a
    close appended with a backdated time does not count as on time."""
    from drkit.catalog.models import Checkpoint

    payload = session.scalar(select(Checkpoint.payload).where(Checkpoint.seq < record.seq)
                             .order_by(Checkpoint.seq.desc()).limit(1))
    try:
        signed = datetime.fromisoformat(str(json.loads(payload)["created_at"]).rstrip("Z")) \
            if payload else None
    except (ValueError, KeyError, TypeError):
        signed = None
    return max(record.finished_at, signed) if signed else record.finished_at
