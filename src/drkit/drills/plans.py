"""Recovery plans (``recovery_plans/*.yaml``, one plan a file) and their validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from drkit.config.loader import locate, read_yaml, validate_located
from drkit.config.models import Config, CronExpr, Duration, EnvName, Limit, Name, Strict
from drkit.config.secrets import SecretRef
from drkit.errors import BadRequestError, ConfigError

CHECK_KINDS = ("files_exist", "command", "sqlite_integrity", "sql", "fingerprints", "http")


class FilesExistCheck(Strict):
    """Paths (relative to the restored data) that must exist; a trailing ``/`` means a folder."""

    files_exist: list[str] = Field(min_length=1)
    name: str | None = None

    @field_validator("files_exist")
    @classmethod
    def _relative(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.startswith("/") or ".." in Path(item).parts:
                raise ValueError(f"{item!r}: paths are relative to the restored data, "
                                 "without '..'")
        return value


class CommandCheck(Strict):
    """A command (argv list) that exits 0 when the restored data is good. It runs with a
    minimal environment; ``env`` lists the variables of drkit's environment it needs too."""

    command: list[str] = Field(min_length=1)
    timeout: Limit = 300.0
    env: list[EnvName] = Field(default_factory=list)
    name: str | None = None


class SqliteIntegrityCheck(Strict):
    """``PRAGMA integrity_check`` on a restored SQLite file (``true``: the target's own file)."""

    sqlite_integrity: Literal[True] | str
    name: str | None = None


class SqlCheck(Strict):
    """A query whose first column of its first row must meet ``expect``."""

    sql: str = Field(min_length=1)
    expect: str
    database: str | None = None  # a restored SQLite file; default: the target's own
    name: str | None = None

    @field_validator("expect")
    @classmethod
    def _known_form(cls, value: str) -> str:
        from drkit.drills.expect import parse_expectation

        parse_expectation(value)
        return value


class FingerprintsCheck(Strict):
    """The target's fingerprints, run on the restored database, must equal the values taken
    at backup time (recorded with the backup of the snapshot that was restored)."""

    fingerprints: Literal[True]
    name: str | None = None


class HttpCheck(Strict):
    """A restored service answers: ``start`` it (argv; ``{restore_dir}`` and ``{dsn}``
    substituted), wait until ``http`` (the URL) answers with ``expect_status`` and a body
    matching ``expect_body`` (a regular expression, searched), then stop it with its process
    group. ``timeout`` bounds the whole check."""

    http: str
    start: list[str] | None = Field(default=None, min_length=1)
    env: list[EnvName] = Field(default_factory=list)
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: str | None = None
    timeout: Limit = 60.0
    name: str | None = None

    @field_validator("http")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"expect_body is not a regular expression: {exc}") from None
        return value


def _check_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        found = [kind for kind in CHECK_KINDS if kind in value]
        return found[0] if len(found) == 1 else None
    return next((kind for kind in CHECK_KINDS if hasattr(value, kind)), None)


Check = Annotated[
    Union[  # noqa: UP007 - tagged members need the Union spelling
        Annotated[FilesExistCheck, Tag("files_exist")],
        Annotated[CommandCheck, Tag("command")],
        Annotated[SqliteIntegrityCheck, Tag("sqlite_integrity")],
        Annotated[SqlCheck, Tag("sql")],
        Annotated[FingerprintsCheck, Tag("fingerprints")],
        Annotated[HttpCheck, Tag("http")],
    ],
    Discriminator(_check_kind, custom_error_type="unknown_check",
                  custom_error_message="unknown check kind: give exactly one of "
                                       + ", ".join(CHECK_KINDS)),
]


class Objectives(Strict):
    rpo: Duration
    rto: Duration

    @field_validator("rpo", "rto")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("an objective must be longer than zero")
        return value


class ScratchDatabase(Strict):
    """A scratch server where drkit creates (and drops) its own database for a drill."""

    dsn: SecretRef


class RestoreInto(Strict):
    """Where a database step is restored: exactly one scratch server kind."""

    postgres: ScratchDatabase | None = None
    mysql: ScratchDatabase | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RestoreInto:
        if (self.postgres is None) == (self.mysql is None):
            raise ValueError("give exactly one of 'postgres' or 'mysql'")
        return self


DATABASE_KINDS = ("postgres", "mysql")


class RandomPick(Strict):
    """Restore a good backup chosen at random among those of the last ``random_within``
    (as AWS Backup restore testing does), so that older recovery points are proven too."""

    random_within: Duration


REPOSITORY_MODES = ("all", "rotate")


class RecoverTo(Strict):
    """Where ``drkit recover`` puts a step's data back: production's own location, declared
    (never guessed): a directory (``path``) or, for a database target, the database its
    server should hold again (``dsn``, naming the database)."""

    path: Path | None = None
    dsn: SecretRef | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r}: recover_to.path must be an absolute path")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> RecoverTo:
        if (self.path is None) == (self.dsn is None):
            raise ValueError("give exactly one of 'path' (a directory) or 'dsn' (a database)")
        return self


class PlanStep(Strict):
    target: Name
    # default: the target's first repository; "all": restore from each of the target's
    # repositories; "rotate": a different one each drill (counted in the catalog).
    repository: Name | None = None
    pick: Annotated[
        Union[  # noqa: UP007 - tagged members need the Union spelling
            # last_normal: the newest good backup before the oldest unacknowledged anomaly
            Annotated[Literal["newest", "last_normal"], Tag("named")],
            Annotated[RandomPick, Tag("random")],
        ],
        Discriminator(lambda v: "random" if isinstance(v, dict | RandomPick) else "named"),
    ] = "newest"
    restore_into: RestoreInto | None = None  # database targets: a scratch server
    # Restore into a new database on the target's own server (recorded in the evidence);
    # without it a scratch server that is the production server is refused.
    allow_production_server: bool = False
    checks: list[Check] = Field(default_factory=list)
    recover_to: RecoverTo | None = None  # drkit recover: production's location of the data


class RecoveryPlan(Strict):
    """One plan: what to restore, in which order, how to verify it, and the objectives."""

    name: Name
    description: str = ""
    owner: str | None = None     # who answers for the plan (the DR test report names them)
    scenario: str | None = None  # what a drill rehearses by default (drill --scenario wins)
    objectives: Objectives
    schedule: CronExpr | None = None
    timeout: Limit | None = None  # the whole drill; default: timeouts.drill
    drill_every: Duration | None = None  # overdue (status exit 1) without a passed drill
    prove_checks: bool = False  # every drill of the plan as with --prove-checks
    steps: list[PlanStep] = Field(min_length=1)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _distinct_targets(self) -> RecoveryPlan:
        targets = [step.target for step in self.steps]
        if len(set(targets)) != len(targets):
            raise ValueError("a target appears in two steps")
        return self


def plan_files(config: Config) -> list[Path]:
    """The plan files under ``plans_dir`` (``*.yaml`` and ``*.yml``), sorted."""
    directory = config.plans_dir
    if not directory.is_dir():
        return []
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_plans(config: Config) -> dict[str, RecoveryPlan]:
    """Every plan in ``plans_dir``, checked against the config. Raises :class:`ConfigError`
    listing every problem of every file, each with its file, line and path."""
    plans: dict[str, RecoveryPlan] = {}
    problems: list[str] = []
    for path in plan_files(config):
        data, lines, found = read_yaml(path)
        problems += found
        plan, found = validate_located(RecoveryPlan, data, path, lines,
                                       context={"base_dir": path.parent})
        problems += found
        if isinstance(data, dict):
            problems += [locate(path, lines, loc, msg) for loc, msg in _references(data, config)]
        if plan is None:
            continue
        if plan.name in plans:
            problems.append(locate(path, lines, ("name",), f"plan name {plan.name!r} is also "
                                   f"used by {plans[plan.name].source}"))
            continue
        plans[plan.name] = plan.model_copy(update={"source": path})
    if problems:
        raise ConfigError(problems)
    return plans


def _references(data: dict[str, Any], config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    out: list[tuple[tuple[str | int, ...], str]] = []
    steps = data.get("steps")
    if not isinstance(steps, list):
        return out
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        target = step.get("target")
        if isinstance(target, str) and target not in config.targets:
            known = ", ".join(config.targets) or "none declared"
            out.append((("steps", index, "target"),
                        f"unknown target {target!r} (declared: {known})"))
            continue
        kind = config.targets[target].kind if isinstance(target, str) else None
        into = step.get("restore_into")
        if into is not None and kind not in DATABASE_KINDS:
            out.append((("steps", index, "restore_into"),
                        f"restore_into applies to database targets "
                        f"({', '.join(DATABASE_KINDS)}); target {target!r} is a {kind} target"))
        elif isinstance(into, dict) and isinstance(target, str):
            out += [(("steps", index, "restore_into", *loc), message)
                    for loc, message in _scratch_problems(into, config.targets[target])]
        elif kind in DATABASE_KINDS and step.get("checks"):
            out.append((("steps", index),
                        f"a {kind} target is checked in a scratch database: add restore_into: "
                        f"{{{kind}: {{dsn: ...}}}}"))
        recover_to = step.get("recover_to")
        if isinstance(recover_to, dict) and kind in DATABASE_KINDS and "path" in recover_to:
            out.append((("steps", index, "recover_to"),
                        f"a {kind} target is recovered into its server: recover_to: "
                        "{dsn: {env: NAME}} (the DSN naming the database to put back)"))
        elif isinstance(recover_to, dict) and kind not in DATABASE_KINDS and "dsn" in recover_to:
            out.append((("steps", index, "recover_to"),
                        f"recover_to.dsn is for database targets; target {target!r} is a "
                        f"{kind} target: recover_to: {{path: DIR}}"))
        elif recover_to is not None and kind == "files" and \
                isinstance(target, str) and len(getattr(config.targets[target], "paths",
                                                        [])) != 1:
            out.append((("steps", index, "recover_to"),
                        f"target {target!r} backs up several paths: recover_to needs a target "
                        "with one (each path its own target)"))
        checks = step.get("checks")
        if isinstance(checks, list) and isinstance(target, str) and not getattr(
                config.targets[target], "fingerprints", None):
            out += [(("steps", index, "checks", number),
                     f"target {target!r} declares no fingerprints (a postgres or sqlite "
                     "target's `fingerprints:` queries)")
                    for number, check in enumerate(checks)
                    if isinstance(check, dict) and "fingerprints" in check]
        repo = step.get("repository")
        if isinstance(repo, str) and isinstance(target, str) and \
                repo not in REPOSITORY_MODES and repo not in config.holding(target):
            out.append((("steps", index, "repository"),
                        f"target {target!r} is not backed up to repository {repo!r} (its "
                        f"repositories: {', '.join(config.holding(target))}; "
                        "or all, rotate)"))
    return out


def _scratch_problems(into: dict[str, Any], target: Any
                      ) -> list[tuple[tuple[str | int, ...], str]]:
    """The scratch server must fit the target's kind and must not be the target's database."""
    from drkit.errors import SecretError
    from drkit.targets.dsn import DsnError, parse_dsn

    problems: list[tuple[tuple[str | int, ...], str]] = []
    for kind, spec in into.items():
        if kind != target.kind and kind in DATABASE_KINDS:
            problems.append(((kind,), f"a {target.kind} target cannot be restored into {kind}"))
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("dsn"), dict):
            continue
        try:
            ref = SecretRef.model_validate(spec["dsn"], context={})
        except ValueError:
            continue
        same_ref = (ref.env is not None and ref.env == target.dsn.env) or (
            ref.file is not None and ref.file == target.dsn.file)
        try:
            same = same_ref or parse_dsn(ref.resolve(), what="scratch").same_database(
                parse_dsn(target.dsn.resolve(), what="target"))
        except (SecretError, DsnError):
            same = same_ref  # secrets not in this shell: compare what we can
        if same:
            problems.append(((kind, "dsn"), "the scratch DSN names the target's own database; "
                             "a drill must never touch production"))
    return problems


def find_plan(plans: dict[str, RecoveryPlan], name: str) -> RecoveryPlan:
    """The plan called ``name``; a bad request naming the known plans otherwise."""
    if name in plans:
        return plans[name]
    import difflib

    close = difflib.get_close_matches(name, list(plans), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadRequestError(f"unknown plan {name!r}{hint}; plans: {', '.join(plans) or 'none'}")
