"""Scratch databases for drills of database targets: created with a unique name on the plan's
scratch server, restored from the dump in the sandbox, queried by ``sql`` checks, dropped.

Both kinds use the servers' own command-line clients (psql/pg_restore, mariadb/mysql), so no
database driver is needed; credentials go through the environment or a private options file.

A drill must never touch production: the scratch server is compared with the target's own
server by identity (PostgreSQL's ``system_identifier``, MySQL's ``@@server_uuid``, MariaDB's
host, port, data directory and server id), not by name, and refused when they are the same
unless the plan step says ``allow_production_server: true``. A MySQL dump is restored with its
events disabled, so that no restored event runs against anything.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any, Protocol

from drkit.errors import DrkitError
from drkit.owned import remove_tree
from drkit.pipeline import run_pipeline
from drkit.supervise import NO_LIMITS, ChildError, ChildSpec, Limits, base_env, run
from drkit.targets.dsn import Dsn, mysql_defaults_file, pg_env
from drkit.targets.fingerprints import first_field

TIMEOUT = 3600.0


class ScratchError(DrkitError):
    """The scratch database could not be created, restored into or queried."""


class ScratchDatabase(Protocol):
    name: str
    kind: str

    def identity(self) -> str: ...
    def create(self) -> None: ...
    def restore(self, dump: Path, *, as_production: bool = False) -> None: ...
    def scalar(self, sql: str) -> Any: ...
    def tables(self) -> list[str]: ...
    def delete_one_row(self, table: str) -> bool: ...
    def drop(self) -> None: ...
    def check_access(self) -> tuple[str, dict[str, str]]: ...


def scratch_name(plan: str) -> str:
    """A database name no one else uses: ``drkit_drill_<plan>_<random>``."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in plan.lower())[:30]
    return f"drkit_drill_{safe}_{secrets.token_hex(4)}"


def _bound(limits: Limits) -> Limits:
    remaining = limits.remaining()
    return Limits.after(TIMEOUT if remaining is None else min(TIMEOUT, remaining))


def _run(argv: list[str], *, env: dict[str, str] | None, what: str, hidden: list[str],
         limits: Limits, stdin: Any = None) -> str:
    if shutil.which(argv[0]) is None:
        raise ScratchError(f"{what}: {argv[0]} not found (install the database client tools)")
    bound = _bound(limits)
    try:
        exit_ = run(ChildSpec(argv=argv, what=what, env=env, secrets=hidden), stdin=stdin,
                    limits=bound)
    except ChildError as exc:
        raise ScratchError(str(exc)) from None
    if exit_.stopped == "timeout":
        raise ScratchError(f"{what}: {bound.message()}")
    if exit_.returncode != 0:
        lines = exit_.stderr.strip().splitlines() or ["no error output"]
        raise ScratchError(f"{what}: {lines[-1]}")
    return exit_.stdout


class PostgresScratch:
    """A scratch database on a PostgreSQL server (the DSN's database is only connected to)."""

    kind = "postgres"

    def __init__(self, server: Dsn, name: str, limits: Limits) -> None:
        self.server = server
        self.name = name
        self.limits = limits
        self._hidden = [server.password or ""]

    def identity(self) -> str:
        """The server's ``system_identifier`` (set by initdb, the same on every database of
        the cluster and readable by any role)."""
        out = self._psql("SELECT system_identifier FROM pg_control_system()",
                         self.server.database or "postgres").strip()
        return f"postgres:{out}"

    def _psql(self, sql: str, database: str) -> str:
        env = pg_env(self.server.with_database(database))
        return _run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                    env=env, what=f"scratch database {self.name}", hidden=self._hidden,
                    limits=self.limits)

    def create(self) -> None:
        self._psql(f'CREATE DATABASE "{self.name}"', self.server.database or "postgres")

    def restore(self, dump: Path, *, as_production: bool = False) -> None:
        """Load ``dump`` (custom format). A drill's copy belongs to the scratch role
        (``--no-owner --no-privileges``); a restore that puts production back keeps the
        dump's owners and grants (``as_production``)."""
        env = pg_env(self.server.with_database(self.name))
        ownership = [] if as_production else ["--no-owner", "--no-privileges"]
        _run(["pg_restore", *ownership, "--exit-on-error", "--dbname", self.name, str(dump)],
             env=env, what=f"pg_restore into {self.name}", hidden=self._hidden,
             limits=self.limits)

    def scalar(self, sql: str) -> Any:
        # Read exactly as fingerprints are read at backup time, so that values compare.
        return first_field(self._psql(sql, self.name))

    def tables(self) -> list[str]:
        """The restored database's own plain tables, quoted (``"schema"."t"``): no foreign
        table, none with rules (a rule may turn a DELETE into anything)."""
        out = self._psql(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND NOT c.relhasrules AND "
            "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE "
            "'pg_toast%' ORDER BY 1", self.name)
        return [line for line in out.splitlines() if line.strip()]

    def delete_one_row(self, table: str) -> bool:
        """Delete one row of ``table`` itself (``ONLY``: no inheritance child, which may be a
        foreign table) with its own triggers disabled (one may write elsewhere, through dblink
        or a foreign table), in one transaction; False when it had none."""
        out = self._psql(
            f"BEGIN; ALTER TABLE {table} DISABLE TRIGGER USER; WITH gone AS (DELETE FROM ONLY "
            f"{table} WHERE ctid = (SELECT ctid FROM ONLY {table} LIMIT 1) RETURNING 1) "
            f"SELECT count(*) FROM gone; ALTER TABLE {table} ENABLE TRIGGER USER; COMMIT",
            self.name)
        return out.split() == ["1"]

    def drop(self) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)',
                   self.server.database or "postgres")

    def check_access(self) -> tuple[str, dict[str, str]]:
        """``{dsn}`` for a check command (no password in it) and the environment that
        carries the password and the rest (libpq variables)."""
        return _url("postgresql", self.server, self.name), pg_env(
            self.server.with_database(self.name))


class MysqlScratch:
    """A scratch database on a MySQL/MariaDB server."""

    kind = "mysql"

    def __init__(self, server: Dsn, name: str, workdir: Path, limits: Limits) -> None:
        self.server = server
        self.name = name
        self.limits = limits
        self._options = mysql_defaults_file(server, workdir)
        self._hidden = [server.password or ""]
        self._client = "mariadb" if shutil.which("mariadb") else "mysql"

    def identity(self) -> str:
        """MySQL's ``@@server_uuid``; MariaDB has none: its host name, port, data directory
        and server id together."""
        try:
            return "mysql:" + self._mysql("SELECT @@server_uuid").strip()
        except ScratchError as exc:
            if "server_uuid" not in str(exc):
                raise
        out = self._mysql("SELECT CONCAT_WS(':', @@hostname, @@port, @@datadir, @@server_id)")
        return "mariadb:" + out.strip()

    def _mysql(self, sql: str, database: str | None = None) -> str:
        argv = [self._client, f"--defaults-file={self._options}", "-N", "-B",
                *([f"--database={database}"] if database else []), "-e", sql]
        return _run(argv, env=None, what=f"scratch database {self.name}", hidden=self._hidden,
                    limits=self.limits)

    def create(self) -> None:
        self._mysql(f"CREATE DATABASE {_backticks(self.name)}")

    def restore(self, dump: Path, *, as_production: bool = False) -> None:
        """Load ``dump`` with every event it creates disabled (an event restored enabled
        would run on the scratch server's scheduler, and its body may name production's
        tables); then make sure none is enabled. ``as_production``: a restore putting
        production back, whose events stay as the dump has them."""
        what = f"restore into {self.name}"
        filters = ["-e", _OWN_DATABASE] if as_production else \
            ["-e", _DISABLE_EVENTS, "-e", _OWN_DATABASE]
        if shutil.which(self._client) is None:
            raise ScratchError(f"{what}: {self._client} not found (install the database "
                               "client tools)")
        bound = _bound(self.limits)
        try:
            piped = run_pipeline(
                ChildSpec(argv=["sed", "-E", *filters, str(dump)],
                          what="event filter", env=base_env()),
                ChildSpec(argv=[self._client, f"--defaults-file={self._options}",
                                f"--database={self.name}"], what=what, env=base_env(),
                          secrets=self._hidden),
                limits=bound)
        except ChildError as exc:
            raise ScratchError(str(exc)) from None
        for exit_ in (piped.consumer, piped.producer):
            if exit_.stopped == "timeout":
                raise ScratchError(f"{what}: {bound.message()}")
            if exit_.returncode != 0:
                lines = exit_.stderr.strip().splitlines() or ["no error output"]
                raise ScratchError(f"{what}: {lines[-1]}")
        if as_production:
            return
        enabled = self.scalar("SELECT COUNT(*) FROM information_schema.EVENTS WHERE "
                              f"EVENT_SCHEMA = '{self.name}' AND STATUS = 'ENABLED'")
        if str(enabled) != "0":
            raise ScratchError(f"{what}: {enabled} restored event(s) are enabled")

    def scalar(self, sql: str) -> Any:
        out = self._mysql(sql, self.name)
        first = out.splitlines()[0].split("\t")[0] if out.strip() else ""
        return None if first in ("", "NULL") else first

    def tables(self) -> list[str]:
        """The scratch database's tables stored by the server itself, quoted (```t```): no
        FEDERATED, CONNECT or Spider table (their rows live on another server)."""
        out = self._mysql("SELECT CONCAT('`', REPLACE(TABLE_NAME, '`', '``'), '`') FROM "
                          "information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND "
                          "TABLE_TYPE = 'BASE TABLE' AND ENGINE IN ('InnoDB', 'MyISAM', "
                          "'Aria', 'MEMORY') ORDER BY 1", self.name)
        return [line for line in out.splitlines() if line.strip()]

    def delete_one_row(self, table: str) -> bool:
        """Delete one row of ``table`` (foreign keys not enforced: only this table loses it)
        after dropping the table's triggers in the scratch database (one may write elsewhere,
        another database of the same server); False when it had none."""
        name = table[1:-1].replace("``", "`").replace("\\", "\\\\").replace("'", "''")
        triggers = self._mysql("SELECT CONCAT('`', REPLACE(TRIGGER_NAME, '`', '``'), '`') "
                               "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                               f"DATABASE() AND EVENT_OBJECT_TABLE = '{name}'", self.name)
        drops = "".join(f"DROP TRIGGER {trigger}; " for trigger in triggers.splitlines()
                        if trigger.strip())
        out = self._mysql(f"{drops}SET FOREIGN_KEY_CHECKS = 0; DELETE FROM {table} LIMIT 1; "
                          "SELECT ROW_COUNT()", self.name)
        return out.split() == ["1"]

    def drop(self) -> None:
        self._mysql(f"DROP DATABASE IF EXISTS {_backticks(self.name)}")

    def check_access(self) -> tuple[str, dict[str, str]]:
        """``{dsn}`` for a check command (no password in it) and the environment that
        carries the password (``MYSQL_PWD``)."""
        env = base_env()
        if self.server.password is not None:
            env["MYSQL_PWD"] = self.server.password
        return _url("mysql", self.server, self.name), env


# mysqldump/mariadb-dump write an event's header on the line that creates it, always with its
# ON COMPLETION clause right before the status: the first such status on the line is the
# header's, whatever the body says.
_DISABLE_EVENTS = (r"/^\/\*!50106 CREATE\*\/.*\/\*!50106 EVENT /"
                   r"s/ ON COMPLETION (NOT )?PRESERVE ENABLE / ON COMPLETION \1PRESERVE DISABLE /")


# Around routines, triggers and events whose collation differs from their database's, the dump
# switches the *original* database's default collation (ALTER DATABASE `shop` ...) and back:
# without its name, the statement applies to the database being loaded, the scratch one.
_OWN_DATABASE = r"s/^(\/\*![0-9]+ )?ALTER DATABASE `([^`]|``)*` /\1ALTER DATABASE /"


def _backticks(name: str) -> str:
    """A MySQL identifier, quoted."""
    return "`" + name.replace("`", "``") + "`"


def _url(scheme: str, server: Dsn, database: str) -> str:
    """A URL for ``database`` on ``server`` without the password."""
    from urllib.parse import quote

    user = quote(server.user, safe="") + "@" if server.user else ""
    host = server.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    port = f":{server.port}" if server.port else ""
    return f"{scheme}://{user}{host}{port}/{quote(database, safe='')}"


def scratch_for(kind: str, server: Dsn, name: str, workdir: Path, *,
                limits: Limits = NO_LIMITS) -> ScratchDatabase:
    """The scratch database ``name`` of ``kind`` on ``server``."""
    if kind == "postgres":
        return PostgresScratch(server, name, limits)
    return MysqlScratch(server, name, workdir, limits)


def open_scratch(restore_into: Any, target: Any, plan: str, workdir: Path, *,
                 allow_production_server: bool = False,
                 limits: Limits = NO_LIMITS) -> tuple[ScratchDatabase, bool]:
    """The scratch database for a step (not yet created), and whether its server is (or may
    be: production's identity could not be read) the target's own (production) server.
    Refuses a scratch DSN that names the target's own database, and the production server
    itself unless ``allow_production_server``."""
    from drkit.targets.dsn import parse_dsn

    kind = "postgres" if restore_into.postgres is not None else "mysql"
    server_ref = (restore_into.postgres or restore_into.mysql).dsn
    if target.kind != kind:
        raise ScratchError(f"restore_into.{kind} does not fit a {target.kind} target")
    server = parse_dsn(server_ref.resolve(), what="scratch server")
    own = parse_dsn(target.dsn.resolve(), what="target")
    if server.same_database(own):
        raise ScratchError(f"refusing to drill: the scratch DSN names the target's own "
                           f"database ({own.describe()})")
    scratch = scratch_for(kind, server, scratch_name(plan), workdir, limits=limits)
    try:
        theirs = scratch.identity()
    except ScratchError as exc:
        raise ScratchError(f"cannot tell which server the scratch DSN reaches: {exc}") from None
    production = scratch_for(kind, own, "", workdir / "production", limits=limits)
    try:
        ours = production.identity()
    except ScratchError as exc:
        ours = None
        unreadable = exc
    finally:
        remove_tree(workdir / "production")  # production's options file: not kept a moment
    if ours is None:
        if allow_production_server:
            return scratch, True  # may be production: the evidence says so
        raise ScratchError(
            f"refusing to drill: cannot read the production server's identity to make sure "
            f"the scratch server ({server.describe()}) is another one: {unreadable}",
            hint="the step may say allow_production_server: true to drill anyway") from None
    same = theirs == ours
    if same and not allow_production_server:
        raise ScratchError(
            f"refusing to drill: the scratch DSN ({server.describe()}) reaches the target's "
            f"own production server ({own.describe()}: same {theirs.split(':', 1)[0]} "
            "server identity)",
            hint="point restore_into at another server, or set allow_production_server: "
                 "true on the step to restore into a new database on production itself")
    return scratch, same
