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

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drkit.config.models import Config
from drkit.drills.choose import choose_snapshot
from drkit.drills.plans import PlanStep, RecoveryPlan
from drkit.drills.restore import list_snapshot
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import SnapshotIdentity, os_actor, safety_tags
from drkit.jobs.common import Recorder, detect_restic_version, restic_repository
from drkit.jobs.restore import check_destination, restore_target, sqlite_sidecars
from drkit.restic import commands
from drkit.supervise import Limits

log = logging.getLogger("drkit.recover")


@dataclass
class RecoverStep:
    target: str
    repository: str
    destination: str
    snapshot_id: str | None = None
    chosen_by: str | None = None
    replaces: list[dict[str, Any]] = field(default_factory=list)  # what is there now
    adds: list[str] = field(default_factory=list)
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
    steps: list[RecoverStep] = field(default_factory=list)
    status: str = "failed"
    rto_achieved_s: float | None = None
    error: str | None = None
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rto_stages"] = {
            "safety_copy": round(sum(s.safety_s or 0.0 for s in self.steps), 3),
            "restore": round(sum(s.restore_s or 0.0 for s in self.steps), 3)}
        return data


def recover_plan(config: Config, recorder: Recorder, plan: RecoveryPlan, *, dry_run: bool,
                 confirm: str | None, safety_copy: bool = True,
                 reason: str | None = None) -> RecoverResult:
    """Recover (or, with ``dry_run``, show what recovering would replace)."""
    missing = [s.target for s in plan.steps if s.recover_to is None]
    if missing:
        raise BadRequestError(f"plan {plan.name!r} does not say where to recover "
                              f"{', '.join(missing)}: add recover_to: {{path: DIR}} to each "
                              "step")
    if not dry_run and confirm != plan.name:
        raise BadRequestError(f"a recovery overwrites production: rerun with --confirm "
                              f"{plan.name} (look first with --dry-run)")
    for step in plan.steps:
        assert step.recover_to is not None
        check_destination(config, step.recover_to.path, overwrite=True)
    recorder.catalog.start()
    result = RecoverResult(plan=plan.name, dry_run=dry_run, actor=os_actor(), reason=reason,
                           rto_objective_s=plan.objectives.rto)
    result.steps = [_survey(config, recorder, step) for step in plan.steps]
    if dry_run:
        result.status = "dry_run"
        return result
    handle = recorder.journal.open("recover", plan=plan.name,
                                   restic_version=detect_restic_version(config))
    clock = time.monotonic()
    try:
        for step, planned in zip(plan.steps, result.steps, strict=True):
            _recover_step(config, recorder, step, planned, safety_copy=safety_copy)
            if planned.status != "succeeded":
                result.error = f"step {planned.target}: {planned.error}"
                break
        else:
            result.status = "succeeded"
            result.rto_achieved_s = round(time.monotonic() - clock, 3)
    except KeyboardInterrupt:
        result.status, result.error = "interrupted", "interrupted by the user"
        raise
    finally:
        evidence = result.to_json()
        for key in ("status", "error", "record_id", "plan"):
            evidence.pop(key)
        record = recorder.catalog.get().finish_run(handle, status=result.status,
                                                   error=result.error, evidence=evidence)
        recorder.journal.close(handle)
        result.record_id = record.id
    return result


def _repository(config: Config, step: PlanStep) -> str:
    repositories = config.targets[step.target].repositories
    return step.repository if step.repository in repositories else repositories[0]


def _survey(config: Config, recorder: Recorder, step: PlanStep) -> RecoverStep:
    """Which snapshot the step takes and what at the destination it replaces."""
    assert step.recover_to is not None
    dest = step.recover_to.path
    planned = RecoverStep(target=step.target, repository=_repository(config, step),
                          destination=str(dest))
    repo = restic_repository(config, planned.repository)
    identity = SnapshotIdentity(config.host, step.target)
    limits = Limits.after(config.timeouts.restic)
    choice = choose_snapshot(recorder, repo, identity, None, "newest", limits)
    snap, listing = list_snapshot(repo, identity, choice.snapshot_id, limits=limits)
    planned.snapshot_id, planned.chosen_by = snap.id, choice.reason
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
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum((Path(root) / name).lstat().st_size
               for root, _dirs, files in os.walk(path) for name in files)


def _recover_step(config: Config, recorder: Recorder, step: PlanStep, planned: RecoverStep,
                  *, safety_copy: bool) -> None:
    dest = Path(planned.destination)
    repo = restic_repository(config, planned.repository)
    if safety_copy and planned.replaces:
        started = time.monotonic()
        try:
            summary = commands.backup(
                repo, [str(dest)], tags=safety_tags(step.target), host=config.host,
                action=f"safety copy of {dest} before recovering {step.target}",
                limits=Limits.after(config.timeouts.backup))
        except DrkitError as exc:
            planned.status = "failed"
            planned.error = f"no safety copy, nothing overwritten: {describe(exc)}"
            return
        planned.safety_snapshot = summary.snapshot_id
        planned.safety_s = time.monotonic() - started
        log.info("recover %s: safety copy of %s is snapshot %s", step.target, dest,
                 (summary.snapshot_id or "")[:8])
    started = time.monotonic()
    restored = restore_target(config, recorder, step.target, to=dest,
                              repository=planned.repository, snapshot=planned.snapshot_id,
                              overwrite=True)
    planned.restore_s = time.monotonic() - started
    planned.restore_record_id = restored.record_id
    planned.status, planned.error = restored.status, restored.error
