"""Run a recovery drill: restore each step into a sandbox, verify it, score RPO and RTO.

RPO achieved = drill start - time of the oldest snapshot restored.
RTO achieved = drill start -> the moment the last check of the last step passed.
Status: ``passed`` (all checks passed, both objectives met), ``breached`` (checks passed, an
objective missed), ``failed`` (a restore or a check failed, or a step had no snapshot),
``checks_too_weak`` (with ``prove_checks``: a step's checks also passed on a copy drkit damaged
on purpose; the time that proof takes is not part of the RTO).
The sandbox is removed afterwards in every case (unless ``keep_sandbox``), also on Ctrl-C.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC

from drkit.catalog.inflight import RunHandle, utcnow
from drkit.config.models import Config
from drkit.drills.checks import CheckResult, StepContext, run_check
from drkit.drills.choose import choose_snapshot, recorded_fingerprints, step_repositories
from drkit.drills.damage import prove
from drkit.drills.databases import ScratchDatabase, open_scratch
from drkit.drills.plans import PlanStep, RecoveryPlan
from drkit.drills.restore import (
    compare_tree,
    data_root,
    ensure_space,
    list_snapshot,
    restore,
    restore_while_listing,
)
from drkit.drills.result import DrillContext, DrillResult, StepResult
from drkit.drills.sandbox import Sandbox, sandbox, sweep
from drkit.errors import DrkitError, describe
from drkit.jobs.common import Recorder, detect_restic_version, restic_repository
from drkit.notify import notify_failure
from drkit.supervise import Limits
from drkit.targets.sqlite import SqliteTarget

log = logging.getLogger("drkit.drill")


def score(steps: list[StepResult], *, failed: bool, rpo_achieved: float | None,
          rto_achieved: float | None, rpo: float, rto: float) -> str:
    """``passed`` / ``breached`` / ``failed``, exactly as the spec defines them."""
    if failed or rpo_achieved is None or rto_achieved is None or \
            not all(step.passed for step in steps):
        return "failed"
    if rpo_achieved > rpo or rto_achieved > rto:
        return "breached"
    return "passed"


def run_drill(config: Config, plan: RecoveryPlan, recorder: Recorder, *,
              snapshot: str | None = None, keep_sandbox: bool = False,
              prove_checks: bool = False, scenario: str | None = None,
              approved_by: str | None = None, participants: tuple[str, ...] = ()
              ) -> DrillResult:
    """Rehearse ``plan``; record the drill in the catalog and return its result.

    Each step restores the newest snapshot that the catalog recorded as a good backup of its
    target (by this deployment's host) in its repository; ``snapshot`` (an id prefix) picks
    that snapshot instead for the step whose target has it. The whole drill is bounded by
    the plan's ``timeout`` (default ``timeouts.drill``). Every step is tried, also after one
    failed, so that the evidence covers all of them. Interrupts (Ctrl-C, SIGTERM) are
    recorded as ``interrupted`` and re-raised after the sandbox is removed.
    ``prove_checks`` (or the plan's ``prove_checks``): after a step's checks passed, damage
    its restored copy and require them to fail (:mod:`drkit.drills.damage`).
    """
    prove_checks = prove_checks or plan.prove_checks
    recorder.catalog.start()  # the steps ask it which snapshots are good
    version = detect_restic_version(config)
    handle = recorder.journal.open("drill", plan=plan.name, restic_version=version)
    limits = Limits.after(plan.timeout or config.timeouts.drill)
    clock = time.monotonic()
    steps: list[StepResult] = []
    error: str | None = None
    interrupted = False
    last_pass: float | None = None
    box: Sandbox | None = None
    try:
        sweep(config, recorder.catalog.get())  # what drills killed earlier left behind
        with sandbox(config, plan.name, keep=keep_sandbox) as box:
            with recorder.catalog.get().read_session() as session:
                runs = [(step, repo, why) for step in plan.steps
                        for repo, why in step_repositories(config, session, plan, step)]
            for index, (step, repo_name, why) in enumerate(runs):
                steps.append(_run_step(config, recorder, step, repo_name, why, index, box,
                                       snapshot, plan.name, limits, prove_checks))
            if steps and all(s.passed for s in steps) and len(steps) == len(runs):
                last_pass = time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
        error = "interrupted by the user"
    except DrkitError as exc:
        error = describe(exc)
    except OSError as exc:  # the sandbox's disk or permissions: recorded, never a traceback
        error = f"drill stopped: {exc}"
    if box is not None and box.removal_error is not None and error is None:
        error = box.removal_error  # restored data left behind is a failure, never silent
    finished = utcnow()
    # RPO is what restoring the snapshots actually restored proved, also when a check
    # failed afterwards: the oldest snapshot that was restored.
    snapshot_times = [s.snapshot_time for s in steps
                      if s.snapshot_time is not None and s.restore_s is not None]
    rpo_achieved = None
    if snapshot_times:
        started_aware = handle.started_at.replace(tzinfo=UTC)
        rpo_achieved = max(0.0, (started_aware - min(snapshot_times)).total_seconds())
    # The proofs run after each step's checks passed; their time is not recovery time.
    proving = sum(s.proof_s or 0.0 for s in steps)
    rto_achieved = (last_pass - clock - proving) if last_pass is not None else None
    status = "interrupted" if interrupted else score(
        steps, failed=error is not None, rpo_achieved=rpo_achieved, rto_achieved=rto_achieved,
        rpo=plan.objectives.rpo, rto=plan.objectives.rto)
    if prove_checks and status in ("passed", "breached"):
        weak = [s for s in steps if s.proof is None or not s.proof.detected]
        if weak:
            breach = " (the drill also breached its objectives)" if status == "breached" else ""
            status = "checks_too_weak"
            error = "; ".join(
                f"step {s.target} ({s.repository}): checks cannot detect damage: "
                + (s.proof.describe() if s.proof else "no proof made") for s in weak) + breach
    if error is None and snapshot and len(steps) == len(plan.steps) and not any(
            (s.snapshot_id or "").startswith(snapshot) for s in steps):
        error = f"snapshot {snapshot!r} belongs to none of the plan's targets"
        status = "failed"
    if error is None:
        error = next((s.error for s in steps if s.error), None) or _first_failed_check(steps)
    from datetime import timedelta

    from drkit.identity import current_actor

    context = DrillContext(scenario=scenario or plan.scenario, approved_by=approved_by,
                           participants=tuple(participants), owner=plan.owner,
                           actor=current_actor())
    next_due = None
    if plan.drill_every is not None:  # a drill that did not pass leaves the next one due now
        next_due = finished + timedelta(seconds=plan.drill_every) \
            if status == "passed" else finished
    result = DrillResult(
        plan=plan.name, status=status, started_at=handle.started_at, finished_at=finished,
        rpo_objective_s=plan.objectives.rpo, rto_objective_s=plan.objectives.rto,
        rpo_achieved_s=rpo_achieved, rto_achieved_s=rto_achieved, steps=steps, error=error,
        sandbox=str(box.path) if box else None, sandbox_kept=keep_sandbox,
        prove_checks=prove_checks, context=context, next_due=next_due)
    _record(recorder, handle, result)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _first_failed_check(steps: list[StepResult]) -> str | None:
    for step in steps:
        for check in step.checks:
            if not check.passed:
                return f"step {step.target}: check '{check.name}' failed: {check.detail}"
    return None


def _record(recorder: Recorder, handle: RunHandle, result: DrillResult) -> None:
    evidence = result.to_json()
    for key in ("record_id", "record_hash", "status", "error", "plan"):
        evidence.pop(key, None)
    snapshots = ",".join(s.snapshot_id for s in result.steps if s.snapshot_id) or None
    record = recorder.catalog.get().finish_run(
        handle, status=result.status, error=result.error, evidence=evidence,
        snapshot_id=snapshots[:64] if snapshots else None, finished_at=result.finished_at)
    recorder.journal.close(handle)
    result.record_id = record.id
    result.record_hash = record.hash
    if result.status != "passed":
        notify_failure(recorder.config, "drill", result.status, plan=result.plan,
                       error=result.error, rpo_achieved_s=result.rpo_achieved_s,
                       rto_achieved_s=result.rto_achieved_s, run_id=handle.run_id,
                       record_id=record.id)


def _run_step(config: Config, recorder: Recorder, step: PlanStep, repo_name: str, why: str,
              index: int, box: Sandbox, wanted: str | None, plan_name: str,
              limits: Limits, prove_checks: bool = False) -> StepResult:
    result = StepResult(target=step.target, repository=repo_name, started_at=utcnow())
    try:
        return _restore_and_check(config, recorder, step, repo_name, why, index, box, wanted,
                                  plan_name, limits, prove_checks, result)
    finally:
        result.finished_at = utcnow()


def _restore_and_check(config: Config, recorder: Recorder, step: PlanStep, repo_name: str,
                       why: str, index: int, box: Sandbox, wanted: str | None,
                       plan_name: str, limits: Limits, prove_checks: bool,
                       result: StepResult) -> StepResult:
    target = config.targets[step.target]
    repo = restic_repository(config, repo_name)
    identity = config.identity(step.target)
    try:
        choice = choose_snapshot(recorder, repo, identity, wanted, step.pick, limits)
        result.chosen_by = f"{choice.reason}; {why}" if why else choice.reason
        result.snapshot_id = choice.snapshot_id
        into = box.path / f"{index:02d}-{step.target}"
        into.mkdir(mode=0o700)
        log.info("drill step %s: restoring snapshot %s from %s (%s)", step.target,
                 choice.snapshot_id[:8], repo_name, result.chosen_by)
        if choice.snapshot is None and choice.size is not None:
            ensure_space(into, choice.size)
            snap, listing, seconds = restore_while_listing(repo, identity, choice.snapshot_id,
                                                           into, limits=limits)
        else:  # asked for by id (listed already), or no size recorded: list it first
            snap, listing = (choice.snapshot, choice.listing) \
                if choice.snapshot is not None and choice.listing is not None \
                else list_snapshot(repo, identity, choice.snapshot_id, limits=limits)
            ensure_space(into, listing.total_bytes)
            seconds = restore(repo, snap.id, into, limits=limits)
        result.snapshot_id, result.snapshot_time = snap.id, snap.time
        result.bytes_restored = listing.total_bytes
        result.restore_s = seconds
    except DrkitError as exc:
        result.error = describe(exc)
        log.error("drill step %s: %s", step.target, result.error)
        return result
    stage = time.monotonic()
    result.checks.append(compare_tree(listing, into))
    result.verify_s = time.monotonic() - stage
    root = data_root(snap, into)
    default_db = root / target.path.name if isinstance(target, SqliteTarget) else None
    context = StepContext(data_dir=root, sandbox=box.path, snapshot_time=snap.time,
                          default_database=default_db, limits=limits,
                          fingerprints=recorded_fingerprints(recorder, snap.id, repo_name))
    scratch: ScratchDatabase | None = None
    try:
        if result.checks[0].passed and step.restore_into is not None:
            stage = time.monotonic()
            try:
                scratch, result.production_server = open_scratch(
                    step.restore_into, target, plan_name, box.path / f"{index:02d}-scratch",
                    allow_production_server=step.allow_production_server, limits=limits)
                dump = into / listing.files[0]["path"].lstrip("/")
                ref = step.restore_into.postgres or step.restore_into.mysql
                assert ref is not None
                box.will_create(scratch.kind, scratch.name,
                                ref.dsn.model_dump(mode="json", exclude_none=True))
                result.scratch_database = scratch.name
                scratch.create()
                scratch.restore(dump)
                where = " (on the production server, or one that could not be told apart "\
                    "from it: allow_production_server)" if result.production_server else ""
                result.checks.append(CheckResult(
                    name="restored into a scratch database", status="passed",
                    detail=f"{dump.name} -> {scratch.name}{where}"))
                dsn, env = scratch.check_access()
                context = replace(context, database=scratch, substitutions={"dsn": dsn},
                                  dsn_env=env)
            except DrkitError as exc:
                result.checks.append(CheckResult(name="restored into a scratch database",
                                                 status="failed", detail=describe(exc)))
            result.load_s = time.monotonic() - stage
        if all(check.passed for check in result.checks):
            stage = time.monotonic()
            for check in step.checks:
                outcome = run_check(check, context)
                result.checks.append(outcome)
                log.info("drill step %s: %s: %s (%s)", step.target, outcome.name,
                         outcome.status, outcome.detail)
            result.checks_s = time.monotonic() - stage
        if prove_checks and result.passed:
            stage = time.monotonic()
            restored = [into / str(node.get("path", "")).lstrip("/") for node in listing.files]
            result.proof = prove(step.checks, context, scratch, restored)
            with open(box.path / "DAMAGED-BY-PROVE-CHECKS.txt", "a", encoding="utf-8") as note:
                note.write(f"--prove-checks damaged this copy on purpose: step {step.target}: "
                           f"{result.proof.describe()}\n")
            result.proof_s = time.monotonic() - stage
            log.info("drill step %s: checks against a damaged copy: %s", step.target,
                     result.proof.describe())
    finally:
        if scratch is not None and box.scratch:
            try:
                scratch.drop()
                log.info("drill step %s: dropped scratch database %s", step.target,
                         scratch.name)
            except DrkitError as exc:
                box.drop_failed = True  # its marker stays: the next command drops it
                result.checks.append(CheckResult(name="scratch database dropped",
                                                 status="failed", detail=describe(exc)))
    return result
