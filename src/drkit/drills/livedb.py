"""A named database on a server that ``drkit restore --into-dsn`` or ``drkit recover`` writes
to (production, or wherever the operator says), as opposed to a drill's scratch database.

PostgreSQL: the dump is loaded into a new staging database on the same server
(``drkit_restore_<random>``, created like the database it replaces: same encoding and
collation), checked, and only then swapped in, in one transaction: the database under the
name is renamed aside (``NAME_before_restore_<time>_<random>``, closed to connections), the
staging database takes the name and the old one's owner, connection limit, grants and
settings. Production is never closed or renamed outside that transaction, so an interrupt
or a kill leaves it either as it was or swapped. Sessions connected to it are ended only when
the swap is refused because of them, and the swap is then tried again.

MySQL/MariaDB cannot rename a database, and drkit never drops one: a dump is loaded only
into a database that is missing (created) or empty, checked again right before loading.
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

SWAP_ATTEMPTS_S = 30.0  # ending sessions that keep the swap from happening, at most this long
STAGING_PREFIX = "drkit_restore_"
PG_NAME_BYTES = 63
# GUCs whose stored value is a list PostgreSQL quoted itself: set again as written.
_LIST_SETTINGS = {"search_path", "temp_tablespaces", "local_preload_libraries",
                  "session_preload_libraries"}


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


@dataclass
class Swapped:
    """What the swap did."""

    aside: str | None                 # where the replaced database went
    ended: list[str] = field(default_factory=list)     # sessions ended to let it happen
    warnings: list[str] = field(default_factory=list)  # left behind on the old database


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _mysql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _cut(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:size].decode("utf-8", "ignore")


def aside_name(database: str, stamp: str) -> str:
    """A fresh name a replaced database is kept under, within PostgreSQL's 63 bytes (which it
    would otherwise cut silently): ``NAME_before_restore_<stamp>_<random>``."""
    tail = f"_before_restore_{stamp}_{secrets.token_hex(2)}"
    return _cut(database, PG_NAME_BYTES - len(tail.encode())) + tail


class PostgresLive:
    """Database ``dsn.database`` on the server ``dsn`` reaches (administered through the
    server's ``postgres`` database)."""

    kind = "postgres"

    def __init__(self, dsn: Dsn, limits: Limits = NO_LIMITS) -> None:
        assert dsn.database
        self.dsn = dsn
        self.name = dsn.database
        self.limits = limits
        self._admin = PostgresScratch(dsn.with_database("postgres"), dsn.database, limits)

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
        return PostgresScratch(self.dsn.with_database("postgres"),
                               f"{STAGING_PREFIX}{secrets.token_hex(6)}", self.limits)

    def create_staging(self, staging: PostgresScratch, state: DatabaseState) -> None:
        """Create ``staging`` like the database it replaces (encoding and collation, from
        ``template0``), or plainly when there is none."""
        if not state.exists:
            staging.create()
            return
        row = self._psql("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM "
                         f"pg_database WHERE datname = {_literal(self.name)}").strip()
        encoding, collate, ctype = row.split("|", 2)
        self._psql(f"CREATE DATABASE {_ident(staging.name)} TEMPLATE template0 ENCODING "
                   f"{_literal(encoding)} LC_COLLATE {_literal(collate)} LC_CTYPE "
                   f"{_literal(ctype)}")

    def swap_in(self, staging: str, *, overwrite: bool) -> Swapped:
        """Put ``staging`` in place under the database's name, in one transaction that
        renames the database there now aside. Raises :class:`ScratchError` (nothing
        changed) when it cannot; a database that was empty or missing when the restore
        started but holds data now is replaced only with ``overwrite``."""
        now = self.state()
        if not now.empty and not overwrite:
            raise ScratchError(f"database {self.name} holds data now (it did not when the "
                               "restore started): nothing replaced (--overwrite replaces it)")
        aside = aside_name(self.name, time.strftime("%Y%m%d_%H%M%S", time.gmtime())) \
            if now.exists else None
        statements = [f"ALTER DATABASE {_ident(staging)} RENAME TO {_ident(self.name)}"]
        warnings: list[str] = []
        if aside is not None:
            statements = [
                f"ALTER DATABASE {_ident(self.name)} RENAME TO {_ident(aside)}",
                f"ALTER DATABASE {_ident(aside)} WITH ALLOW_CONNECTIONS false",
                *statements, *self._carried_over(staging)]
            slots = self._psql("SELECT slot_name FROM pg_replication_slots WHERE database = "
                               f"{_literal(self.name)}").split()
            if slots:
                warnings.append(f"replication slots {', '.join(slots)} stay with {aside} "
                                "(they keep WAL until dropped or recreated)")
        ended: list[str] = []
        deadline = time.monotonic() + SWAP_ATTEMPTS_S
        while True:
            try:
                self._psql("BEGIN; " + "; ".join(statements) + "; COMMIT")
                return Swapped(aside=aside, ended=ended, warnings=warnings)
            except ScratchError as exc:
                busy = ("being accessed by other users" in str(exc)
                        or "other session" in str(exc))
                if not busy or time.monotonic() > deadline:
                    raise
            ended += [s for s in self.sessions() if s not in ended]
            self._psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname "
                       f"= {_literal(self.name)} AND pid <> pg_backend_pid()")
            time.sleep(0.1)

    def _carried_over(self, staging: str) -> list[str]:
        """Statements giving ``staging`` (already renamed) what the database it replaces
        has at the database level: owner, connection limit, grants, settings."""
        name = _ident(self.name)
        where = f"datname = {_literal(self.name)}"
        owner, limit, has_acl = self._psql(
            "SELECT quote_ident(pg_get_userbyid(datdba)), datconnlimit, datacl IS NOT NULL "
            f"FROM pg_database WHERE {where}").strip().split("|")
        out = [f"ALTER DATABASE {name} OWNER TO {owner}"]
        if limit != "-1":
            out.append(f"ALTER DATABASE {name} CONNECTION LIMIT {int(limit)}")
        if has_acl == "t":
            out.append(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
            grants = self._psql(
                "SELECT format('GRANT %s ON DATABASE {DB} TO %s%s', a.privilege_type, CASE WHEN "
                "a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, CASE WHEN "
                "a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) FROM pg_database d, "
                "aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE "
                f"d.{where}")
            out += [grant.replace("{DB}", name) for grant in grants.splitlines()
                    if grant.strip()]
        settings = self._psql(
            "SELECT coalesce(quote_ident(r.rolname), ''), unnest(s.setconfig) FROM "
            "pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN "
            f"pg_roles r ON r.oid = s.setrole WHERE d.{where}")
        for line in settings.splitlines():
            if "|" not in line:
                continue
            role, setting = line.split("|", 1)
            key, _, value = setting.partition("=")
            value = value if key.lower() in _LIST_SETTINGS else _literal(value)
            target = f"ROLE {role} IN DATABASE {name}" if role else f"DATABASE {name}"
            out.append(f"ALTER {target} SET {_ident(key)} TO {value}")
        return out

    def dump_producer(self, pg_dump: str = "pg_dump") -> ChildSpec:
        """``pg_dump -Fc`` of the database as it is now (a recovery's safety copy)."""
        return ChildSpec(argv=[pg_dump, "--format=custom", "--no-password"],
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
        name = _mysql_literal(self.name)
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

    def load(self, dump: Path) -> None:
        """Load ``dump`` (events and all as the dump has them) into the database, created
        when missing (and dropped again if the load fails, since it was drkit's). The
        database is checked again right before: one that holds anything by now is refused
        (the dump's ``DROP TABLE`` statements would replace what the application wrote)."""
        state = self.state()
        refuse_unreplaceable(self, state)
        if not state.exists:
            self._client.create()
        try:
            self._client.restore(dump, as_production=True)
        except ScratchError:
            if not state.exists:
                self._client.drop()
            raise

    def dump_producer(self, dump_binary: str) -> ChildSpec:
        """A consistent dump of the database as it is now (a recovery's safety copy)."""
        options = mysql_defaults_file(self.dsn, self.workdir / "safety")
        return ChildSpec(argv=[dump_binary, f"--defaults-file={options}",
                               "--single-transaction", "--routines", "--triggers", "--events",
                               "--hex-blob", "--", self.name],
                         what=f"dump of {self.dsn.describe()}",
                         secrets=[self.dsn.password or ""])


LiveDatabase = PostgresLive | MysqlLive


def live_database(kind: str, dsn: Dsn, workdir: Path, limits: Limits = NO_LIMITS
                  ) -> LiveDatabase:
    """The database ``dsn`` names, on its server, as a ``kind`` target's restore sees it."""
    if not dsn.database:
        raise BadRequestError(f"the DSN {dsn.describe()} names no database: say which "
                              "database to restore (…/DATABASE)")
    if dsn.database.startswith("-") or "\x00" in dsn.database:
        raise BadRequestError(f"{dsn.database!r} is not a database name drkit restores into")
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
