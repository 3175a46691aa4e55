"""Database connection strings, turned into what the dump tools read without argv secrets.

PostgreSQL tools get libpq environment variables (``PGPASSWORD`` among them); MySQL/MariaDB
tools get a ``--defaults-file`` (mode 0600) holding the password and the rest of the DSN
(the only option file they read: a ``~/.my.cnf`` cannot point them elsewhere). A DSN is
never logged: :func:`describe` gives ``user@host:port/db``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from drkit.errors import DrkitError
from drkit.supervise import base_env

_PG_PARAMS = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
              "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME"}


class DsnError(DrkitError):
    """A DSN that cannot be understood (its text is never shown: it may hold a password)."""


@dataclass(frozen=True)
class Dsn:
    scheme: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None
    database: str | None
    params: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """``user@host:port/db``, safe to log."""
        where = f"{self.host or 'localhost'}" + (f":{self.port}" if self.port else "")
        return f"{self.user + '@' if self.user else ''}{where}/{self.database or ''}"

    def same_database(self, other: Dsn) -> bool:
        """Whether both name the same database on the same server."""
        def norm(host: str | None) -> str:
            return "localhost" if host in (None, "", "127.0.0.1", "::1") else host

        return (norm(self.host), self.port or 0, self.database) == \
            (norm(other.host), other.port or 0, other.database)

    def with_database(self, database: str) -> Dsn:
        return Dsn(self.scheme, self.host, self.port, self.user, self.password, database,
                   self.params)


def parse_dsn(text: str, *, what: str) -> Dsn:
    """Parse a URL DSN (``postgresql://u:p@h:5432/db``, ``mysql://...``) or a libpq
    ``key=value`` string. Raises :class:`DsnError` naming ``what`` but not the DSN."""
    text = text.strip()
    try:
        if "://" in text:
            parts = urlsplit(text)
            return Dsn(
                scheme=parts.scheme.split("+")[0], host=parts.hostname, port=parts.port,
                user=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                database=unquote(parts.path.lstrip("/")) or None,
                params=tuple(parse_qsl(parts.query)))
        fields = dict(item.split("=", 1) for item in shlex.split(text))
        return Dsn(scheme="postgresql", host=fields.pop("host", None),
                   port=int(fields.pop("port")) if "port" in fields else None,
                   user=fields.pop("user", None), password=fields.pop("password", None),
                   database=fields.pop("dbname", None), params=tuple(fields.items()))
    except ValueError:
        raise DsnError(f"{what}: the DSN cannot be parsed (write "
                       "postgresql://user:password@host:port/database)") from None


def pg_env(dsn: Dsn) -> dict[str, str]:
    """The environment for libpq tools (pg_dump, pg_restore, psql) to reach ``dsn``: the base
    variables (:func:`drkit.supervise.base_env`) and the DSN's, nothing else of drkit's."""
    env = base_env()
    for key, value in (("PGHOST", dsn.host), ("PGPORT", dsn.port), ("PGUSER", dsn.user),
                       ("PGPASSWORD", dsn.password), ("PGDATABASE", dsn.database)):
        if value is not None:
            env[key] = str(value)
    for key, value in dsn.params:
        if key in _PG_PARAMS:
            env[_PG_PARAMS[key]] = value
    return env


def option_value(value: str) -> str:
    """``value`` quoted for a MySQL/MariaDB options file: in double quotes (so ``#`` and
    spaces are kept), with backslash, double quote and control characters escaped."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t").replace("\b", "\\b"))
    return f'"{escaped}"'


def mysql_defaults_file(dsn: Dsn, directory: Path) -> Path:
    """Write a private ``[client]`` options file for ``dsn`` into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "client.cnf"
    lines = ["[client]"]
    for key, value in (("host", dsn.host), ("port", dsn.port), ("user", dsn.user),
                       ("password", dsn.password)):
        if value is not None:
            lines.append(f"{key}={option_value(str(value))}")
    if dsn.host:
        lines.append("protocol=TCP")  # "localhost" would otherwise mean the local socket
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def target_dsn(name: str, text: str) -> tuple[Dsn, str]:
    """Target ``name``'s DSN and the database it names. Raises :class:`DsnError` when it
    cannot be parsed or names no database."""
    dsn = parse_dsn(text, what=f"target '{name}'")
    if not dsn.database:
        raise DsnError(f"target '{name}': the DSN names no database")
    return dsn, dsn.database
