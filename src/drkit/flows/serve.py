"""``drkit serve``, ``drkit deploy`` and ``drkit worker``: every schedule in the config,
through Prefect."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import ExitStack, suppress
from typing import Any

from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import BadRequestError, DrkitError
from drkit.jobs.schedule import Schedule, overdue_targets, require_schedules

log = logging.getLogger("drkit.serve")


def _print_schedules(found: list[tuple[Schedule, Any]], where: str) -> None:
    print(f"{len(found)} deployments {where}:")
    for schedule, deployment in found:
        queue = f" [{schedule.queue}]" if deployment.work_pool_name else ""
        print(f"  {schedule.kind}/{deployment.name:28s} {schedule.cron:16s} "
              f"{schedule.description}{queue}")
    sys.stdout.flush()


def _config_by_name(config: Config) -> None:
    """Flow runs find the config through ``$DRKIT_CONFIG`` (parameters carry names only)."""
    assert config.source is not None
    os.environ["DRKIT_CONFIG"] = str(config.source.resolve())


def serve(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog, *,
          metrics: tuple[str, int] | None = None, server_restarts: int = 3) -> int:
    """Serve every schedule until interrupted (Ctrl-C, SIGTERM). Without a Prefect API
    configured (``PREFECT_API_URL`` or the active Prefect profile) an embedded server is
    started first, watched (restarted up to ``server_restarts`` times if it dies, then serve
    stops with exit 1) and stopped at the end. ``metrics`` (address, port): also serve
    Prometheus metrics there, from the catalog at each scrape."""
    from drkit.flows.server import Watchdog, configured_api_url, embedded_server, serve_lock

    require_schedules(config, plans)  # before spending ~20 s starting a server
    elsewhere = sorted(f"{name} (host {config.host_of(name)})" for name in config.targets
                       if not config.runs_here(name))
    if elsewhere:
        raise BadRequestError(
            f"serve runs every schedule on this host ({config.host}), but targets run on "
            f"other hosts: {', '.join(elsewhere)}",
            hint="a site of several hosts runs on a work pool: 'drkit deploy' once, then "
                 "'drkit worker' on each host")
    _config_by_name(config)
    dog: Watchdog | None = None
    with ExitStack() as stack:
        if metrics is not None:
            from drkit.jobs.metrics import serve_metrics

            url = stack.enter_context(serve_metrics(*metrics, lambda: (config, plans, catalog)))
            print(f"metrics: {url}", flush=True)
        api = configured_api_url()
        if not api:
            stack.enter_context(serve_lock(config.state_dir / "prefect"))
            server = stack.enter_context(embedded_server(config.state_dir))
            # Before Prefect is first imported: it reads its settings once, at import.
            from drkit.flows.server import prefect_environment

            os.environ.update(prefect_environment(server.home))
            os.environ["PREFECT_API_URL"] = server.api_url
            ui = server.url
            dog = stack.enter_context(Watchdog(server, server_restarts))
        else:
            if "site" not in config.model_fields_set:
                log.warning("serving on the shared Prefect server %s as site 'default': "
                            "another config without its own 'site:' would overwrite these "
                            "deployments (set 'site:' in the config)", api)
            os.environ["PREFECT_API_URL"] = api
            ui = api.removesuffix("/").removesuffix("/api")
        from drkit.flows.deployments import (
            api_errors,
            build_deployments,
            remove_stale,
            trigger_catch_up,
        )
        from drkit.flows.slots import ensure_limits

        found = build_deployments(config, plans)
        with api_errors("register the deployments"):
            for _, deployment in found:
                deployment.apply()
            remove_stale(config, {deployment.name for _, deployment in found})
            ensure_limits(config, list(config.repositories))
            scheduled = {s.parameters["target"] for s, _ in found if s.kind == "backup"}
            catch_up = trigger_catch_up(config, [t for t in overdue_targets(config, catalog)
                                                 if t in scheduled])
        print(f"Prefect UI: {ui}")
        _print_schedules(found, "served")
        if catch_up:
            print(f"catch-up backups queued: {', '.join(catch_up)}")
        print("serving; Ctrl-C or SIGTERM stops", flush=True)
        from prefect import serve as prefect_serve

        while True:
            deaths = dog.deaths if dog is not None else 0
            handler = signal.getsignal(signal.SIGTERM)  # Prefect's runner replaces it
            try:
                prefect_serve(*(deployment for _, deployment in found),
                              print_starting_message=False)
                break
            except BaseException as exc:
                signal.signal(signal.SIGTERM, handler)
                if dog is not None:
                    with suppress(KeyboardInterrupt):  # the watchdog giving up signals too
                        dog.settle()  # the server died? then restarted, or serve must stop
                    if dog.failure is not None:
                        raise DrkitError(dog.failure) from None
                if isinstance(exc, KeyboardInterrupt):
                    break  # Ctrl-C or SIGTERM: the way serve stops
                if dog is None or dog.deaths == deaths:
                    raise
                log.warning("the Prefect runner stopped with the server (%s); serving "
                            "again", type(exc).__name__)
            finally:
                signal.signal(signal.SIGTERM, handler)
    if dog is not None and dog.failure is not None:
        raise DrkitError(dog.failure)
    print("serve stopped", flush=True)
    return 0


def _require_site(config: Config, doing: str) -> None:
    """What a shared Prefect server and a site of several hosts need from the config: its
    own ``site:`` (two configs without one would overwrite and clean up each other's
    deployments), one shared chain (no SQLite with several hosts), and a host for every
    scheduled target once any target names one (else it would wait for the deploying host)."""
    if "site" not in config.model_fields_set:
        raise BadRequestError(f"{doing} on a shared Prefect server needs 'site:' in the config "
                              f"(deployments are named, tagged and cleaned up by site; two "
                              f"configs without one would overwrite each other's)",
                              hint="add e.g. 'site: eu-1' to the config")
    hosts = config.site_hosts()
    if len(hosts) > 1 and config.catalog.startswith("sqlite"):
        raise BadRequestError(
            f"site {config.site!r} has {len(hosts)} hosts ({', '.join(hosts)}) but a SQLite "
            f"catalog: every host must append to one shared chain",
            hint="set 'catalog:' to a PostgreSQL URL (postgresql+psycopg://...) that every "
                 "host reaches")
    if doing == "serve":
        return  # serve runs every target here (it refuses other hosts' targets)
    bound = [name for name, target in config.targets.items() if target.host]
    unbound = [name for name, target in config.targets.items()
               if target.schedule and not target.host]
    if bound and unbound:
        raise BadRequestError(
            f"targets {', '.join(unbound)} name no 'host:' while {', '.join(bound)} do: their "
            f"backups would wait for a worker on {config.host}, the host running {doing}",
            hint="give every scheduled target its 'host:' (the machine its data is on)")


def _require_api() -> str:
    from drkit.flows.server import configured_api_url

    api = configured_api_url()
    if not api:
        raise BadRequestError("this needs a Prefect server: set PREFECT_API_URL (e.g. "
                              "http://prefect.internal:4200/api) or 'prefect config set "
                              "PREFECT_API_URL=...'",
                              hint="for a single machine, 'drkit serve' runs its own server")
    os.environ["PREFECT_API_URL"] = api
    return api


def deploy(config: Config, plans: dict[str, RecoveryPlan], work_pool: str | None) -> int:
    """Register every schedule as a deployment of the config's site on ``work_pool`` (default
    ``drkit-SITE``; created as a process pool if missing) of the configured Prefect server,
    and the repositories' global concurrency limits."""
    _require_api()
    require_schedules(config, plans)
    _require_site(config, "deploy")
    hosts = config.site_hosts()
    from drkit.flows.deployments import (
        api_errors,
        build_deployments,
        default_pool,
        ensure_work_pool,
        remove_stale,
    )
    from drkit.flows.slots import ensure_limits

    pool = work_pool or default_pool(config)
    found = build_deployments(config, plans, work_pool=pool)
    with api_errors("register the deployments"):
        if ensure_work_pool(pool):
            print(f"created process work pool {pool!r}")
        for _, deployment in found:
            deployment.apply(work_pool_name=pool)
        remove_stale(config, {deployment.name for _, deployment in found})
        ensure_limits(config, list(config.repositories))
    _print_schedules(found, f"of site {config.site!r} registered on work pool {pool!r}")
    queues = " ".join(f"--work-queue host-{h}" for h in hosts)
    print(f"run on each host ({', '.join(hosts)}), with drkit installed and the config there:\n"
          f"  drkit worker{'' if work_pool is None else f' --work-pool {pool}'}\n"
          f"or, with DRKIT_CONFIG=/path/to/drkit.yaml in its environment:\n"
          f"  prefect worker start --pool {pool} --work-queue host-<this host> "
          f"--work-queue any\n(queues: {queues} --work-queue any)")
    return 0


def worker(config: Config, work_pool: str | None, limit: int | None) -> int:
    """Become ``prefect worker start`` for this host: the site's pool, this host's queue and
    ``any``, ``DRKIT_CONFIG`` set to this config for the runs it starts."""
    _require_api()
    _require_site(config, "worker")
    from drkit.flows.deployments import default_pool

    pool = work_pool or default_pool(config)
    _config_by_name(config)
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
            "--work-queue", f"host-{config.host}", "--work-queue", "any",
            "--name", f"drkit-{config.site}-{config.host}"]
    if limit is not None:
        argv += ["--limit", str(limit)]
    print(f"worker of site {config.site!r} for host {config.host}: pool {pool!r}, queues "
          f"host-{config.host} and any", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached
