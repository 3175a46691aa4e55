"""Opening the catalog, appending to the chain, tracking runs in flight.

Appends are serialized: SQLite transactions start with ``BEGIN IMMEDIATE`` (its write lock),
PostgreSQL locks the ``chain_head`` row (``SELECT ... FOR UPDATE``). So parallel threads,
processes and hosts sharing one catalog still build one valid chain.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from drkit import __version__
from drkit.catalog.chain import FORMAT, canonical_json, record_hash
from drkit.catalog.inflight import RunHandle, RunJournal, Unreadable, utcnow
from drkit.catalog.migrate import ensure_schema
from drkit.catalog.models import GENESIS_HASH, AnomalyIndex, ChainHead, Record
from drkit.errors import DrkitError
from drkit.supervise import MIN_SECRET

log = logging.getLogger("drkit.catalog")


class CatalogError(DrkitError):
    """The catalog database cannot be opened or written."""


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
    # Whose data the record is about, when another host did the work (a copy of a target
    # bound to another host); default: the catalog's host, the one that did it.
    hostname: str | None = None


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
        # Writers take the write lock up front (no upgrade deadlocks); readers get a WAL
        # snapshot that never blocks a writer.
        readonly = connection.get_execution_options().get("drkit_readonly", False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Catalog:
    """The catalog of one deployment: an engine plus the operations on the chain.

    ``hostname`` is the deployment's host identity, stored in every record it appends;
    ``secrets`` are masked in every record's error and evidence before it is hashed (the
    second line of defence: children never get secrets they do not need).
    """

    def __init__(self, engine: Engine, *, hostname: str | None = None,
                 secrets: Sequence[str] = (), actor: str | None = None) -> None:
        self.engine = engine
        self.hostname = hostname or socket.gethostname()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len,
                              reverse=True)
        self.actor = actor  # who runs this process (OS user, or the Prefect flow run)
        # The effective config (and plans) in force, by hash: set by whoever opened the
        # catalog for a config; the first append records it when it changed (a `config`
        # record), every record carries its hash.
        self.config_hash: str | None = None
        self.config_content: dict[str, Any] | None = None
        self._config_recorded = False
        self.appended = 0  # records this process appended (a checkpoint covers them)
        self.settings: Any = None  # the Config it was opened for (evidence settings)
        self.owner = CURRENT_OWNER.get()  # what opened it (a flow task), None: the command
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(engine.execution_options(drkit_readonly=True),
                                           expire_on_commit=False)
        with _OPENED_LOCK:
            _OPENED.append(self)

    def session(self) -> AbstractContextManager[Session]:
        """A session in one transaction, committed on success, rolled back on error."""
        return _transaction(self._sessions)

    def read_session(self) -> AbstractContextManager[Session]:
        """A read-only session on one consistent snapshot that does not block writers."""
        return _transaction(self._read_sessions)

    def _ensure_head(self) -> None:
        with self.read_session() as session:  # the usual case: no write lock taken
            if session.get(ChainHead, 1) is not None:
                return
        with self.session() as session:
            if session.get(ChainHead, 1) is None:
                session.add(ChainHead(id=1, seq=0, hash=GENESIS_HASH))
        # A concurrent first start may have inserted it too; IntegrityError is caught by caller.

    def redact(self, value: Any) -> Any:
        """``value`` (text, or JSON-like data) with every known secret replaced by ``***``."""
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(item) for item in value]
        return value

    def append(self, new: NewRecord) -> Record:
        """Append one finished record to the chain and return it (with its hash)."""
        with self.session() as session:
            return self._append(session, new)

    def append_decided(self, decide: Callable[[Session], NewRecord]) -> Record:
        """Append the record ``decide`` returns after reading the catalog under the chain's
        write lock: two processes can never both decide on the same state (``decide``
        raises to append nothing)."""
        with self.session() as session:
            session.execute(select(ChainHead).where(ChainHead.id == 1).with_for_update())
            return self._append(session, decide(session))

    def _append(self, session: Session, new: NewRecord) -> Record:
        head = session.execute(
            select(ChainHead).where(ChainHead.id == 1).with_for_update()
        ).scalar_one()
        if not self._config_recorded and self.config_hash is not None and new.kind != "config":
            self._record_config(session, head)
        if new.run_id is not None:  # a run is recorded once, whatever happens after its commit
            known = session.scalars(select(Record).where(Record.run_id == new.run_id)
                                    .limit(1)).first()
            if known is not None:
                log.warning("the %s run %s is already recorded (record %d); not again",
                            known.kind, new.run_id, known.id)
                return known
        fields: dict[str, Any] = {
            "seq": head.seq + 1,
            "run_id": new.run_id or str(uuid.uuid4()),
            "kind": new.kind,
            "status": new.status,
            "target": new.target,
            "repository": new.repository,
            "plan": new.plan,
            "hostname": new.hostname or self.hostname,
            "drkit_version": __version__,
            "restic_version": new.restic_version,
            "started_at": _naive(new.started_at),
            "finished_at": _naive(new.finished_at),
            "snapshot_id": new.snapshot_id,
            "error": self.redact(new.error),
            "evidence": _evidence_text(self.redact(new.evidence)),
            "prev_hash": head.hash,
            "format": FORMAT,
            "actor": self.actor,
            "config_hash": self.config_hash,
        }
        for name, value in fields.items():  # PostgreSQL text cannot hold NUL (stderr may)
            if isinstance(value, str) and "\x00" in value:
                fields[name] = value.replace("\x00", "\ufffd")
        fields["hash"] = record_hash(fields)
        record = Record(**fields)
        session.add(record)
        head.seq = fields["seq"]
        head.hash = fields["hash"]
        session.flush()
        anomaly = new.evidence.get("anomaly") if new.kind == "backup" else None
        if isinstance(anomaly, dict) and anomaly.get("flagged") is True:
            session.add(AnomalyIndex(record_id=record.id, hostname=fields["hostname"],
                                     target=new.target, repository=new.repository))
        self.appended += 1
        return record

    def _record_config(self, session: Session, head: ChainHead) -> None:
        """Append a ``config`` record holding the effective config when this host's newest
        one has another hash (the first append of a process checks, once)."""
        self._config_recorded = True
        latest = session.scalar(select(Record.config_hash).where(
            Record.kind == "config", Record.hostname == self.hostname)
            .order_by(Record.seq.desc()).limit(1))
        if latest == self.config_hash:
            return
        now = utcnow()
        self._append(session, NewRecord(
            kind="config", status="recorded", started_at=now, finished_at=now,
            evidence={"config_hash": self.config_hash, "previous_hash": latest,
                      "effective": self.config_content or {}}))

    def finish_run(self, handle: RunHandle, *, status: str, snapshot_id: str | None = None,
                   error: str | None = None, evidence: dict[str, Any] | None = None,
                   finished_at: datetime | None = None, hostname: str | None = None
                   ) -> Record:
        """Append the record of a journaled run (close the journal entry afterwards);
        ``hostname``: see :class:`NewRecord`."""
        return self.append(NewRecord(
            kind=handle.kind, status=status, started_at=handle.started_at,
            finished_at=finished_at or utcnow(), target=handle.target,
            repository=handle.repository, plan=handle.plan, snapshot_id=snapshot_id,
            error=error, evidence=evidence or {}, restic_version=handle.restic_version,
            run_id=handle.run_id, hostname=hostname,
        ))

    def recover_interrupted(self, journal: RunJournal) -> list[Record]:
        """Record every journaled run of this host whose process is gone as ``interrupted``.

        Runs journaled by other hosts are left to those hosts' own next start. A run already
        in the catalog (its process died after appending) is only removed from the journal.
        An unreadable journal file is recorded too (kind ``unknown``) and set aside.
        """
        recovered: list[Record] = []
        for entry, claimed in journal.claim_stale():
            now = utcnow()
            if isinstance(entry, Unreadable):
                recovered.append(self.append(NewRecord(
                    kind="unknown", status="interrupted", started_at=now, finished_at=now,
                    error=(f"journal file {entry.name} of host {journal.hostname} is unreadable "
                           f"({entry.reason}): a run was cut short and what it was cannot be "
                           "told"),
                    evidence={"detected_at": now, "journal_file": entry.name,
                              "excerpt": entry.excerpt.decode("utf-8", "replace")})))
                kept = journal.keep_unreadable(claimed, entry.name)
                log.error("unreadable journal file %s recorded as an interrupted run and kept "
                          "as %s", entry.name, kept)
                continue
            handle = entry
            with self.session() as session:
                known = session.scalar(select(Record.id).where(Record.run_id == handle.run_id))
                if known is None:
                    recovered.append(self._append(session, NewRecord(
                        kind=handle.kind, status="interrupted", started_at=handle.started_at,
                        finished_at=now, target=handle.target, repository=handle.repository,
                        plan=handle.plan, restic_version=handle.restic_version,
                        run_id=handle.run_id,
                        error=(f"process {handle.pid} on {handle.hostname} stopped before the "
                               "run finished (killed, crashed or host restarted)"),
                        evidence={"detected_at": now, "pid": handle.pid, **(handle.note or {})},
                    )))
            claimed.unlink(missing_ok=True)
        for record in recovered:
            log.warning("%s run of %s started %s was interrupted; recorded as such",
                        record.kind, record.target or record.plan or record.repository or "?",
                        record.started_at.isoformat(timespec="seconds"))
        return recovered


_OPENED: list[Catalog] = []  # the catalogs this process opened (checkpoints at their end)
# Who opens catalogs now: a Prefect task sets its own token, so that its end checkpoints and
# closes only its catalogs (tasks of one worker run side by side).
CURRENT_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "drkit_catalog_owner", default=None)
_OPENED_LOCK = threading.Lock()


def opened_catalogs(owner: object | None = None) -> list[Catalog]:
    """The catalogs ``owner`` (None: the command) opened, in order."""
    with _OPENED_LOCK:
        return [catalog for catalog in _OPENED if catalog.owner is owner]


def close_catalog(catalog: Catalog) -> None:
    """Forget ``catalog`` and close its connections."""
    with _OPENED_LOCK:
        if catalog in _OPENED:
            _OPENED.remove(catalog)
    catalog.engine.dispose()


def _evidence_text(evidence: Any) -> str:
    """Canonical JSON of ``evidence``; a NaN or an infinity (which JSON cannot carry and the
    canonical form refuses) becomes null, its path named under ``non_finite``."""
    try:
        return canonical_json(evidence)
    except ValueError:
        found: list[str] = []

        def finite(value: Any, path: str) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                found.append(path)
                return None
            if isinstance(value, dict):
                return {k: finite(v, f"{path}.{k}") for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [finite(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return value

        cleaned = finite(evidence, "evidence")
        if isinstance(cleaned, dict):
            cleaned["non_finite"] = found
        return canonical_json(cleaned)


@contextmanager
def _transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    try:
        with sessions.begin() as session:
            yield session
    except OperationalError as exc:
        raise CatalogError(f"catalog unavailable: {exc.orig}") from None


def _naive(value: datetime) -> datetime:
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def open_catalog(url: str, *, base_dir: Path | None = None, hostname: str | None = None,
                 secrets: Sequence[str] = (), actor: str | None = None) -> Catalog:
    """Open (and create if new) the catalog at SQLAlchemy ``url``.

    A relative SQLite path is taken relative to ``base_dir`` (the config file's directory).
    ``hostname`` and ``secrets``: see :class:`Catalog`. Raises :class:`CatalogError` when the
    database cannot be reached or created.
    """
    with _opening(url):
        resolved = resolve_catalog_url(url, base_dir or Path.cwd())
        engine = create_engine(resolved, connect_args=_connect_args(resolved), future=True)
        if engine.dialect.name == "sqlite":
            _sqlite_pragmas(engine)
        ensure_schema(engine)
        catalog = Catalog(engine, hostname=hostname, secrets=secrets, actor=actor)
        with contextlib.suppress(IntegrityError):  # another process created it just now
            catalog._ensure_head()
    return catalog


def open_readonly(url: str, *, base_dir: Path | None = None) -> Engine:
    """An engine on the catalog at ``url`` that never writes: no schema creation or
    migration, no chain head row; SQLite opened read-only (``mode=ro``). Raises
    :class:`CatalogError` when there is no catalog there."""
    with _opening(url):
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "").expanduser()
            if not path.is_absolute():
                path = (base_dir or Path.cwd()) / path
            if not path.is_file():
                raise CatalogError(f"no catalog at {path}")
            engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true",
                                   connect_args={"timeout": 60, "check_same_thread": False})
        else:
            engine = create_engine(url)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
            connection.rollback()
    return engine


@contextlib.contextmanager
def _opening(url: str) -> Iterator[None]:
    """Opening the catalog at ``url``: a missing driver or a database error is one
    :class:`CatalogError` naming the URL (its password masked)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise CatalogError(f"catalog {masked_url(url)}: database driver missing ({exc.name})"
                           ) from None
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise CatalogError(f"cannot open catalog {masked_url(url)}: {orig}") from None


def _connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"timeout": 60, "check_same_thread": False}
    return {}
