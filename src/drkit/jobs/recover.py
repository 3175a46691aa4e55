"""``drkit recover PLAN``: the real recovery, following the plan's steps in order, each to its
declared production location (``recover_to: {path: DIR}``).

Guard rails: every step must declare ``recover_to``; ``--dry-run`` says exactly what would be
replaced (top-level entries with their sizes) and changes nothing; a real run needs
``--confirm PLAN``, first backs up what it is about to overwrite (a restic "safety copy" of
the destination, tagged ``drkit-safety=TARGET``, never taken for a backup) unless
``--no-safety-copy``, and stops at the first step that fails. Each step is a
:func:`drkit.jobs.restore.restore_target` with ``overwrite`` (verified in staging, then
renamed into place, what it replaces moved aside). The recovery is one ``recover`` record with
the actor, the reason, every step and the RTO achieved by the real recovery, by stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drkit.catalog.inflight import utcnow
from drkit.config.models import Config
from drkit.drills.choose import newest_by
from drkit.drills.plans import PlanStep, RecoveryPlan
from drkit.drills.restore import list_snapshot
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import SnapshotIdentity, os_actor, safety_tags
from drkit.jobs.common import Recorder, detect_restic_version, restic_repository
from drkit.jobs.locks import repository_lock
from drkit.jobs.restore import check_destination, restore_target, sqlite_sidecars
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.supervise import Limits

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
        result.steps = [_survey(config, recorder, step, at, repository) for step in plan.steps]
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
            result.steps = [_survey(config, recorder, step, at, repository)
                            for step in plan.steps]
            _run_steps(config, recorder, plan, result, safety_copy=safety_copy)
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
    databases = [s.target for s in plan.steps
                 if config.targets[s.target].kind in ("postgres", "mysql")]
    if databases:
        raise BadRequestError(f"plan {plan.name!r} has database steps ({', '.join(databases)})"
                              ": recovering a database into its server is not built yet",
                              hint="drkit restore TARGET --to DIR puts a dump where you say")
    missing = [s.target for s in plan.steps if s.recover_to is None]
    if missing:
        raise BadRequestError(f"plan {plan.name!r} does not say where to recover "
                              f"{', '.join(missing)}: add recover_to: {{path: DIR}} to each "
                              "step")
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
        check_destination(config, step.recover_to.path, overwrite=True)


def _run_steps(config: Config, recorder: Recorder, plan: RecoveryPlan, result: RecoverResult,
               *, safety_copy: bool) -> None:
    """Every safety copy first (a failed one overwrites nothing anywhere), then each step's
    restore in order, stopping at the first that fails."""
    if safety_copy:
        for step, planned in zip(plan.steps, result.steps, strict=True):
            if not _safety_copy(config, step, planned):
                result.error = f"step {planned.target}: {planned.error}"
                return
    for planned in result.steps:
        planned.status = "running"
        started = time.monotonic()
        try:
            restored = restore_target(
                config, recorder, planned.target, to=Path(planned.destination),
                repository=planned.repository, snapshot=planned.snapshot_id, overwrite=True)
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
            repository: str | None) -> RecoverStep:
    """Which snapshot the step takes and what at the destination it replaces."""

    assert step.recover_to is not None
    dest = step.recover_to.path
    planned = RecoverStep(target=step.target, repository=_repository(config, step, repository),
                          destination=str(dest))
    repo = restic_repository(config, planned.repository)
    identity = SnapshotIdentity(config.host, step.target)
    limits = Limits.after(config.timeouts.restic)
    chosen, planned.chosen_by = newest_by(recorder, identity, planned.repository, at)
    snap, listing = list_snapshot(repo, identity, chosen.snapshot_id, limits=limits)
    planned.snapshot_id, planned.snapshot_time = snap.id, snap.time.isoformat()
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


def _safety_copy(config: Config, step: PlanStep, planned: RecoverStep) -> bool:
    """Back up what the step is about to overwrite; False (the step failed, nothing
    overwritten) when that could not be done."""
    if not planned.replaces:
        return True
    dest = Path(planned.destination)
    # Into the target's own first repository (not a copy repository, which only copies fill).
    repo = restic_repository(config, config.targets[step.target].repositories[0])
    started = time.monotonic()
    try:
        summary = commands.backup(
            repo, [str(dest)], tags=safety_tags(step.target), host=config.host,
            action=f"safety copy of {dest} before recovering {step.target}",
            limits=Limits.after(config.timeouts.backup))
    except DrkitError as exc:
        planned.status = "failed"
        planned.error = (f"no safety copy, nothing overwritten: {describe(exc)} "
                         "(--no-safety-copy recovers without one)")
        return False
    planned.safety_snapshot = summary.snapshot_id
    planned.safety_s = time.monotonic() - started
    log.info("recover %s: safety copy of %s is snapshot %s", step.target, dest,
             (summary.snapshot_id or "")[:8])
    return True
