"""Deployments from the config: ``drkit serve`` serves them, ``drkit deploy`` registers them
on the site's work pool for workers (``drkit worker``).

One deployment per schedule (see :func:`drkit.jobs.schedule.declared_schedules`), named
``SITE.backup-TARGET``, ``SITE.check``, ``SITE.prune``, ``SITE.drill-PLAN``, ``SITE.report``
(Prefect forbids ``/`` in names). Each has a concurrency limit of 1, so two runs of one
deployment never overlap, whichever worker picks them up: a backup's extra runs wait (and are
then skipped, as late runs with a newer good backup), any other's are cancelled, so a slow run
never builds a queue. A host-bound backup goes to work queue ``host-NAME``, everything else to
``any``. Tags: ``drkit``, ``site:SITE`` (a restarted ``serve`` or a new ``deploy`` removes its
own site's deployments whose schedule is gone, and only those) and ``target:``,
``repository:``, ``plan:`` for filtering in the UI. Parameters carry names only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import DrkitError
from drkit.jobs.schedule import Schedule, declared_schedules

log = logging.getLogger("drkit.serve")


def site_tag(config: Config) -> str:
    return f"site:{config.site}"


def deployment_name(config: Config, schedule_name: str) -> str:
    return f"{config.site}.{schedule_name}"


def default_pool(config: Config) -> str:
    return f"drkit-{config.site}"


def build_deployments(config: Config, plans: dict[str, RecoveryPlan], *,
                      work_pool: str | None = None) -> list[tuple[Schedule, Any]]:
    """(schedule, RunnerDeployment) for every schedule in the config and the plans."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from drkit.flows.flows import FLOWS

    out = []
    for schedule in declared_schedules(config, plans):
        deployment = FLOWS[schedule.kind].to_deployment(
            name=deployment_name(config, schedule.name),
            schedules=[Cron(schedule.cron, timezone=config.timezone)],
            parameters=dict(schedule.parameters),
            description=schedule.description,
            tags=["drkit", site_tag(config), *schedule.labels],
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                if schedule.kind == "backup" else ConcurrencyLimitStrategy.CANCEL_NEW),
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=work_pool,
            work_queue_name=schedule.queue if work_pool else None,
        )
        out.append((schedule, deployment))
    return out


def remove_stale(config: Config, keep: set[str]) -> list[str]:
    """Delete this site's deployments whose schedule is gone from its config; return their
    names. Another site's deployments are never touched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    removed = []
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=["drkit", site_tag(config)])))
        for deployment in found:
            if deployment.name not in keep and deployment.name.startswith(f"{config.site}."):
                client.delete_deployment(deployment.id)
                removed.append(deployment.name)
    for name in removed:
        log.info("removed deployment %s (its schedule is no longer in the config)", name)
    return removed


def trigger_catch_up(config: Config, targets: list[str]) -> list[str]:
    """Start one run of each named target's backup deployment now; return the run names."""
    from prefect.deployments import run_deployment

    started = []
    for target in targets:
        run: Any = run_deployment(f"backup/{deployment_name(config, f'backup-{target}')}",
                                  timeout=0, tags=["catch-up"])
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
