"""``drkit recover PLAN``: the real recovery, following the plan's steps in order, each to its
declared production location (``recover_to: {path: DIR}``, or ``{dsn: ...}`` naming the
database a database target's server should hold again).

Guard rails: every step must declare ``recover_to``; ``--dry-run`` says exactly what would be
replaced (top-level entries with their sizes) and changes nothing; a real run needs
``--confirm PLAN``, first backs up what it is about to overwrite (a restic "safety copy" of
the destination, or a dump of the database, tagged ``drkit-safety=TARGET``, never taken for
a backup) unless ``--no-safety-copy``, and stops at the first step that fails. Each step is a
:func:`drkit.jobs.restore.restore_target` (or, for a database,
:func:`drkit.jobs.restore_db.restore_database`) with ``overwrite``: verified in staging, then
put in place, what it replaces moved aside. Before anything changes, the room each step's
staging needs is checked on its filesystem (a dry run reports it). The recovery is one
``recover`` record with the actor, the reason, every step and the RTO achieved by the real
recovery, by stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from drkit.catalog.inflight import utcnow
from drkit.config.models import Config
from drkit.drills.choose import newest_by
from drkit.drills.databases import ScratchError
from drkit.drills.livedb import PostgresLive, live_database, refuse_unreplaceable
from drkit.drills.plans import PlanStep, RecoveryPlan
from drkit.drills.restore import SPACE_MARGIN, DrillError, list_snapshot
from drkit.drills.sandbox import sandbox, sandbox_root
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import os_actor, safety_tags
from drkit.jobs.common import Recorder, detect_restic_version, restic_repository
from drkit.jobs.locks import repository_lock
from drkit.jobs.restore import check_destination, restore_target, sqlite_sidecars
from drkit.jobs.restore_db import restore_database
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.restic.stream import backup_stream
from drkit.supervise import Limits
from drkit.targets.dsn import parse_dsn
from drkit.targets.mysql import MysqlTarget
from drkit.targets.mysql import dump_binary as mysql_dump_binary
from drkit.units import human_bytes

log = logging.getLogger("drkit.recover")


@dataclass
class RecoverStep:
    target: str
    repository: str
    destination: str
    snapshot_id: str | None = None
    snapshot_time: str | None = None
    chosen_by: str | None = None
    replaces: list[dict[str, Any]] = field(default_factory=list)  # what is there now
    adds: list[str] = field(default_factory=list)
    moved_aside: dict[str, str] = field(default_factory=dict)      # what the restore moved
    database: str | None = None    # a database step: the database put back
    problem: str | None = None      # what would stop this step (a dry run reports it)
    needs_bytes: int | None = None  # room its staging needs (the snapshot's size)
    space_on: str | None = None     # ...on the filesystem of this directory
    safety_snapshot: str | None = None
    safety_s: float | None = None
    restore_s: float | None = None
    restore_record_id: int | None = None
    status: str = "planned"
    error: str | None = None


@dataclass
class RecoverResult:
    plan: str
    dry_run: bool
    actor: str
    reason: str | None
    rto_objective_s: float
    at: str | None = None
    steps: list[RecoverStep] = field(default_factory=list)
    status: str = "failed"
    rto_achieved_s: float | None = None
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # what would stop the real run
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rto_met"] = None if self.rto_achieved_s is None else \
            self.rto_achieved_s <= self.rto_objective_s
        data["rto_stages"] = {
            "safety_copy": round(sum(s.safety_s or 0.0 for s in self.steps), 3),
            "restore": round(sum(s.restore_s or 0.0 for s in self.steps), 3)}
        return data


def recover_plan(config: Config, recorder: Recorder, plan: RecoveryPlan, *, dry_run: bool,
                 confirm: str | None, safety_copy: bool = True, reason: str | None = None,
                 at: datetime | None = None, repository: str | None = None) -> RecoverResult:
    """Recover (or, with ``dry_run``, show what recovering would replace). ``at``: each
    step's newest good backup completed by then (a dry run prints the ``--at`` that makes
    the real run take exactly its snapshots); ``repository``: recover from that copy."""
    _refuse_bad_requests(config, plan, dry_run=dry_run, confirm=confirm,
                         repository=repository)
    clock = time.monotonic()  # the recovery's time starts with choosing what to restore
    recorder.catalog.start()
    at = at or (utcnow() if dry_run else None)
    result = RecoverResult(plan=plan.name, dry_run=dry_run, actor=os_actor(), reason=reason,
                           rto_objective_s=plan.objectives.rto,
                           at=at.isoformat() + "Z" if at else None)
    if dry_run:
        with sandbox(config, f"recover-{plan.name}", keep=False) as box:
            result.steps = [_survey(config, recorder, step, at, repository, box.path)
                            for step in plan.steps]
        result.problems = space_problems(result.steps) + [
            f"{step.target}: {step.problem}" for step in result.steps if step.problem]
        result.status = "dry_run"
        return result
    handle = recorder.journal.open("recover", plan=plan.name,
                                   restic_version=detect_restic_version(config))
    try:
        # One writer: no backup (or copy) of these targets by this host while production is
        # put back (it would record a half-recovered tree as the newest good backup).
        with ExitStack() as held:
            for name in sorted({r for s in plan.steps for r in config.holding(s.target)}):
                held.enter_context(repository_lock(
                    config.state_dir, name, exclusive=True, timeout=config.lock_timeout,
                    action=f"recover {plan.name}"))
            box = held.enter_context(sandbox(config, f"recover-{plan.name}", keep=False))
            result.steps = [_survey(config, recorder, step, at, repository, box.path)
                            for step in plan.steps]
            result.problems = space_problems(result.steps)
            if result.problems:
                raise DrillError("; ".join(result.problems) + ": nothing changed")
            _run_steps(config, recorder, plan, result, safety_copy=safety_copy,
                       workdir=box.path)
        if result.status == "succeeded":
            result.rto_achieved_s = round(time.monotonic() - clock, 3)
    except KeyboardInterrupt:
        result.status, result.error = "interrupted", "interrupted by the user"
        for step in result.steps:
            if step.status == "running":
                step.status = "interrupted"
        raise
    except DrkitError as exc:
        result.error = describe(exc)
    finally:
        evidence = result.to_json()
        for key in ("status", "error", "record_id", "plan"):
            evidence.pop(key)
        record = recorder.catalog.get().finish_run(handle, status=result.status,
                                                   error=result.error, evidence=evidence)
        recorder.journal.close(handle)
        result.record_id = record.id
        if result.status != "succeeded":
            notify_failure(config, "recover", result.status, plan=plan.name,
                           error=result.error, run_id=handle.run_id, record_id=record.id)
    return result


def _refuse_bad_requests(config: Config, plan: RecoveryPlan, *, dry_run: bool,
                         confirm: str | None, repository: str | None) -> None:
    missing = [s.target for s in plan.steps if s.recover_to is None]
    if missing:
        raise BadRequestError(f"plan {plan.name!r} does not say where to recover "
                              f"{', '.join(missing)}: add recover_to: {{path: DIR}} (or, "
                              "for a database, {dsn: {env: NAME}}) to each step")
    if repository is not None:
        lacking = [s.target for s in plan.steps
                   if repository not in config.holding(s.target)]
        if lacking:
            raise BadRequestError(f"{', '.join(lacking)} not backed up to {repository!r}")
    if not dry_run and confirm != plan.name:
        raise BadRequestError(f"a recovery overwrites production: rerun with --confirm "
                              f"{plan.name} (look first with --dry-run)")
    for step in plan.steps:
        assert step.recover_to is not None
        if step.recover_to.path is not None:
            check_destination(config, step.recover_to.path, overwrite=True)
        elif not dry_run and config.targets[step.target].kind == "mysql":
            _refuse_unreplaceable_mysql(config, step)


def _refuse_unreplaceable_mysql(config: Config, step: PlanStep) -> None:
    """A MySQL database that holds anything cannot be put back (a bad request, before
    anything runs); a server that cannot be reached is the recovery's failure, later."""
    assert step.recover_to is not None and step.recover_to.dsn is not None
    with sandbox(config, f"recover-{step.target}", keep=False) as box:
        live = live_database("mysql", parse_dsn(step.recover_to.dsn.resolve(),
                                                what=f"recover_to of {step.target}"),
                             box.path, Limits.after(config.timeouts.restic))
        try:
            state = live.state()
        except ScratchError:
            return
        refuse_unreplaceable(live, state)


def _run_steps(config: Config, recorder: Recorder, plan: RecoveryPlan, result: RecoverResult,
               *, safety_copy: bool, workdir: Path) -> None:
    """Every safety copy first (a failed one overwrites nothing anywhere), then each step's
    restore in order, stopping at the first that fails."""
    if safety_copy:
        for step, planned in zip(plan.steps, result.steps, strict=True):
            if not _safety_copy(config, step, planned, workdir):
                result.error = f"step {planned.target}: {planned.error}"
                return
    for step, planned in zip(plan.steps, result.steps, strict=True):
        planned.status = "running"
        started = time.monotonic()
        assert step.recover_to is not None
        try:
            if step.recover_to.dsn is not None:
                restored = restore_database(
                    config, recorder, planned.target, into=step.recover_to.dsn.describe(),
                    repository=planned.repository, snapshot=planned.snapshot_id,
                    overwrite=True)
            else:
                restored = restore_target(
                    config, recorder, planned.target, to=Path(planned.destination),
                    repository=planned.repository, snapshot=planned.snapshot_id,
                    overwrite=True)
        except DrkitError as exc:
            planned.status, planned.error = "failed", describe(exc)
        else:
            planned.restore_record_id = restored.record_id
            planned.moved_aside = restored.moved_aside
            planned.status, planned.error = restored.status, restored.error
        planned.restore_s = time.monotonic() - started
        if planned.status != "succeeded":
            result.error = f"step {planned.target}: {planned.error}"
            return
    result.status = "succeeded"


def _repository(config: Config, step: PlanStep, chosen: str | None) -> str:
    repositories = config.holding(step.target)
    if chosen is not None:
        return chosen
    return step.repository if step.repository in repositories else repositories[0]


def _survey(config: Config, recorder: Recorder, step: PlanStep, at: datetime | None,
            repository: str | None, workdir: Path) -> RecoverStep:
    """Which snapshot the step takes, what at the destination it replaces, and the room its
    staging needs."""
    assert step.recover_to is not None
    planned = RecoverStep(target=step.target, repository=_repository(config, step, repository),
                          destination="")
    repo = restic_repository(config, planned.repository)
    identity = config.identity(step.target)
    limits = Limits.after(config.timeouts.restic)
    chosen, planned.chosen_by = newest_by(recorder, identity, planned.repository, at)
    snap, listing = list_snapshot(repo, identity, chosen.snapshot_id, limits=limits)
    planned.snapshot_id, planned.snapshot_time = snap.id, snap.time.isoformat()
    planned.needs_bytes = listing.total_bytes
    if step.recover_to.dsn is not None:
        _survey_database(config, step, planned, workdir, limits)
        return planned
    dest = step.recover_to.path
    assert dest is not None
    planned.destination = str(dest)
    planned.space_on = str(dest if dest.is_dir() else dest.parent)
    # Where the data is in the snapshot, as data_root finds it after restoring: under its one
    # backed-up directory, else at the top (a staged copy stored under its own name).
    one = snap.paths[0].rstrip("/") if len(snap.paths) == 1 else None
    base = one if one and any(n.get("path") == one and n.get("type") == "dir"
                              for n in listing.nodes) else ""
    top = sorted({str(n["path"])[len(base):].lstrip("/").split("/")[0] for n in listing.nodes
                  if str(n.get("path", "")).startswith(base + "/")} - {""})
    sidecars = sqlite_sidecars(config.targets[step.target])
    for name in top:
        for each in [name, *sidecars.get(name, [])]:
            path = dest / each
            if path.exists() or path.is_symlink():
                planned.replaces.append({"name": each, "type": _kind(path),
                                         "bytes": _size(path)})
            elif each == name:
                planned.adds.append(name)
    return planned


def _survey_database(config: Config, step: PlanStep, planned: RecoverStep, workdir: Path,
                     limits: Limits) -> None:
    """What the server holds under the database's name now (the dump is staged in the drill
    sandbox root: that is where room is needed)."""
    assert step.recover_to is not None and step.recover_to.dsn is not None
    kind = config.targets[step.target].kind
    dsn = parse_dsn(step.recover_to.dsn.resolve(), what=f"recover_to of {step.target}")
    live = live_database(kind, dsn, workdir / f"survey-{step.target}", limits)
    planned.destination, planned.database = dsn.describe(), live.name
    planned.space_on = str(sandbox_root(config))
    state = live.state()
    if state.exists:
        planned.replaces.append({"name": live.name, "type": "database",
                                 "bytes": state.bytes or 0, "objects": state.objects,
                                 "sessions": state.sessions,
                                 "how": "renamed aside, closed to connections"
                                 if isinstance(live, PostgresLive) else "loaded into"})
    else:
        planned.adds.append(f"database {live.name}")
    try:
        refuse_unreplaceable(live, state)
    except BadRequestError as exc:
        planned.problem = exc.message


def space_problems(steps: list[RecoverStep]) -> list[str]:
    """Filesystems without room for the staging of the steps that stage on them."""
    by_device: dict[int, tuple[str, int, list[str]]] = {}
    for step in steps:
        if step.space_on is None or step.needs_bytes is None:
            continue
        device = os.stat(step.space_on).st_dev
        where, needed, targets = by_device.get(device, (step.space_on, 0, []))
        by_device[device] = (where, needed + step.needs_bytes, [*targets, step.target])
    problems = []
    for where, needed, targets in by_device.values():
        free = shutil.disk_usage(where).free
        if needed * SPACE_MARGIN > free:
            problems.append(f"not enough space on the filesystem of {where} for "
                            f"{', '.join(targets)}: needs {human_bytes(needed)}, "
                            f"{human_bytes(free)} free")
    return problems


def _kind(path: Path) -> str:
    return "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"


def _size(path: Path) -> int:
    """Bytes under ``path`` (what can be read of a live tree: a file gone meanwhile counts 0)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def _safety_copy(config: Config, step: PlanStep, planned: RecoverStep, workdir: Path) -> bool:
    """Back up what the step is about to overwrite (a directory, or a dump of the database);
    False (the step failed, nothing overwritten) when that could not be done."""
    if not planned.replaces:
        return True
    assert step.recover_to is not None
    # Into the target's own first repository (not a copy repository, which only copies fill).
    repo = restic_repository(config, config.targets[step.target].repositories[0])
    started = time.monotonic()
    limits = Limits.after(config.timeouts.backup)
    action = f"safety copy of {planned.destination} before recovering {step.target}"
    try:
        if step.recover_to.dsn is not None:
            kind = config.targets[step.target].kind
            dsn = parse_dsn(step.recover_to.dsn.resolve(), what=f"recover_to of {step.target}")
            live = live_database(kind, dsn, workdir / f"safety-{step.target}", limits)
            target = config.targets[step.target]
            # The target's own dump tool: the version that dumps this server already.
            producer = live.dump_producer(getattr(target, "pg_dump_binary", "pg_dump")) \
                if isinstance(live, PostgresLive) else \
                live.dump_producer(mysql_dump_binary(cast(MysqlTarget, target)))
            extension = "dump" if kind == "postgres" else "sql"
            (workdir / f"stream-{step.target}").mkdir(mode=0o700)
            summary = backup_stream(
                repo, producer, filename=f"{live.name}.{extension}",
                tags=safety_tags(step.target), host=config.host, dry_run=False,
                action=action, workdir=workdir / f"stream-{step.target}", limits=limits)
        else:
            summary = commands.backup(
                repo, [planned.destination], tags=safety_tags(step.target), host=config.host,
                action=action, limits=limits)
    except DrkitError as exc:
        planned.status = "failed"
        planned.error = (f"no safety copy, nothing overwritten: {describe(exc)} "
                         "(--no-safety-copy recovers without one)")
        return False
    planned.safety_snapshot = summary.snapshot_id
    planned.safety_s = time.monotonic() - started
    log.info("recover %s: safety copy of %s is snapshot %s", step.target, planned.destination,
             (summary.snapshot_id or "")[:8])
    return True
