"""Opening the catalog, appending to the chain, tracking runs in flight.

Appends are serialized: SQLite transactions start with ``BEGIN IMMEDIATE`` (its write lock),
PostgreSQL locks the ``chain_head`` row (``SELECT ... FOR UPDATE``). So parallel threads,
processes and hosts sharing one catalog still build one valid chain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from drkit import __version__
from drkit.catalog.chain import canonical_json, record_hash
from drkit.catalog.models import GENESIS_HASH, Base, ChainHead, Record, RunInFlight
from drkit.errors import DrkitError

log = logging.getLogger("drkit.catalog")


class CatalogError(DrkitError):
    """The catalog database cannot be opened or written."""


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (how the catalog stores times)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class NewRecord:
    """What a caller knows about a finished run; the catalog adds host, versions and hashes."""

    kind: str
    status: str
    started_at: datetime
    finished_at: datetime
    target: str | None = None
    repository: str | None = None
    plan: str | None = None
    snapshot_id: str | None = None
    error: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    restic_version: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class RunHandle:
    """A run registered as in flight; pass it back to :meth:`Catalog.finish_run`."""

    run_id: str
    kind: str
    started_at: datetime
    target: str | None
    repository: str | None
    plan: str | None
    restic_version: str | None


def process_start_token(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts after the command name, which may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, token: str | None) -> bool:
    """Whether the process that registered a run is still running on this host."""
    if Path("/proc").is_dir() and token is not None:
        return process_start_token(pid) == token
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def masked_url(url: str) -> str:
    """The catalog URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable catalog URL>"


def resolve_catalog_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path absolute against ``base_dir`` and create its directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    path = Path(parsed.database).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Catalog:
    """The catalog of one deployment: an engine plus the operations on the chain."""

    def __init__(self, engine: Engine, *, hostname: str | None = None) -> None:
        self.engine = engine
        self.hostname = hostname or socket.gethostname()
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction, committed on success, rolled back on error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise CatalogError(f"catalog unavailable: {exc.orig}") from None

    def _ensure_head(self) -> None:
        with self.session() as session:
            if session.get(ChainHead, 1) is None:
                session.add(ChainHead(id=1, seq=0, hash=GENESIS_HASH))
        # A concurrent first start may have inserted it too; IntegrityError is caught by caller.

    def append(self, new: NewRecord) -> Record:
        """Append one finished record to the chain and return it (with its hash)."""
        with self.session() as session:
            return self._append(session, new)

    def _append(self, session: Session, new: NewRecord) -> Record:
        head = session.execute(
            select(ChainHead).where(ChainHead.id == 1).with_for_update()
        ).scalar_one()
        fields: dict[str, Any] = {
            "seq": head.seq + 1,
            "run_id": new.run_id or str(uuid.uuid4()),
            "kind": new.kind,
            "status": new.status,
            "target": new.target,
            "repository": new.repository,
            "plan": new.plan,
            "hostname": self.hostname,
            "drkit_version": __version__,
            "restic_version": new.restic_version,
            "started_at": _naive(new.started_at),
            "finished_at": _naive(new.finished_at),
            "snapshot_id": new.snapshot_id,
            "error": new.error,
            "evidence": canonical_json(new.evidence),
            "prev_hash": head.hash,
        }
        fields["hash"] = record_hash(fields)
        record = Record(**fields)
        session.add(record)
        head.seq = fields["seq"]
        head.hash = fields["hash"]
        session.flush()
        return record

    def start_run(self, kind: str, *, target: str | None = None, repository: str | None = None,
                  plan: str | None = None, restic_version: str | None = None) -> RunHandle:
        """Register a run as in flight (so a crash leaves a trace) and return its handle."""
        handle = RunHandle(run_id=str(uuid.uuid4()), kind=kind, started_at=utcnow(),
                           target=target, repository=repository, plan=plan,
                           restic_version=restic_version)
        with self.session() as session:
            session.add(RunInFlight(
                run_id=handle.run_id, kind=kind, target=target, repository=repository,
                plan=plan, hostname=self.hostname, pid=os.getpid(),
                pid_started=process_start_token(os.getpid()), drkit_version=__version__,
                restic_version=restic_version, started_at=handle.started_at,
            ))
        return handle

    def finish_run(self, handle: RunHandle, *, status: str, snapshot_id: str | None = None,
                   error: str | None = None, evidence: dict[str, Any] | None = None,
                   finished_at: datetime | None = None) -> Record:
        """Append the run's record and drop its in-flight row, in one transaction."""
        new = NewRecord(
            kind=handle.kind, status=status, started_at=handle.started_at,
            finished_at=finished_at or utcnow(), target=handle.target,
            repository=handle.repository, plan=handle.plan, snapshot_id=snapshot_id,
            error=error, evidence=evidence or {}, restic_version=handle.restic_version,
            run_id=handle.run_id,
        )
        with self.session() as session:
            record = self._append(session, new)
            flight = session.get(RunInFlight, handle.run_id)
            if flight is not None:
                session.delete(flight)
            return record

    def recover_interrupted(self) -> list[Record]:
        """Turn runs in flight whose process on this host is gone into ``interrupted`` records.

        Runs registered by other hosts are left to those hosts' own next start.
        """
        recovered: list[Record] = []
        with self.session() as session:
            stale = [
                flight for flight in session.scalars(
                    select(RunInFlight).where(RunInFlight.hostname == self.hostname)
                    .order_by(RunInFlight.started_at)
                )
                if not process_alive(flight.pid, flight.pid_started)
            ]
            if not stale:
                return recovered
            now = utcnow()
            for flight in stale:
                record = self._append(session, NewRecord(
                    kind=flight.kind, status="interrupted", started_at=flight.started_at,
                    finished_at=now, target=flight.target, repository=flight.repository,
                    plan=flight.plan, restic_version=flight.restic_version,
                    run_id=flight.run_id,
                    error=(f"process {flight.pid} on {flight.hostname} stopped before the run "
                           "finished (killed, crashed or host restarted)"),
                    evidence={"detected_at": now, "pid": flight.pid},
                ))
                session.delete(flight)
                recovered.append(record)
        for record in recovered:
            log.warning("%s run of %s started %s was interrupted; recorded as such",
                        record.kind, record.target or record.plan or record.repository,
                        record.started_at.isoformat(timespec="seconds"))
        return recovered


def _naive(value: datetime) -> datetime:
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def open_catalog(url: str, *, base_dir: Path | None = None) -> Catalog:
    """Open (and create if new) the catalog at SQLAlchemy ``url``.

    A relative SQLite path is taken relative to ``base_dir`` (the config file's directory).
    Raises :class:`CatalogError` when the database cannot be reached or created.
    """
    resolved = resolve_catalog_url(url, base_dir or Path.cwd())
    try:
        engine = create_engine(resolved, connect_args=_connect_args(resolved), future=True)
        if engine.dialect.name == "sqlite":
            _sqlite_pragmas(engine)
        Base.metadata.create_all(engine)
        catalog = Catalog(engine)
        with contextlib.suppress(IntegrityError):  # another process created it just now
            catalog._ensure_head()
    except ModuleNotFoundError as exc:
        raise CatalogError(f"catalog {masked_url(url)}: database driver missing ({exc.name})"
                           ) from None
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise CatalogError(f"cannot open catalog {masked_url(url)}: {orig}") from None
    return catalog


def _connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"timeout": 60, "check_same_thread": False}
    return {}
