"""Declared checks run against restored data. One function a check kind.

A database kind (postgres, mysql) plugs in by providing a :class:`SqlDatabase` for its scratch
database; ``sql`` checks then run unchanged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from drkit.config.secrets import redact
from drkit.drills.expect import evaluate, parse_expectation
from drkit.drills.plans import (
    Check,
    CommandCheck,
    FilesExistCheck,
    FingerprintsCheck,
    HttpCheck,
    SqlCheck,
    SqliteIntegrityCheck,
)
from drkit.supervise import NO_LIMITS, ChildError, ChildSpec, Limits, base_env, run

DETAIL_LIMIT = 2000
TIMED_OUT = "timed out after "  # how a check that ran out of time starts its detail
OUTPUT_LIMIT = 4000


@dataclass
class CheckResult:
    """One check's outcome and its evidence (output is truncated, never unbounded)."""

    name: str
    status: str  # "passed" | "failed"
    detail: str
    duration_s: float = 0.0
    output: dict[str, str] = field(default_factory=dict)
    # Failed without a verdict on the data: the check raised, or ran out of time.
    inconclusive: bool = False
    started_at: datetime | None = None  # when it started (the DR test report's timeline)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status,
                                "detail": self.detail[:DETAIL_LIMIT],
                                "duration_s": round(self.duration_s, 3)}
        if self.output:
            data["output"] = self.output
        if self.inconclusive:
            data["inconclusive"] = True
        if self.started_at is not None:
            data["started_at"] = self.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return data


class SqlDatabase(Protocol):
    """Where ``sql`` checks run: a restored SQLite file or a scratch database server."""

    def scalar(self, sql: str) -> Any:
        """The first column of the first row of ``sql`` (None when no row)."""
        ...


class SqliteDatabase:
    """A restored SQLite file in the sandbox (a copy: opening it read-write is harmless)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def scalar(self, sql: str) -> Any:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            row = db.execute(sql).fetchone()
        return row[0] if row else None


@dataclass(frozen=True)
class StepContext:
    """What a check may look at: the restored data and the snapshot it came from."""

    data_dir: Path           # the restored data (``{restore_dir}``)
    sandbox: Path            # the drill's sandbox; nothing is written outside it
    snapshot_time: datetime
    default_database: Path | None = None   # a sqlite target's own file
    database: SqlDatabase | None = None    # set by database steps (postgres, mysql)
    substitutions: dict[str, str] = field(default_factory=dict)  # {dsn}: the scratch database
    dsn_env: dict[str, str] = field(default_factory=dict)  # what reaches it (its password)
    # The fingerprints recorded with the restored snapshot's backup: name -> {sql, value}.
    fingerprints: dict[str, dict[str, Any]] | None = None
    limits: Limits = NO_LIMITS             # the drill's own time limit


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the end of ``text`` (where errors usually are), marking what was cut."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]


def check_name(check: Check) -> str:
    """A readable default name for ``check``."""
    if check.name:
        return check.name
    if isinstance(check, FilesExistCheck):
        return "files_exist: " + ", ".join(check.files_exist)
    if isinstance(check, CommandCheck):
        return "command: " + " ".join(check.command)
    if isinstance(check, FingerprintsCheck):
        return "fingerprints equal to the backup's"
    if isinstance(check, HttpCheck):
        return f"http: {check.http}"
    if isinstance(check, SqliteIntegrityCheck):
        return "sqlite_integrity" + (f": {check.sqlite_integrity}"
                                     if isinstance(check.sqlite_integrity, str) else "")
    return f"sql: {check.sql} expect {check.expect}"


def inside(base: Path, relative: str) -> Path:
    """``base / relative``, refusing anything that would resolve outside ``base``."""
    path = (base / relative).resolve()
    if path != base.resolve() and base.resolve() not in path.parents:
        raise ValueError(f"{relative!r} points outside the restored data")
    return path


def run_check(check: Check, context: StepContext) -> CheckResult:
    """Run one check; never raises for a failing check (the result says why)."""
    name = check_name(check)
    started_at = datetime.now(UTC).replace(tzinfo=None)
    start = time.monotonic()
    runner: Callable[[Any, StepContext], tuple[bool, str, dict[str, str]]] = _RUNNERS[type(check)]
    inconclusive = False
    try:
        ok, detail, output = runner(check, context)
    except Exception as exc:
        ok, detail, output = False, f"{type(exc).__name__}: {exc}", {}
        inconclusive = True
    if not ok and context.limits.expired():
        inconclusive = True  # the drill's own time ran out: no verdict on the data
    # Evidence is kept for years: no secret may reach it, whatever a check printed.
    return CheckResult(name=name, status="passed" if ok else "failed", detail=redact(detail),
                       duration_s=time.monotonic() - start,
                       output={key: redact(text) for key, text in output.items()},
                       inconclusive=inconclusive or detail.startswith(TIMED_OUT),
                       started_at=started_at)


def _files_exist(check: FilesExistCheck, context: StepContext
                 ) -> tuple[bool, str, dict[str, str]]:
    missing = []
    for item in check.files_exist:
        path = inside(context.data_dir, item)
        wanted_dir = item.endswith("/")
        if not path.exists() or (wanted_dir and not path.is_dir()):
            missing.append(item)
    if missing:
        return False, f"missing: {', '.join(missing)}", {}
    return True, f"{len(check.files_exist)} present", {}


def _sqlite_path(value: str | bool | None, context: StepContext) -> Path:
    if isinstance(value, str):
        return inside(context.data_dir, value)
    if context.default_database is None:
        raise ValueError("no database given and the step's target is not a sqlite target")
    # Through ``inside`` too: a symlink in the restored data must not lead a check to a file
    # outside the sandbox (the production database itself).
    return inside(context.data_dir,
                  str(context.default_database.relative_to(context.data_dir)))


def _sqlite_integrity(check: SqliteIntegrityCheck, context: StepContext
                      ) -> tuple[bool, str, dict[str, str]]:
    path = _sqlite_path(check.sqlite_integrity, context)
    if not path.is_file():
        return False, f"{path.name} was not restored", {}
    with closing(sqlite3.connect(path, timeout=30)) as db:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    ok = rows == ["ok"]
    return ok, "integrity_check: ok" if ok else "integrity_check: " + "; ".join(rows[:5]), {}


def _sql(check: SqlCheck, context: StepContext) -> tuple[bool, str, dict[str, str]]:
    database = context.database
    if database is None:
        path = _sqlite_path(check.database, context)
        if not path.is_file():
            return False, f"{path.name} was not restored", {}
        database = SqliteDatabase(path)
    value = database.scalar(check.sql)
    ok, detail = evaluate(parse_expectation(check.expect), value, context.snapshot_time)
    return ok, detail, {}


def _fingerprints(check: FingerprintsCheck, context: StepContext
                  ) -> tuple[bool, str, dict[str, str]]:
    from drkit.targets.fingerprints import as_text

    recorded = context.fingerprints
    if not recorded:
        return False, ("the backup of the restored snapshot recorded no fingerprints (made "
                       "before the target declared them?)"), {}
    database = context.database
    if database is None:
        path = _sqlite_path(None, context)
        if not path.is_file():
            return False, f"{path.name} was not restored", {}
        database = SqliteDatabase(path)
    differ = []
    for name, taken in recorded.items():
        value = as_text(database.scalar(str(taken["sql"])))
        if value != taken.get("value"):
            differ.append(f"{name}: restored {value!r}, at backup {taken.get('value')!r}")
    if differ:
        return False, "; ".join(differ), {}
    return True, (f"{len(recorded)} fingerprint{'' if len(recorded) == 1 else 's'} "
                  f"({', '.join(recorded)}) equal to the backup's"), {}


def _command(check: CommandCheck, context: StepContext) -> tuple[bool, str, dict[str, str]]:
    subs = {"restore_dir": str(context.data_dir), **context.substitutions}
    if any("{dsn}" in arg for arg in check.command) and "dsn" not in subs:
        return False, "{dsn} is only known in a step restored into a scratch database", {}
    argv = [_substitute(arg, subs) for arg in check.command]
    env = _child_env(check.command, check.env, context)
    limits = _limits(check.timeout, context)
    spec = ChildSpec(argv=argv, what=f"check command {argv[0]}", env=env, cwd=context.data_dir)
    try:
        exit_ = run(spec, limits=limits, on_stdout_line=None)
    except ChildError as exc:
        return False, str(exc), {}
    outputs = _outputs(exit_.stdout, exit_.stderr)
    if exit_.stopped == "timeout":
        return False, f"{limits.message()} (killed with its process group)", outputs
    return exit_.returncode == 0, f"exit code {exit_.returncode}", outputs


def _child_env(argv: list[str], allow: list[str], context: StepContext) -> dict[str, str]:
    """A minimal environment: no repository password, S3 key or production DSN of drkit's;
    the check's own ``env:`` list names what it needs from drkit's environment. ``HOME`` is
    the sandbox's ``tmp`` (unless listed): the operator's ``~/.pgpass``, ``~/.my.cnf`` or
    ``~/.aws`` are not the check's to use. A check that uses {dsn} gets the scratch
    database's password in the environment (never argv)."""
    tmp = context.sandbox / "tmp"
    tmp.mkdir(exist_ok=True, mode=0o700)
    extra = context.dsn_env if any("{dsn}" in arg for arg in argv) else {}
    home = {} if "HOME" in allow else {"HOME": str(tmp)}
    return {**base_env(allow, TMPDIR=str(tmp), DRKIT_RESTORE_DIR=str(context.data_dir),
                       **home),
            **{key: value for key, value in extra.items()
               if key.startswith("PG") or key == "MYSQL_PWD"}}


def _limits(timeout: float, context: StepContext) -> Limits:
    remaining = context.limits.remaining()
    return Limits.after(timeout if remaining is None else min(timeout, remaining))


def _http(check: HttpCheck, context: StepContext) -> tuple[bool, str, dict[str, str]]:
    from drkit.drills.service import run_service_check

    subs = {"restore_dir": str(context.data_dir), **context.substitutions}
    argv = check.start
    if argv is not None and any("{dsn}" in arg for arg in argv) and "dsn" not in subs:
        return False, "{dsn} is only known in a step restored into a scratch database", {}
    ok, detail, output = run_service_check(
        check.http, argv=[_substitute(arg, subs) for arg in argv] if argv else None,
        env=_child_env(argv or [], check.env, context), cwd=context.data_dir,
        status=check.expect_status, body=check.expect_body,
        limits=_limits(check.timeout, context))
    return ok, detail, {key: truncate(text) for key, text in output.items()}


def _substitute(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _outputs(out: str, err: str) -> dict[str, str]:
    result = {}
    if out:
        result["stdout"] = truncate(out)
    if err:
        result["stderr"] = truncate(err)
    return result


_RUNNERS: dict[type, Callable[[Any, StepContext], tuple[bool, str, dict[str, str]]]] = {
    FilesExistCheck: _files_exist,
    CommandCheck: _command,
    SqliteIntegrityCheck: _sqlite_integrity,
    SqlCheck: _sql,
    FingerprintsCheck: _fingerprints,
    HttpCheck: _http,
}
