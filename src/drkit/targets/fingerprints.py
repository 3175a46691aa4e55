"""Fingerprints: named SQL queries whose values are taken at backup time, in the very state that
is backed up, and stored in the backup's record. A drill runs the same queries on the restored
database and requires equal values (the ``fingerprints: true`` check).

- PostgreSQL: a ``REPEATABLE READ`` transaction exports its snapshot
  (``pg_export_snapshot()``), runs the queries, and stays open while ``pg_dump --snapshot=``
  dumps exactly that snapshot (for every repository of the run: they all get the same state).
- SQLite: the queries run on the consistent copy that is backed up.

A value is compared as text, the way the database's client prints it (psql's unaligned output
for PostgreSQL, ``str()`` of the value for SQLite; NULL is ``None``).
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from drkit.supervise import ChildError, ChildSpec, Limits, start
from drkit.targets.base import TargetError
from drkit.targets.dsn import Dsn, pg_env

_DONE = "__drkit_fingerprint_done__"


def as_text(value: Any) -> str | None:
    """A query's value as compared: text, ``None`` for NULL, bytes as hex."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def first_field(output: str) -> str | None:
    """The first column of the first row of psql's unaligned, tuples-only output (empty is
    NULL: psql prints NULL as nothing)."""
    first = output.splitlines()[0].split("|")[0] if output.strip() else ""
    return first if first != "" else None


def recorded(queries: Mapping[str, str], values: Mapping[str, str | None]
             ) -> dict[str, dict[str, str | None]]:
    """What a backup record keeps: each fingerprint's query and value."""
    return {name: {"sql": queries[name], "value": values[name]} for name in queries}


def sqlite_fingerprints(path: Path, queries: Mapping[str, str]) -> dict[str, str | None]:
    """Run ``queries`` on the SQLite file at ``path`` (read-only)."""
    values: dict[str, str | None] = {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as db:
        for name, sql in queries.items():
            try:
                row = db.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise TargetError(f"fingerprint '{name}': {exc}") from None
            values[name] = as_text(row[0]) if row else None
    return values


@contextmanager
def pg_snapshot(dsn: Dsn, queries: Mapping[str, str], *, limit: float
                ) -> Iterator[tuple[str, dict[str, str | None]]]:
    """Open a transaction on ``dsn``, export its snapshot and run ``queries`` in it; yield
    (snapshot id for ``pg_dump --snapshot``, values). The transaction stays open (so the
    snapshot stays importable) until the context exits. ``limit`` bounds the whole session."""
    spec = ChildSpec(argv=["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                     what=f"fingerprint session on {dsn.describe()}", env=pg_env(dsn),
                     secrets=[dsn.password or ""])
    try:
        session = start(spec, stdin=subprocess.PIPE, capture_stdout=False,
                        limits=Limits.after(limit))
    except ChildError as exc:
        raise TargetError(str(exc)) from None
    proc = session.proc
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def ask(sql: str, what: str) -> str:
        try:
            stdin.write(f"{sql.strip().rstrip(';')};\n\\echo {_DONE}\n".encode())
            stdin.flush()
        except BrokenPipeError:
            pass  # psql is gone: reading tells why
        lines: list[str] = []
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == _DONE:
                return "\n".join(lines)
            lines.append(line)
        session.stdout_done.set()
        ended = session.wait()
        reason = ended.stop_detail if ended.stopped else \
            (ended.stderr.strip().splitlines() or [f"psql ended (exit {ended.returncode})"])[-1]
        raise TargetError(f"{what}: {reason}")

    try:
        ask("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "fingerprint session")
        snapshot = first_field(ask("SELECT pg_export_snapshot()", "exporting the snapshot"))
        if snapshot is None:
            raise TargetError("fingerprint session: no snapshot was exported")
        values = {name: first_field(ask(sql, f"fingerprint '{name}'"))
                  for name, sql in queries.items()}
        yield snapshot, values
    finally:
        # End of input: psql ends the (read-only) transaction and exits.
        try:
            stdin.write(b"COMMIT;\n")
            stdin.close()
        except OSError:
            pass
        if not stdout.closed:
            for _ in stdout:  # to its end: psql has exited
                pass
            session.stdout_done.set()
        session.wait()
