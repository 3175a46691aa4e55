"""Deployments from the config: ``drkit serve`` serves them, ``drkit deploy`` registers them
on a work pool for ``prefect worker`` processes.

One deployment per schedule (see :func:`drkit.jobs.schedule.declared_schedules`), named
``backup-TARGET``, ``check``, ``prune``, ``drill-PLAN``, ``report``; each with a concurrency
limit of 1, so two runs of one target's backup (or of prune) never overlap, whichever worker
picks them up. Tags: ``drkit`` and ``drkit-config:<hash of the config path>``, so a restarted
``serve`` removes the deployments of schedules no longer in its config, and only those.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import DrkitError
from drkit.jobs.schedule import Schedule, declared_schedules

log = logging.getLogger("drkit.serve")


def config_tag(config: Config) -> str:
    return "drkit-config:" + hashlib.sha256(str(config.source).encode()).hexdigest()[:12]


def build_deployments(config: Config, plans: dict[str, RecoveryPlan], *,
                      work_pool: str | None = None) -> list[tuple[Schedule, Any]]:
    """(schedule, RunnerDeployment) for every schedule in the config and the plans."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from drkit.flows.flows import FLOWS

    out = []
    for schedule in declared_schedules(config, plans):
        deployment = FLOWS[schedule.kind].to_deployment(
            name=schedule.name,
            schedules=[Cron(schedule.cron, timezone=config.timezone)],
            parameters={"config": str(config.source), **schedule.parameters},
            description=schedule.description,
            tags=["drkit", config_tag(config)],
            concurrency_limit=1,
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=work_pool,
        )
        out.append((schedule, deployment))
    return out


def remove_stale(config: Config, keep: set[str]) -> list[str]:
    """Delete this config's deployments whose schedule is gone from it; return their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    removed = []
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=[config_tag(config)])))
        for deployment in found:
            if deployment.name not in keep:
                client.delete_deployment(deployment.id)
                removed.append(deployment.name)
    for name in removed:
        log.info("removed deployment %s (its schedule is no longer in the config)", name)
    return removed


def trigger_catch_up(targets: list[str]) -> list[str]:
    """Start one run of each named target's backup deployment now; return the run names."""
    from prefect.deployments import run_deployment

    started = []
    for target in targets:
        run: Any = run_deployment(f"backup/backup-{target}", timeout=0, tags=["catch-up"])
        started.append(str(run.name))
        log.info("catch-up: %s's last good backup is older than its schedule; one backup "
                 "queued now", target)
    return started


def ensure_work_pool(name: str) -> bool:
    """Create process work pool ``name`` if it does not exist; return whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(work_pool=WorkPoolCreate(
                name=name, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


@contextmanager
def api_errors(doing: str) -> Iterator[None]:
    """Turn Prefect client failures into one :class:`DrkitError` line."""
    import httpx

    try:
        yield
    except httpx.HTTPError as exc:
        raise DrkitError(f"cannot {doing}: Prefect API unreachable or refused ({exc})",
                         hint="check PREFECT_API_URL and that the server runs") from None
