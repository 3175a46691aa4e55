"""Scratch databases for drills of database targets: created with a unique name on the plan's
scratch server, restored from the dump in the sandbox, queried by ``sql`` checks, dropped.

Both kinds use the servers' own command-line clients (psql/pg_restore, mariadb/mysql), so no
database driver is needed; credentials go through the environment or a private options file.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any, Protocol

from drkit.errors import DrkitError
from drkit.supervise import NO_LIMITS, ChildError, ChildSpec, Limits, run
from drkit.targets.dsn import Dsn, mysql_defaults_file, pg_env

TIMEOUT = 3600.0


class ScratchError(DrkitError):
    """The scratch database could not be created, restored into or queried."""


class ScratchDatabase(Protocol):
    name: str

    def create(self) -> None: ...
    def restore(self, dump: Path) -> None: ...
    def scalar(self, sql: str) -> Any: ...
    def drop(self) -> None: ...


def scratch_name(plan: str) -> str:
    """A database name no one else uses: ``drkit_drill_<plan>_<random>``."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in plan.lower())[:30]
    return f"drkit_drill_{safe}_{secrets.token_hex(4)}"


def _run(argv: list[str], *, env: dict[str, str] | None, what: str, hidden: list[str],
         limits: Limits, stdin: Any = None) -> str:
    if shutil.which(argv[0]) is None:
        raise ScratchError(f"{what}: {argv[0]} not found (install the database client tools)")
    remaining = limits.remaining()
    bound = Limits.after(TIMEOUT if remaining is None else min(TIMEOUT, remaining))
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

    def __init__(self, server: Dsn, name: str, limits: Limits) -> None:
        self.server = server
        self.name = name
        self.limits = limits
        self._hidden = [server.password or ""]

    def _psql(self, sql: str, database: str) -> str:
        env = pg_env(self.server.with_database(database))
        return _run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                    env=env, what=f"scratch database {self.name}", hidden=self._hidden,
                    limits=self.limits)

    def create(self) -> None:
        self._psql(f'CREATE DATABASE "{self.name}"', self.server.database or "postgres")

    def restore(self, dump: Path) -> None:
        env = pg_env(self.server.with_database(self.name))
        _run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
              "--dbname", self.name, str(dump)], env=env,
             what=f"pg_restore into {self.name}", hidden=self._hidden, limits=self.limits)

    def scalar(self, sql: str) -> Any:
        out = self._psql(sql, self.name)
        first = out.splitlines()[0].split("|")[0] if out.strip() else ""
        return first if first != "" else None

    def drop(self) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)',
                   self.server.database or "postgres")


class MysqlScratch:
    """A scratch database on a MySQL/MariaDB server."""

    def __init__(self, server: Dsn, name: str, workdir: Path, limits: Limits) -> None:
        self.server = server
        self.name = name
        self.limits = limits
        self._options = mysql_defaults_file(server, workdir)
        self._hidden = [server.password or ""]
        self._client = "mariadb" if shutil.which("mariadb") else "mysql"

    def _mysql(self, sql: str, database: str | None = None) -> str:
        argv = [self._client, f"--defaults-extra-file={self._options}", "-N", "-B",
                *([database] if database else []), "-e", sql]
        return _run(argv, env=None, what=f"scratch database {self.name}", hidden=self._hidden,
                    limits=self.limits)

    def create(self) -> None:
        self._mysql(f"CREATE DATABASE `{self.name}`")

    def restore(self, dump: Path) -> None:
        with open(dump, "rb") as handle:
            _run([self._client, f"--defaults-extra-file={self._options}", self.name],
                 env=None, what=f"restore into {self.name}", hidden=self._hidden,
                 limits=self.limits, stdin=handle)

    def scalar(self, sql: str) -> Any:
        out = self._mysql(sql, self.name)
        first = out.splitlines()[0].split("\t")[0] if out.strip() else ""
        return None if first in ("", "NULL") else first

    def drop(self) -> None:
        self._mysql(f"DROP DATABASE IF EXISTS `{self.name}`")


def open_scratch(restore_into: Any, target: Any, plan: str, workdir: Path, *,
                 limits: Limits = NO_LIMITS) -> ScratchDatabase:
    """The scratch database for a step (not yet created). Refuses a scratch server DSN that
    names the target's own database: a drill must never touch production."""
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
    name = scratch_name(plan)
    if kind == "postgres":
        return PostgresScratch(server, name, limits)
    return MysqlScratch(server, name, workdir, limits)
