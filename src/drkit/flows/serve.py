"""``drkit serve`` and ``drkit deploy``: every schedule in the config, through Prefect."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from typing import Any

from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import BadRequestError
from drkit.jobs.schedule import Schedule, overdue_targets, require_schedules

log = logging.getLogger("drkit.serve")


def _print_schedules(found: list[tuple[Schedule, Any]], where: str) -> None:
    print(f"{len(found)} deployments {where}:")
    for schedule, _ in found:
        print(f"  {schedule.kind}/{schedule.name:24s} {schedule.cron:16s} {schedule.description}")
    sys.stdout.flush()


def serve(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog, *,
          metrics: tuple[str, int] | None = None) -> int:
    """Serve every schedule until interrupted (Ctrl-C, SIGTERM). Without ``PREFECT_API_URL``
    an embedded server is started first and stopped at the end. ``metrics`` (address, port):
    also serve Prometheus metrics there, from the catalog at each scrape."""
    from drkit.flows.server import embedded_server, prefect_environment

    require_schedules(config, plans)  # before spending ~20 s starting a server
    with ExitStack() as stack:
        if metrics is not None:
            from drkit.jobs.metrics import serve_metrics

            url = stack.enter_context(serve_metrics(*metrics, lambda: (config, plans, catalog)))
            print(f"metrics: {url}", flush=True)
        api = os.environ.get("PREFECT_API_URL")
        if not api:
            server = stack.enter_context(embedded_server(config.state_dir))
            # Before Prefect is first imported: it reads its settings once, at import.
            os.environ.update(prefect_environment(server.home))
            os.environ["PREFECT_API_URL"] = server.api_url
            ui = server.url
        else:
            ui = api.removesuffix("/").removesuffix("/api")
        from drkit.flows.deployments import (
            api_errors,
            build_deployments,
            remove_stale,
            trigger_catch_up,
        )

        found = build_deployments(config, plans)
        with api_errors("register the deployments"):
            for _, deployment in found:
                deployment.apply()
            remove_stale(config, {deployment.name for _, deployment in found})
            scheduled = {s.parameters["target"] for s, _ in found if s.kind == "backup"}
            catch_up = trigger_catch_up([t for t in overdue_targets(config, catalog)
                                         if t in scheduled])
        print(f"Prefect UI: {ui}")
        _print_schedules(found, "served")
        if catch_up:
            print(f"catch-up backups queued: {', '.join(catch_up)}")
        print("serving; Ctrl-C or SIGTERM stops", flush=True)
        from prefect import serve as prefect_serve

        prefect_serve(*(deployment for _, deployment in found), print_starting_message=False)
    print("serve stopped", flush=True)
    return 0


def deploy(config: Config, plans: dict[str, RecoveryPlan], work_pool: str) -> int:
    """Register every schedule as a deployment on ``work_pool`` (created as a process pool if
    missing) of the Prefect server at ``PREFECT_API_URL``."""
    if not os.environ.get("PREFECT_API_URL"):
        raise BadRequestError("deploy needs a Prefect server: set PREFECT_API_URL "
                              "(e.g. http://prefect.internal:4200/api)",
                              hint="for a single machine, 'drkit serve' runs its own server")
    require_schedules(config, plans)
    from drkit.flows.deployments import (
        api_errors,
        build_deployments,
        ensure_work_pool,
        remove_stale,
    )

    found = build_deployments(config, plans, work_pool=work_pool)
    with api_errors("register the deployments"):
        if ensure_work_pool(work_pool):
            print(f"created process work pool {work_pool!r}")
        for _, deployment in found:
            deployment.apply(work_pool_name=work_pool)
        remove_stale(config, {deployment.name for _, deployment in found})
    _print_schedules(found, f"registered on work pool {work_pool!r}")
    print(f"run on each host (with drkit installed and {config.source} present):\n"
          f"  prefect worker start --pool {work_pool}")
    return 0
