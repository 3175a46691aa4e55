"""A named database on a server that ``drkit restore --into-dsn`` or ``drkit recover`` writes
to (production, or wherever the operator says), as opposed to a drill's scratch database.

PostgreSQL: the dump is loaded into a new staging database on the same server
(``drkit_restore_<random>``), checked there, and only then swapped in. The database it
replaces, if any, is closed to new connections, its sessions are ended, and it is renamed
aside (``NAME_before_restore_<time>``, still closed to connections) in the same transaction
that renames the staging database to ``NAME``: the name is never missing, nothing is dropped,
and a failure before the swap leaves production as it was.

MySQL/MariaDB cannot rename a database, and drkit never drops one: a dump is loaded only
into a database that is missing (created) or empty.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from drkit.drills.databases import MysqlScratch, PostgresScratch, ScratchError
from drkit.errors import BadRequestError
from drkit.supervise import NO_LIMITS, ChildSpec, Limits
from drkit.targets.dsn import Dsn, mysql_defaults_file, pg_env

SESSIONS_END_S = 30.0  # how long ended sessions may take to go before the swap gives up
STAGING_PREFIX = "drkit_restore_"


@dataclass
class DatabaseState:
    """What a server holds under a database's name now."""

    exists: bool
    objects: int | None = None  # tables, views, sequences, routines...; None: unreadable
    bytes: int | None = None
    owner: str | None = None
    sessions: list[str] = field(default_factory=list)  # other sessions connected to it

    @property
    def empty(self) -> bool:
        return not self.exists or self.objects == 0


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _mysql_ident(value: str) -> str:
    return "`" + value.replace("`", "``") + "`"


def aside_name(database: str, stamp: str) -> str:
    """The name a replaced database is kept under (PostgreSQL names: at most 63 bytes)."""
    return f"{database[:30]}_before_restore_{stamp}"


class PostgresLive:
    """Database ``dsn.database`` on the server ``dsn`` reaches (administered through the
    server's ``postgres`` database)."""

    kind = "postgres"

    def __init__(self, dsn: Dsn, limits: Limits = NO_LIMITS) -> None:
        assert dsn.database
        self.dsn = dsn
        self.name = dsn.database
        self.limits = limits
        self._admin = PostgresScratch(dsn, dsn.database, limits)

    def _psql(self, sql: str, database: str = "postgres") -> str:
        return self._admin._psql(sql, database)

    def state(self) -> DatabaseState:
        """Whether the database exists, its size, owner, objects and other sessions."""
        row = self._psql("SELECT pg_database_size(oid), pg_get_userbyid(datdba) FROM "
                         f"pg_database WHERE datname = {_literal(self.name)}").strip()
        if not row:
            return DatabaseState(exists=False)
        size, owner = row.split("|", 1)
        try:
            objects: int | None = int(self._psql(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND "
                "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT "
                "LIKE 'pg_toast%'", self.name).strip())
        except ScratchError:
            objects = None  # closed to connections, or not ours to read: not empty
        return DatabaseState(exists=True, objects=objects, bytes=int(size), owner=owner,
                             sessions=self.sessions())

    def sessions(self) -> list[str]:
        """The other sessions connected to the database, described."""
        out = self._psql(
            "SELECT format('pid %s, user %s%s%s', pid, usename, CASE WHEN application_name "
            "<> '' THEN ', ' || application_name ELSE '' END, CASE WHEN client_addr IS NOT "
            "NULL THEN ' from ' || host(client_addr) ELSE '' END) FROM pg_stat_activity "
            f"WHERE datname = {_literal(self.name)} AND pid <> pg_backend_pid()")
        return [line for line in out.splitlines() if line.strip()]

    def staging(self) -> PostgresScratch:
        """A new database (not yet created) to load the dump into before the swap."""
        # Created and dropped from the maintenance database: the DSN's may not exist.
        return PostgresScratch(self.dsn.with_database("postgres"),
                               f"{STAGING_PREFIX}{secrets.token_hex(6)}", self.limits)

    def swap_in(self, staging: str, *, aside: str | None, owner: str | None) -> list[str]:
        """Put ``staging`` in place under the database's name; the database there now is
        renamed ``aside`` (closed to connections, its sessions ended) in the same
        transaction. Returns the sessions that were ended."""
        ended: list[str] = []
        if aside is not None:
            self._psql(f"ALTER DATABASE {_ident(self.name)} WITH ALLOW_CONNECTIONS false")
            try:
                ended = self._end_sessions()
                self._psql(f"BEGIN; ALTER DATABASE {_ident(self.name)} RENAME TO "
                           f"{_ident(aside)}; ALTER DATABASE {_ident(staging)} RENAME TO "
                           f"{_ident(self.name)}; COMMIT")
            except ScratchError:
                self._psql(f"ALTER DATABASE {_ident(self.name)} WITH ALLOW_CONNECTIONS true")
                raise
        else:
            self._psql(f"ALTER DATABASE {_ident(staging)} RENAME TO {_ident(self.name)}")
        if owner is not None:
            self._psql(f"ALTER DATABASE {_ident(self.name)} OWNER TO {_ident(owner)}")
        return ended

    def _end_sessions(self) -> list[str]:
        ended = self.sessions()
        if not ended:
            return ended
        self._psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                   f"{_literal(self.name)} AND pid <> pg_backend_pid()")
        deadline = time.monotonic() + SESSIONS_END_S
        while self.sessions():
            if time.monotonic() > deadline:
                raise ScratchError(f"sessions connected to {self.name} did not end within "
                                   f"{SESSIONS_END_S:.0f} s: nothing replaced")
            time.sleep(0.1)
        return ended

    def dump_producer(self) -> ChildSpec:
        """``pg_dump -Fc`` of the database as it is now (a recovery's safety copy)."""
        return ChildSpec(argv=["pg_dump", "--format=custom", "--no-password"],
                         what=f"pg_dump of {self.dsn.describe()}", env=pg_env(self.dsn),
                         secrets=[self.dsn.password or ""])


class MysqlLive:
    """Database ``dsn.database`` on a MySQL/MariaDB server. ``workdir``: a private directory
    for the client's options file."""

    kind = "mysql"

    def __init__(self, dsn: Dsn, workdir: Path, limits: Limits = NO_LIMITS) -> None:
        assert dsn.database
        self.dsn = dsn
        self.name = dsn.database
        self.workdir = workdir
        self._client = MysqlScratch(dsn, dsn.database, workdir / "client", limits)

    def state(self) -> DatabaseState:
        name = _literal(self.name)
        found = self._client._mysql(
            f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {name}")
        if found.strip() != "1":
            return DatabaseState(exists=False)
        row = self._client._mysql(
            "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
            f"{name}) + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE "
            f"ROUTINE_SCHEMA = {name}) + (SELECT COUNT(*) FROM information_schema.EVENTS "
            f"WHERE EVENT_SCHEMA = {name}), (SELECT COALESCE(SUM(DATA_LENGTH + "
            f"INDEX_LENGTH), 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {name})")
        objects, size = row.split()[:2]
        sessions = self._client._mysql(
            "SELECT CONCAT('id ', ID, ', user ', USER, ' from ', HOST) FROM "
            f"information_schema.PROCESSLIST WHERE DB = {name} AND ID <> CONNECTION_ID()")
        return DatabaseState(exists=True, objects=int(objects), bytes=int(size),
                             sessions=[s for s in sessions.splitlines() if s.strip()])

    def load(self, dump: Path, *, create: bool) -> None:
        """Load ``dump`` into the database (created first when ``create``: dropped again if
        the load fails, since it was drkit's), events and all as the dump has them."""
        if create:
            self._client.create()
        try:
            self._client.restore(dump, as_production=True)
        except ScratchError:
            if create:
                self._client.drop()
            raise

    def dump_producer(self) -> ChildSpec:
        """A consistent dump of the database as it is now (a recovery's safety copy)."""
        from drkit.targets.mysql import MysqlTarget, dump_binary

        options = mysql_defaults_file(self.dsn, self.workdir / "safety")
        binary = dump_binary(MysqlTarget.model_construct(kind="mysql", dump_binary=None))
        return ChildSpec(argv=[binary, f"--defaults-extra-file={options}",
                               "--single-transaction", "--routines", "--triggers", "--events",
                               "--hex-blob", self.name],
                         what=f"dump of {self.dsn.describe()}",
                         secrets=[self.dsn.password or ""])


LiveDatabase = PostgresLive | MysqlLive


def live_database(kind: str, dsn: Dsn, workdir: Path, limits: Limits = NO_LIMITS
                  ) -> LiveDatabase:
    """The database ``dsn`` names, on its server, as a ``kind`` target's restore sees it."""
    if not dsn.database:
        raise BadRequestError(f"the DSN {dsn.describe()} names no database: say which "
                              "database to restore (…/DATABASE)")
    if kind == "postgres":
        return PostgresLive(dsn, limits)
    return MysqlLive(dsn, workdir, limits)


def refuse_unreplaceable(live: LiveDatabase, state: DatabaseState) -> None:
    """A MySQL/MariaDB database that holds anything cannot be replaced (a bad request)."""
    if isinstance(live, MysqlLive) and not state.empty:
        raise BadRequestError(
            f"database {live.name} on {live.dsn.describe()} is not empty ({state.objects} "
            "objects): MySQL/MariaDB cannot rename a database and drkit never drops one",
            hint="restore into a new database (…/NEW_NAME) and switch the application to "
                 "it, or drop the database yourself (after a dump) and run this again")
