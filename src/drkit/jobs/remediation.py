"""Remediation items: what a drill (or an audit) found that must be fixed, by whom, by when.

``drkit remediation add PLAN --owner WHO --due DATE TEXT`` and ``drkit remediation close ID``
are records in the chain (kind ``remediation``, status ``open`` / ``closed``), so an item can
be neither backdated nor quietly dropped. Open items appear in every report; the control
``remediation_closed_on_time`` checks that items were closed by their due date.
"""

from __future__ import annotations

import secrets
from datetime import date

from drkit.catalog.chain import optional_time
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Record
from drkit.catalog.remediation import Item, items
from drkit.catalog.store import Catalog, NewRecord
from drkit.errors import BadRequestError

__all__ = ["Item", "add", "close", "items"]


def add(catalog: Catalog, plan: str, *, owner: str, due: date, text: str,
        drill_record: int | None = None) -> Item:
    """Record a new open item for ``plan``."""
    if not owner.strip() or not text.strip():
        raise BadRequestError("a remediation item needs an owner and a text")
    if drill_record is not None:
        with catalog.read_session() as session:
            drill = session.get(Record, drill_record)
        if drill is None or drill.kind != "drill" or drill.plan != plan:
            raise BadRequestError(f"record {drill_record} is not a drill of plan {plan!r}")
    ident = f"R-{secrets.token_hex(4)}"
    now = utcnow()
    record = catalog.append(NewRecord(
        kind="remediation", status="open", plan=plan, started_at=now, finished_at=now,
        evidence={"item": ident, "owner": owner, "due": due.isoformat(), "text": text,
                  "drill_record": drill_record}))
    return Item(id=ident, plan=plan, owner=owner, due=due, text=text, opened_at=now,
                opened_record=record.id, drill_record=drill_record)


def close(catalog: Catalog, ident: str, *, note: str | None = None) -> Item:
    """Record that item ``ident`` is done."""
    with catalog.read_session() as session:
        known = {item.id: item for item in items(session)}
    item = known.get(ident)
    if item is None:
        raise BadRequestError(f"no remediation item {ident!r}",
                              hint="drkit remediation list shows them")
    if item.closed_at is not None:
        raise BadRequestError(f"remediation item {ident} was closed already "
                              f"({optional_time(item.closed_at)})")
    now = utcnow()
    record = catalog.append(NewRecord(
        kind="remediation", status="closed", plan=item.plan, started_at=now, finished_at=now,
        evidence={"item": ident, "note": note, "opened_record": item.opened_record}))
    item.closed_at, item.closed_record, item.note = now, record.id, note
    return item
