"""`audit verify` on both catalog backends: an edited, a deleted and an out-of-order record are
each named; an untouched chain verifies. (The CLI tests tamper with a SQLite file directly.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, text

from drkit.catalog.audit import verify_chain
from drkit.catalog.chain import record_hash
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Record
from drkit.catalog.store import NewRecord, open_catalog


def test_tampering_is_named_on_sqlite_and_postgres(catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    now = utcnow()
    for index in range(12):
        catalog.append(NewRecord(kind="backup", status="succeeded", target="t",
                                 repository="r", started_at=now + timedelta(seconds=index),
                                 finished_at=now + timedelta(seconds=index + 1)))
    intact = verify_chain(catalog)
    assert intact.intact and intact.records == 12
    with catalog.engine.begin() as db:
        db.execute(text("UPDATE records SET status = 'failed' WHERE seq = 3"))
        db.execute(text("DELETE FROM records WHERE seq = 6"))
    # A forged record slipped in at the end, not through append: its own hash is consistent,
    # its link to the chain is not, and the chain head never heard of it.
    latest = last(catalog)
    assert latest.seq == 12
    forged = {c.name: getattr(latest, c.name) for c in Record.__table__.columns
              if c.name != "id"}
    forged.update(seq=13, run_id="forged", prev_hash="f" * 64)
    forged["hash"] = record_hash(forged)
    with catalog.session() as session:
        session.add(Record(**forged))
    result = verify_chain(catalog)
    found = {(p["seq"], p["problem"]) for p in result.problems}
    assert not result.intact
    assert (3, "edited") in found
    assert (7, "deleted") in found  # the gap is named at the record after it
    assert (13, "outside") in found  # beyond the chain head, which never heard of it


def last(catalog: Any) -> Record:
    with catalog.session() as session:
        record: Record = session.scalars(select(Record).order_by(Record.seq.desc())).first()
        session.expunge(record)
        return record


def test_the_walk_on_every_core_names_the_same_breaks(catalog_url: str,
                                                      monkeypatch: Any) -> None:
    """Long chains are walked in ranges, one process each, then stitched: a record deleted at
    the second range's first sequence, one edited inside it and one whose link was rewritten
    are named exactly as one walk names them."""
    from drkit.catalog import walk

    catalog = open_catalog(catalog_url)
    now = utcnow()
    for index in range(40):
        catalog.append(NewRecord(kind="backup", status="succeeded", target="t",
                                 repository="r", started_at=now + timedelta(seconds=index),
                                 finished_at=now + timedelta(seconds=index + 1)))
    with catalog.engine.begin() as db:
        db.execute(text("DELETE FROM records WHERE seq = 21"))  # the second range's first
        db.execute(text("UPDATE records SET status = 'failed' WHERE seq = 30"))
        db.execute(text("UPDATE records SET prev_hash = :h WHERE seq = 11"), {"h": "e" * 64})
    serial = verify_chain(catalog)
    monkeypatch.setattr(walk, "PARALLEL_RECORDS", 10)
    monkeypatch.setattr(walk.os, "cpu_count", lambda: 2)
    parallel = verify_chain(catalog)
    found = [(p["seq"], p["problem"]) for p in parallel.problems]
    assert found == [(p["seq"], p["problem"]) for p in serial.problems]
    assert found == [(11, "edited"), (22, "deleted"), (22, "relinked"), (30, "edited")]
    assert parallel.records == serial.records == 39
