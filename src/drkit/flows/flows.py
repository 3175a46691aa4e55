"""Prefect flows and tasks: thin wrappers over the plain job functions.

Each task loads the config, runs one job function (which journals, records in the catalog and
notifies exactly as the CLI does) and turns a failed run into an exception, so the task run is
Failed in Prefect's UI. Only failures the job marks ``transient`` (storage unreachable,
repository locked) are retried, with the config's ``retries`` delays; a wrong password or a bad
config fails at once. Every attempt is a real run, so every attempt is a catalog record.

Flows are referenced by module path (``drkit.flows.flows.backup_flow``), so a Prefect worker
on any host with drkit installed can run them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run

from drkit.config.models import Config


class RunFailed(Exception):
    """A job ran and failed; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Prefect may persist results)
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[RunFailed], message: str, state: dict[str, Any]) -> RunFailed:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def retry_only_transient(_task: Any, _task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry a :class:`RunFailed` marked transient, nothing else."""
    data = state.data
    if not isinstance(data, BaseException):
        try:
            state.result()
        except BaseException as exc:  # only inspected, never swallowed silently
            data = exc
    return isinstance(data, RunFailed) and data.transient


def _config(path: str) -> Config:
    from drkit.config.loader import load_config

    return load_config(path)


@contextmanager
def _as_flow_run() -> Iterator[None]:
    """While a task works: the records it appends name the flow run and its deployment as
    their actor; afterwards, the signed checkpoint of what it appended."""
    from prefect.runtime import deployment

    from drkit.catalog.store import CURRENT_OWNER
    from drkit.identity import os_actor, pop_actor, push_actor

    name = deployment.name or "no deployment"
    push_actor(f"prefect flow run {flow_run.name} ({flow_run.id}), deployment {name}, "
               f"as {os_actor()}")
    owner = object()  # this task's catalogs: checkpointed and closed at its end
    token = CURRENT_OWNER.set(owner)
    try:
        yield
    finally:
        pop_actor()
        CURRENT_OWNER.reset(token)
        from drkit.jobs.evidence import finish

        finish(owner, close=True)


def _recorder(config: Config) -> Any:
    from drkit.jobs.common import Recorder

    return Recorder.for_config(config)


def _catalog_and_journal(config: Config) -> tuple[Any, Any]:
    from drkit.catalog.inflight import RunJournal
    from drkit.jobs.common import open_config_catalog

    journal = RunJournal(config.state_dir)
    return open_config_catalog(config, recover=journal), journal


def _retrying(task_fn: Any, config: Config) -> Any:
    retries = config.retries
    return task_fn.with_options(retries=retries.attempts,
                                retry_delay_seconds=[float(d) for d in retries.delays],
                                retry_condition_fn=retry_only_transient)


def _one_after_another(task_fn: Any, config: str, names: list[str]) -> list[Any]:
    """Run ``task_fn(config, name)`` for each name in turn (each takes its repository
    exclusively); raise :class:`RunFailed` naming every failure after all have run."""
    states = [task_fn(config, name, return_state=True) for name in names]
    failed = [s for s in states if not s.is_completed()]
    if failed:
        raise RunFailed("; ".join(str(s.message) for s in failed), transient=False)
    return [s.result() for s in states]


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
def backup_task(config_path: str, target: str, repositories: list[str]) -> list[dict[str, Any]]:
    """Back ``target`` up to ``repositories`` exactly as ``drkit backup`` does (one prepared
    copy for all of them); raise :class:`BackupFailed` with every run if any failed."""
    with _as_flow_run():
        from drkit.jobs.backup import backup_target
        from drkit.jobs.common import Recorder, detect_restic_version

        config = _config(config_path)
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


@flow(name="backup", flow_run_name=_backup_name, validate_parameters=True)
def backup_flow(config: str, target: str, repositories: list[str] | None = None
                ) -> list[dict[str, Any]]:
    """Back one target up to its repositories, then ping its healthcheck.

    Each attempt is one task that prepares the target once and backs that copy up to every
    repository still to do; repositories that failed for a transient reason (storage
    unreachable, locked) are tried again after ``retries.delays``, the others are final.
    """
    import time

    from drkit.errors import BadRequestError
    from drkit.jobs.backup import ping_failures

    settings = _config(config)
    if target not in settings.targets:
        raise BadRequestError(f"unknown target {target!r}")
    declared = settings.targets[target].repositories
    pending = [r for r in declared if repositories is None or r in repositories]
    if not pending:
        raise BadRequestError(f"target {target!r} is backed up to none of {repositories}")
    retries = settings.retries
    results: dict[str, dict[str, Any]] = {}
    for attempt in range(retries.attempts + 1):
        state = backup_task(config, target, pending, return_state=True)
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
    failures = {repo: str(run["error"]) for repo, run in results.items()
                if run["status"] != "succeeded"}
    ping_failures(settings, target, {**failures, **{  # a flagged backup pings a failure
        repo: "anomaly: " + "; ".join(run["anomaly"]) for repo, run in results.items()
        if run["status"] == "succeeded" and run.get("anomaly")}})
    if failures:
        raise RunFailed("; ".join(f"{r}: {m}" for r, m in failures.items()), transient=False)
    return list(results.values())


def _log() -> Any:
    from prefect.logging import get_run_logger

    return get_run_logger()


# --- copy -----------------------------------------------------------------------------------

@task(name="copy", task_run_name="copy into {repository}")
def copy_task(config_path: str, repository: str) -> list[dict[str, Any]]:
    """``drkit copy REPOSITORY``; raise :class:`RunFailed` when a target's copy failed."""
    with _as_flow_run():
        from drkit.jobs.copy import copy_repositories

        config = _config(config_path)
        runs = copy_repositories(config, _recorder(config), [repository])
        failed = [run for run in runs if run.status == "failed"]
        if failed:
            raise RunFailed("; ".join(f"copy {r.target} {r.source} -> {r.repository}: {r.error}"
                                      for r in failed),
                            transient=all(r.transient for r in failed))
        return [run.to_json() for run in runs]


@flow(name="copy", flow_run_name="copy into {repository}")
def copy_flow(config: str, repository: str) -> list[dict[str, Any]]:
    """Fill one copy repository from its source (what the catalog says is good, not copied
    before); transient failures are retried with the config's ``retries``."""
    result: list[dict[str, Any]] = _retrying(copy_task, _config(config))(config, repository)
    return result


# --- check ----------------------------------------------------------------------------------

@task(name="check", task_run_name="check {repository}")
def check_task(config_path: str, repository: str) -> dict[str, Any]:
    """``drkit check REPOSITORY``; raise :class:`RunFailed` when it did not pass."""
    with _as_flow_run():
        from drkit.jobs.check import run_checks

        config = _config(config_path)
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
def check_flow(config: str, repositories: list[str] | None = None) -> list[dict[str, Any]]:
    """Check repositories one after the other (each takes its repository exclusively)."""
    settings = _config(config)
    return _one_after_another(_retrying(check_task, settings), config,
                              repositories or list(settings.repositories))


# --- prune ----------------------------------------------------------------------------------

@task(name="prune", task_run_name="prune {target}")
def prune_task(config_path: str, target: str) -> list[dict[str, Any]]:
    """``drkit prune TARGET`` in each of its repositories."""
    with _as_flow_run():
        from drkit.jobs.prune import run_prunes

        config = _config(config_path)
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
def prune_flow(config: str, targets: list[str] | None = None) -> list[dict[str, Any]]:
    """Apply retention target by target (prune takes each repository exclusively)."""
    settings = _config(config)
    names = targets or [n for n, t in settings.targets.items() if t.retention]
    per_target = _one_after_another(_retrying(prune_task, settings), config, names)
    return [run for runs in per_target for run in runs]


# --- drill ----------------------------------------------------------------------------------

@task(name="drill", task_run_name="drill {plan}")
def drill_task(config_path: str, plan: str) -> dict[str, Any]:
    """``drkit drill PLAN``. Not retried: a failed or breached drill is the finding."""
    with _as_flow_run():
        from drkit.drills.plans import find_plan, load_plans
        from drkit.drills.runner import run_drill

        config = _config(config_path)
        result = run_drill(config, find_plan(load_plans(config), plan), _recorder(config))
        if result.status != "passed":
            raise RunFailed(f"drill {plan}: {result.status}"
                            + (f": {result.error}" if result.error else ""), transient=False)
        data: dict[str, Any] = result.to_json()
        return data


@flow(name="drill", flow_run_name="drill {plan}")
def drill_flow(config: str, plan: str) -> dict[str, Any]:
    """Rehearse one recovery plan."""
    result: dict[str, Any] = drill_task(config, plan)
    return result


# --- report ---------------------------------------------------------------------------------

@task(name="report", task_run_name="report {fmt} last {since}")
def report_task(config_path: str, since: str, fmt: str) -> dict[str, Any]:
    """``drkit report`` into the reports directory (and the evidence bucket, if set)."""
    with _as_flow_run():
        from drkit.drills.plans import load_plans
        from drkit.jobs.report import parse_period, run_report, scope_for

        config = _config(config_path)
        plans = load_plans(config)
        start, end = parse_period(since, None)
        catalog, _ = _catalog_and_journal(config)
        run = run_report(config, plans, catalog, scope_for(config, plans, start, end, plan_names=[],
                                                           target_names=[]),
                         fmt=fmt, output=None, interactive=False)
        if run.status != "succeeded":
            raise RunFailed(f"report: {run.error}", transient=False)
        return {"path": str(run.path), "records": run.records, "uploads": run.uploads,
                "non_compliant": [f"{c.control}:{c.subject}" for c in run.report.non_compliant]}


@flow(name="report", flow_run_name="report {fmt} last {since}")
def report_flow(config: str, since: str = "30d", fmt: str = "html") -> dict[str, Any]:
    """Write the compliance report for the last ``since``."""
    result: dict[str, Any] = report_task(config, since, fmt)
    return result


FLOWS: dict[str, Any] = {"backup": backup_flow, "copy": copy_flow, "check": check_flow,
                         "prune": prune_flow, "drill": drill_flow, "report": report_flow}
