"""Prefect flows and tasks: thin wrappers over the plain job functions.

Each task loads the config, runs one job function (which journals, records in the catalog and
notifies exactly as the CLI does) and turns a failed run into an exception, so the task run is
Failed in Prefect's UI. Only failures the job marks ``transient`` (storage unreachable,
repository locked) are retried, with the config's ``retries`` delays; a wrong password or a bad
config fails at once. Every attempt is a real run, so every attempt is a catalog record.

Flows are referenced by module path (``drkit.flows.flows.backup_flow``), so a Prefect worker
on any host with drkit installed can run them. Their parameters carry names only: each host
finds its config itself (``$DRKIT_CONFIG``, which ``drkit worker`` and ``drkit serve`` set,
else ``./config/drkit.yaml``). While a task works, every repository lock also takes the
repository's Prefect global concurrency limit (:mod:`drkit.flows.slots`), drkit's log lines
go to the run's logs, and backups, drills and reports publish artifacts
(:mod:`drkit.flows.console`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from drkit.flows.common import (
    RunFailed,
    _as_flow_run,
    _catalog_and_journal,
    _config,
    _log,
    _one_after_another,
    _recorder,
    _retrying,
    _timed,
    retry_only_transient,
)

__all__ = ["FLOWS", "RunFailed", "retry_only_transient"]


# --- backup ---------------------------------------------------------------------------------

class BackupFailed(RunFailed):
    """Some of a target's backups failed; ``runs`` holds every run's outcome (JSON)."""

    def __init__(self, message: str, *, runs: list[dict[str, Any]]) -> None:
        super().__init__(message, transient=all(r["transient"] for r in runs
                                                if r["status"] != "succeeded"))
        self.runs = runs


def _backup_task_name() -> str:
    from prefect.runtime import task_run

    parameters = task_run.parameters
    return f"backup {parameters['target']} -> {', '.join(parameters['repositories'])}"


@task(name="backup", task_run_name=_backup_task_name)
def backup_task(config_path: str | None, target: str, repositories: list[str]
                ) -> list[dict[str, Any]]:
    """Back ``target`` up to ``repositories`` exactly as ``drkit backup`` does (one prepared
    copy for all of them); raise :class:`BackupFailed` with every run if any failed."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.jobs.backup import backup_target
        from drkit.jobs.common import Recorder, detect_restic_version

        runs = [run.to_json() for run in backup_target(
            config, Recorder.for_config(config), target, repositories=repositories, ping=False,
            restic_version=detect_restic_version(config))]
        failed = [r for r in runs if r["status"] != "succeeded"]
        if failed:
            raise BackupFailed("; ".join(f"backup {r['target']} -> {r['repository']}: {r['error']}"
                                         for r in failed), runs=runs)
        return runs


def _backup_name() -> str:
    parameters = flow_run.parameters
    repositories = parameters.get("repositories") or ["all repositories"]
    return f"backup {parameters['target']} -> {', '.join(repositories)}"


@task(name="late", task_run_name="late? {target}")
def late_task(config_path: str | None, target: str, repositories: list[str],
              scheduled_at: str) -> list[dict[str, Any]] | None:
    """No bursts: a run of a deployment whose target already has a good backup newer than
    the run's scheduled time is skipped, and recorded as such (``skip`` records)."""
    from datetime import datetime

    from drkit.jobs.schedule import record_skips, skip_reason

    config = _config(config_path)
    with _as_flow_run(config):
        due = datetime.fromisoformat(scheduled_at)
        catalog, _ = _catalog_and_journal(config)
        newer = skip_reason(config, catalog, target, repositories, due)
        if newer is None:
            return None
        ids = record_skips(config, catalog, target, due, newer, run=str(flow_run.id))
        _log().info("backup %s skipped: scheduled for %s, and a good backup newer than that "
                    "exists in %s (skip records %s)", target, scheduled_at,
                    ", ".join(newer), ", ".join(map(str, ids)))
        return [{"target": target, "repository": repo, "status": "skipped",
                 "snapshot_id": backup["snapshot_id"], "record_id": record_id,
                 "newer_backup": backup}
                for (repo, backup), record_id in zip(newer.items(), ids, strict=True)]


@flow(name="backup", flow_run_name=_backup_name, validate_parameters=True)
def backup_flow(target: str, repositories: list[str] | None = None,
                config: str | None = None) -> list[dict[str, Any]]:
    """Back one target up to its repositories, then ping its healthcheck.

    A run of a deployment that was due while nothing ran (a worker down) is skipped when a
    good backup newer than its scheduled time exists. Each attempt is one task that prepares
    the target once and backs that copy up to every repository still to do; repositories
    that failed for a transient reason (storage unreachable, locked) are tried again after
    ``retries.delays``, the others are final.
    """
    import time

    from prefect.runtime import deployment

    from drkit.errors import BadRequestError
    from drkit.flows.console import backup_artifact
    from drkit.jobs.backup import ping_failures

    settings = _config(config)
    if target not in settings.targets:
        raise BadRequestError(f"unknown target {target!r}")
    declared = settings.targets[target].repositories
    pending = [r for r in declared if repositories is None or r in repositories]
    if not pending:
        raise BadRequestError(f"target {target!r} is backed up to none of {repositories}")
    if deployment.id is not None:
        skipped = late_task(config, target, pending,
                            flow_run.scheduled_start_time.isoformat())
        if skipped is not None:
            backup_artifact(target, skipped)
            return skipped
    retries = settings.retries
    limit = settings.targets[target].timeout or settings.timeouts.backup
    attempt_task = _timed(backup_task, len(pending) * (limit + settings.lock_timeout))
    results: dict[str, dict[str, Any]] = {}
    for attempt in range(retries.attempts + 1):
        state = attempt_task(config, target, pending, return_state=True)
        outcome = state.result(raise_on_failure=False)
        runs = outcome.runs if isinstance(outcome, BackupFailed) else outcome
        if not isinstance(runs, list):  # the task itself broke (not a failed backup)
            raise RunFailed(f"backup {target}: {outcome}", transient=False)
        results.update({run["repository"]: run for run in runs})
        pending = [r["repository"] for r in runs
                   if r["status"] != "succeeded" and r["transient"]]
        if not pending or attempt == retries.attempts:
            break
        delay = float(retries.delays[min(attempt, len(retries.delays) - 1)])
        _log().info("backup %s -> %s failed for a transient reason; retrying in %.0f s",
                    target, ", ".join(pending), delay)
        time.sleep(delay)
    backup_artifact(target, list(results.values()))
    failures = {repo: str(run["error"]) for repo, run in results.items()
                if run["status"] != "succeeded"}
    ping_failures(settings, target, {**failures, **{  # a flagged backup pings a failure
        repo: "anomaly: " + "; ".join(run["anomaly"]) for repo, run in results.items()
        if run["status"] == "succeeded" and run.get("anomaly")}})
    if failures:
        raise RunFailed("; ".join(f"{r}: {m}" for r, m in failures.items()), transient=False)
    return list(results.values())


# --- copy -----------------------------------------------------------------------------------

@task(name="copy", task_run_name="copy into {repository}")
def copy_task(config_path: str | None, repository: str) -> list[dict[str, Any]]:
    """``drkit copy REPOSITORY``; raise :class:`RunFailed` when a target's copy failed."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.jobs.copy import copy_repositories

        runs = copy_repositories(config, _recorder(config), [repository])
        failed = [run for run in runs if run.status == "failed"]
        if failed:
            raise RunFailed("; ".join(f"copy {r.target} {r.source} -> {r.repository}: {r.error}"
                                      for r in failed),
                            transient=all(r.transient for r in failed))
        return [run.to_json() for run in runs]


@flow(name="copy", flow_run_name="copy into {repository}")
def copy_flow(repository: str, config: str | None = None) -> list[dict[str, Any]]:
    """Fill one copy repository from its source (what the catalog says is good, not copied
    before); transient failures are retried with the config's ``retries``."""
    settings = _config(config)
    declared = settings.repositories.get(repository)
    source = declared.copy_from if declared is not None else None
    copied = [t for t in settings.targets.values() if source in t.repositories]
    limit = sum((t.timeout or settings.timeouts.backup) for t in copied) or \
        settings.timeouts.backup  # targets are copied one after another
    result: list[dict[str, Any]] = _retrying(
        _timed(copy_task, limit + settings.lock_timeout), settings)(config, repository)
    return result


# --- check ----------------------------------------------------------------------------------

@task(name="check", task_run_name="check {repository}")
def check_task(config_path: str | None, repository: str) -> dict[str, Any]:
    """``drkit check REPOSITORY``; raise :class:`RunFailed` when it did not pass."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.jobs.check import run_checks

        catalog, journal = _catalog_and_journal(config)
        (run,) = run_checks(config, catalog, journal, [repository])
        if run.status != "passed":
            raise RunFailed(f"check {repository}: {'; '.join(run.errors)}",
                            transient=run.transient)
        result: dict[str, Any] = run.to_json()
        return result


def _check_name() -> str:
    return f"check {', '.join(flow_run.parameters.get('repositories') or ['all'])}"


@flow(name="check", flow_run_name=_check_name)
def check_flow(repositories: list[str] | None = None, config: str | None = None
               ) -> list[dict[str, Any]]:
    """Check repositories one after the other (each takes its repository exclusively)."""
    settings = _config(config)
    timed = _timed(check_task, settings.timeouts.check + settings.lock_timeout)
    return _one_after_another(_retrying(timed, settings), config,
                              repositories or list(settings.repositories))


# --- prune ----------------------------------------------------------------------------------

@task(name="prune", task_run_name="prune {target}")
def prune_task(config_path: str | None, target: str) -> list[dict[str, Any]]:
    """``drkit prune TARGET`` in each of its repositories."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.jobs.prune import run_prunes

        catalog, journal = _catalog_and_journal(config)
        runs = run_prunes(config, catalog, journal, [target])
        failed = [r for r in runs if r.status != "succeeded"]
        if failed:
            raise RunFailed("; ".join(f"prune {r.target} in {r.repository}: {r.error}"
                                      for r in failed),
                            transient=all(r.transient for r in failed))
        return [r.to_json() for r in runs]


def _prune_name() -> str:
    return f"prune {', '.join(flow_run.parameters.get('targets') or ['all'])}"


@flow(name="prune", flow_run_name=_prune_name)
def prune_flow(targets: list[str] | None = None, config: str | None = None
               ) -> list[dict[str, Any]]:
    """Apply retention target by target (prune takes each repository exclusively)."""
    settings = _config(config)
    names = targets or [n for n, t in settings.targets.items() if t.retention]
    most = max((len(settings.targets[n].repositories) for n in names), default=1)
    timed = _timed(prune_task, most * (settings.timeouts.prune + settings.lock_timeout))
    per_target = _one_after_another(_retrying(timed, settings), config, names)
    return [run for runs in per_target for run in runs]


# --- drill ----------------------------------------------------------------------------------

@task(name="drill", task_run_name="drill {plan}")
def drill_task(config_path: str | None, plan: str) -> dict[str, Any]:
    """``drkit drill PLAN``. Not retried: a failed or breached drill is the finding. Its
    table artifact either way; a ``drkit.drill.breached`` event when it did not pass."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.drills.plans import find_plan, load_plans
        from drkit.drills.runner import run_drill
        from drkit.flows.console import drill_artifact, drill_event

        result = run_drill(config, find_plan(load_plans(config), plan), _recorder(config))
        drill_artifact(result.to_json())
        drill_event(result.to_json(), config.site)
        if result.status != "passed":
            raise RunFailed(f"drill {plan}: {result.status}"
                            + (f": {result.error}" if result.error else ""), transient=False)
        data: dict[str, Any] = result.to_json()
        return data


@flow(name="drill", flow_run_name="drill {plan}")
def drill_flow(plan: str, config: str | None = None) -> dict[str, Any]:
    """Rehearse one recovery plan."""
    settings = _config(config)
    result: dict[str, Any] = _timed(drill_task, settings.timeouts.drill)(config, plan)
    return result


# --- report ---------------------------------------------------------------------------------

@task(name="report", task_run_name="report {fmt} last {since}")
def report_task(config_path: str | None, since: str, fmt: str) -> dict[str, Any]:
    """``drkit report`` into the reports directory (and the evidence bucket, if set)."""
    config = _config(config_path)
    with _as_flow_run(config):
        from drkit.drills.plans import load_plans
        from drkit.flows.console import report_artifact
        from drkit.jobs.report import parse_period, run_report, scope_for

        plans = load_plans(config)
        start, end = parse_period(since, None)
        catalog, _ = _catalog_and_journal(config)
        run = run_report(config, plans, catalog, scope_for(config, plans, start, end, plan_names=[],
                                                           target_names=[]),
                         fmt=fmt, output=None, interactive=False)
        if run.status != "succeeded":
            raise RunFailed(f"report: {run.error}", transient=False)
        summary = {"path": str(run.path), "records": run.records, "uploads": run.uploads,
                   "non_compliant": [f"{c.control}:{c.subject}"
                                     for c in run.report.non_compliant]}
        report_artifact(str(run.path), summary)
        return summary


@flow(name="report", flow_run_name="report {fmt} last {since}")
def report_flow(since: str = "30d", fmt: str = "html", config: str | None = None
                ) -> dict[str, Any]:
    """Write the compliance report for the last ``since``."""
    settings = _config(config)
    result: dict[str, Any] = _timed(report_task, settings.timeouts.restic)(config, since, fmt)
    return result


FLOWS: dict[str, Any] = {"backup": backup_flow, "copy": copy_flow, "check": check_flow,
                         "prune": prune_flow, "drill": drill_flow, "report": report_flow}
