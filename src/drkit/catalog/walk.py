"""Re-hashing the record chain for ``audit verify``, on every core when it is long.

The chain is cut into ranges of sequence numbers; each range is walked by its own process
(forked, with its own read-only connection): every record's canonical text, built by the
database (:func:`drkit.catalog.chain.sql_canonical`), must hash to the record's hash, and
each record must link to the one before it. The ranges are then stitched: each range's first
record must follow the previous range's last, in sequence and by ``prev_hash``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from drkit.catalog.chain import SORTED, record_hash, sql_canonical
from drkit.catalog.models import GENESIS_HASH

PARALLEL_RECORDS = 200_000  # from this many records on, the walk uses every core
_BATCH = 20000
Problem = tuple[str, str, int | None, int | None]  # kind, detail, record id, seq


@dataclass
class Part:
    """What walking one range found."""

    lo: int = 1
    count: int = 0
    first: tuple[int, int, str] | None = None  # id, seq, prev_hash of its first record
    first_intact: bool = True  # ... and whether it matched its hash
    last_seq: int | None = None
    last_hash: str | None = None
    seen: dict[int, str] = field(default_factory=dict)  # hashes at the sequences asked for
    problems: list[Problem] = field(default_factory=list)


def stream_rows(engine: Engine, columns: list[str], *, where: str = "TRUE"
                ) -> Any:
    """Every record's ``columns`` (of those matching ``where``, SQL written by drkit) in
    chain order, streamed through the driver."""
    raw: Any = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            cursor = raw.driver_connection.cursor(name="drkit_audit")  # server-side
            cursor.itersize = _BATCH
        else:
            cursor = raw.cursor()
        cursor.execute(f"SELECT {', '.join(columns)} FROM records WHERE {where} ORDER BY seq")
        while batch := cursor.fetchmany(_BATCH):
            yield from batch
        cursor.close()
    finally:
        raw.rollback()
        raw.close()


# How SQLAlchemy stores a time in SQLite: anything else is not what drkit wrote (a time
# rewritten in another form, such as an offset that names the same instant, is an edit).
STORED_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}")
_D = "[0-9]"
_GLOB = f"{_D * 4}-{_D * 2}-{_D * 2} {_D * 2}:{_D * 2}:{_D * 2}.{_D * 6}"


def walk_range(engine: Engine, has: set[str], interest: set[int], lo: int, hi: int) -> Part:
    """Walk the records with ``lo <= seq < hi``."""
    dialect = engine.dialect.name
    if "format" in has:
        # A format 1 record's hash does not cover actor and config_hash: it may not have any.
        text = (f"CASE WHEN format = 2 THEN {sql_canonical(dialect, 2)} "
                f"WHEN format = 1 AND actor IS NULL AND config_hash IS NULL THEN "
                f"{sql_canonical(dialect, 1)} END")
        columns = ["id", "seq", "hash", "prev_hash", "format", text]
    else:
        columns = ["id", "seq", "hash", "prev_hash", "1", sql_canonical(dialect, 1)]
    sqlite = dialect == "sqlite"
    # SQLite keeps times as text: both must be in the form drkit writes (checked in C; the
    # length in bytes too: GLOB, like substr, stops at a NUL that Python would read past).
    columns.append(" AND ".join(f"typeof({c}) = 'text' AND {c} GLOB '{_GLOB}' AND "
                                f"length(CAST({c} AS BLOB)) = 26"
                                for c in ("started_at", "finished_at")) if sqlite else "1")
    part = Part(lo=lo)
    sha256 = hashlib.sha256
    previous: str | None = GENESIS_HASH if lo <= 1 else None
    expected: int | None = 1 if lo <= 1 else None
    for ident, seq, stored, prev, fmt, canonical, times_ok in stream_rows(
            engine, columns, where=f"seq >= {int(lo)} AND seq < {int(hi)}"):
        part.count += 1
        if part.first is None:
            part.first = (ident, seq, prev)
        if expected is not None and seq != expected:
            part.problems.append((
                "deleted", f"records {expected}..{seq - 1} are missing before this one"
                if seq > expected else f"sequence {seq} is out of order (expected {expected})",
                ident, seq))
        if canonical is None and fmt == 1:
            part.problems.append(("edited", "a format 1 record with an actor or config_hash "
                                  "(its hash covers neither: they were added)", ident, seq))
            part.first_intact = part.first_intact and part.count > 1
        elif canonical is None:
            part.problems.append(("unreadable", f"format {fmt} is not one this drkit knows",
                                  ident, seq))
            part.first_intact = part.first_intact and part.count > 1
        elif not times_ok or (sha256(canonical.encode("utf-8")).hexdigest() != stored
                              and exact_hash(engine, ident, has) != stored):
            part.problems.append(("edited", "its content no longer matches its hash", ident,
                                  seq))
            part.first_intact = part.first_intact and part.count > 1
        elif previous is not None and prev != previous:
            part.problems.append(("relinked", "it does not link to the record before it (a "
                                  "record was deleted or inserted out of order)", ident, seq))
        if seq in interest:
            part.seen[seq] = stored
        previous, expected = stored, seq + 1
    part.last_seq, part.last_hash = expected - 1 if expected else None, previous
    return part


def exact_hash(engine: Engine, ident: int, has: set[str]) -> str:
    """A record's hash computed by :func:`drkit.catalog.chain.record_hash` itself (a
    record whose text from the database did not match: told apart from an edit here), or
    "" when its stored values are not what drkit writes."""
    names = [name for name in SORTED[2] if name in has]
    try:
        row = next(stream_rows(engine, names, where=f"id = {int(ident)}"))
        fields = dict(zip(names, row, strict=True))
        for name in ("started_at", "finished_at"):
            if isinstance(fields[name], str):
                if not STORED_TIME.fullmatch(fields[name]):
                    return ""
                fields[name] = datetime.fromisoformat(fields[name])
        return record_hash(fields)
    except (ValueError, TypeError, UnicodeError, SQLAlchemyError, sqlite3.Error):
        return ""  # not readable as a record drkit wrote: edited


_ENGINE: list[Engine] = []  # the engine the forked workers inherit


def _job(args: tuple[set[str], set[int], int, int]) -> Part:
    engine = _ENGINE[0]
    engine.dispose(close=False)  # never the parent's connections, in a forked child
    return walk_range(engine, *args)


class Walk:
    """The records ``1..top`` (the chain head read before the walk: records appended while
    it runs are left to the next), in ranges walked by other processes when there are many,
    so that the caller can read the anchors meanwhile; :meth:`parts` waits for them."""

    def __init__(self, engine: Engine, has: set[str], interest: set[int], top: int) -> None:
        self._engine, self._has, self._interest, self._top = engine, has, interest, top
        self._pool: Any = None
        self._futures: list[Any] = []
        workers = min(os.cpu_count() or 1, 8)
        if top < PARALLEL_RECORDS or workers < 2:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        size = -(-top // workers)
        _ENGINE[:] = [engine]
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        self._futures = [self._pool.submit(_job, (has, interest, lo, min(lo + size, top + 1)))
                         for lo in range(1, top + 1, size)]

    def parts(self) -> list[Part]:
        """Each range's findings, in order."""
        if self._pool is None:
            return [walk_range(self._engine, self._has, self._interest, 1, self._top + 1)]
        try:
            return [future.result() for future in self._futures]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (also when the caller gives up before :meth:`parts`)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            _ENGINE.clear()


def walk(engine: Engine, has: set[str], interest: set[int], top: int) -> list[Part]:
    """:class:`Walk`, waited for."""
    return Walk(engine, has, interest, top).parts()


def hashes_at(engine: Engine, seqs: set[int]) -> dict[int, str]:
    """The stored hashes at ``seqs`` (anchors whose sequence the walk did not know)."""
    found: dict[int, str] = {}
    ordered = sorted(seqs)
    for start in range(0, len(ordered), 500):
        chunk = ",".join(str(int(s)) for s in ordered[start:start + 500])
        for seq, stored in stream_rows(engine, ["seq", "hash"], where=f"seq IN ({chunk})"):
            found[int(seq)] = str(stored)
    return found


def stitch(parts: list[Part]) -> tuple[list[Problem], dict[int, str], int, str, int]:
    """The parts as one walk: (problems, hashes seen, last sequence, head hash, count)."""
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    previous, expected, count = GENESIS_HASH, 1, 0
    for part in parts:
        if part.first is None:
            continue
        ident, seq, prev = part.first
        if part.lo > 1:  # its first record was not checked against what comes before it
            if seq != expected:
                problems.append(("deleted", f"records {expected}..{seq - 1} are missing "
                                 "before this one", ident, seq))
            if part.first_intact and prev != previous:
                problems.append(("relinked", "it does not link to the record before it (a "
                                 "record was deleted or inserted out of order)", ident, seq))
        problems += part.problems
        seen.update(part.seen)
        count += part.count
        previous = part.last_hash or previous
        expected = (part.last_seq or expected - 1) + 1
    return problems, seen, expected - 1, previous, count


def outside(engine: Engine) -> list[Problem]:
    """Records that are not on the chain ``1..top``: a sequence below 1, or one beyond the
    head in the same snapshot as the head (appends move both in one transaction)."""
    problems: list[Problem] = []
    with engine.connect() as connection:
        for ident, seq in connection.exec_driver_sql(
                "SELECT id, seq FROM records WHERE seq < 1 OR seq > (SELECT seq FROM "
                "chain_head WHERE id = 1) ORDER BY seq"):
            problems.append(("outside", f"its sequence {seq} is outside the chain (1 to the "
                             "head): inserted behind drkit's back", ident, seq))
        connection.rollback()
    return problems
