"""Prometheus metrics, from the catalog alone (the same functions as ``status --json``, so
the two always agree). ``drkit metrics`` prints the exposition format (for node_exporter's
textfile collector); ``drkit serve --metrics-port P`` serves it at ``/metrics``, computed
afresh at each scrape. Every series carries ``host`` (the config's host identity)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from drkit.catalog.inflight import utcnow
from drkit.config.models import Config
from drkit.errors import BadRequestError

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    from drkit.catalog.store import Catalog
    from drkit.drills.plans import RecoveryPlan

log = logging.getLogger("drkit.metrics")
_EPOCH = datetime(1970, 1, 1)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else (value - _EPOCH).total_seconds()


class _Families:
    """Gauges by name, created on first use, each with its label names."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.families: dict[str, GaugeMetricFamily] = {}

    def set(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        from prometheus_client.core import GaugeMetricFamily

        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = GaugeMetricFamily(name, doc, labels=["host", *labels])
            self.families[name] = family
        family.add_metric([self.host, *labels.values()], float(value))


def collect(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog,
            now: datetime | None = None) -> list[GaugeMetricFamily]:
    """Every drkit metric, as of ``now``."""
    from drkit.catalog.capacity import WINDOW_S, forecast, target_growth
    from drkit.jobs.freshness import last_verdicts
    from drkit.jobs.status import plan_statuses, repository_checks, target_statuses

    now = now or utcnow()
    out = _Families(config.host)
    for status in target_statuses(config, catalog, plans, now=now):
        t = status.target
        out.set("drkit_target_rpo_objective_seconds", "The target's RPO objective (the "
                "tightest plan restoring it).", status.rpo_objective_s, target=t)
        out.set("drkit_anomalies_open", "Backups flagged as anomalies, not acknowledged.",
                len(status.anomalies), target=t)
        out.set("drkit_target_healthy", "1 when status calls the target healthy.",
                int(status.healthy), target=t)
        for repo in status.repositories:
            r = repo.repository
            out.set("drkit_backup_last_success_timestamp_seconds", "When the last good "
                    "backup finished (Unix time).", _ts(repo.last_success_at), target=t,
                    repository=r)
            out.set("drkit_backup_recovery_point_timestamp_seconds", "The last good backup's "
                    "recovery point (its start, Unix time).", _ts(repo.recovery_point_at),
                    target=t, repository=r)
            out.set("drkit_backup_age_seconds", "Age of the newest recoverable data.",
                    repo.age_s, target=t, repository=r)
            if repo.rpo_ok is not None:
                out.set("drkit_backup_rpo_ok", "1 when the data's age is within the RPO.",
                        int(repo.rpo_ok), target=t, repository=r)
            out.set("drkit_backup_last_run_succeeded", "1 when the latest backup run "
                    "succeeded.", int(repo.last_status == "succeeded"), target=t, repository=r)
    for plan in plan_statuses(plans, catalog, now=now):
        p = plan.plan
        out.set("drkit_plan_rpo_objective_seconds", "The plan's RPO objective.",
                plan.rpo_objective_s, plan=p)
        out.set("drkit_plan_rto_objective_seconds", "The plan's RTO objective.",
                plan.rto_objective_s, plan=p)
        out.set("drkit_drill_last_timestamp_seconds", "When the last drill finished.",
                _ts(plan.last_drill_at), plan=p)
        if plan.last_drill_status is not None:
            out.set("drkit_drill_passed", "1 when the last drill passed.",
                    int(plan.last_drill_status == "passed"), plan=p)
        out.set("drkit_drill_rpo_achieved_seconds", "RPO achieved by the last drill.",
                plan.rpo_achieved_s, plan=p)
        out.set("drkit_drill_rto_achieved_seconds", "RTO achieved by the last drill.",
                plan.rto_achieved_s, plan=p)
        out.set("drkit_drill_overdue", "1 when no drill passed within drill_every.",
                int(plan.overdue), plan=p)
    for check in repository_checks(config, catalog):
        r = check.repository
        out.set("drkit_check_last_timestamp_seconds", "When the last check finished.",
                _ts(check.last_check_at), repository=r)
        if check.last_check_status is not None:
            out.set("drkit_check_passed", "1 when the last check passed.",
                    int(check.last_check_status == "passed"), repository=r)
        n, _, of = (check.read_data_subset or "").partition("/")
        if n.isdigit() and of.isdigit():
            out.set("drkit_check_read_data_slice", "The last read-data slice (n of "
                    "drkit_check_read_data_slices).", int(n), repository=r)
            out.set("drkit_check_read_data_slices", "Slices the data is read in.", int(of),
                    repository=r)

    with catalog.read_session() as session:
        growth = target_growth(session, config.host, now - timedelta(seconds=WINDOW_S),
                               list(config.targets))
        for (t, r), figures in growth.items():
            if t in config.targets:
                out.set("drkit_target_source_bytes", "What the newest good backup read.",
                        figures["source_bytes"], target=t, repository=r)
                out.set("drkit_target_added_bytes_30d", "Data the target's backups added to "
                        "the repository over 30 days.", figures["added_bytes"], target=t,
                        repository=r)
        for name, repository in config.repositories.items():
            found = forecast(config, session, name, now)
            out.set("drkit_repository_size_bytes", "Stored size (restic stats raw-data, "
                    "at the last check).", found.size, repository=name)
            out.set("drkit_repository_quota_bytes", "The declared quota.", repository.quota,
                    repository=name)
            out.set("drkit_repository_growth_bytes_per_day", "Growth over the last 30 days "
                    "(least squares).", found.growth_per_day, repository=name)
            out.set("drkit_repository_days_to_quota", "Days until the trend reaches the "
                    "quota.", found.days_to_quota, repository=name)
            out.set("drkit_repository_full_read_seconds", "A full check --read-data at the "
                    "measured read rate.", found.full_read_s, repository=name)
    for name, verdict in last_verdicts(config, catalog).items():
        out.set("drkit_freshness_checked_timestamp_seconds", "When the repository's own "
                "snapshot list was last judged.", _ts(verdict["finished_at"]), repository=name)
        out.set("drkit_freshness_passed", "1 when the last freshness judgement passed (0: a "
                "target/host was stale, or the snapshot list could not be read).",
                int(verdict["status"] == "passed"), repository=name)
        for row in verdict.get("rows", []):
            labels = {"repository": name, "target": str(row.get("target")),
                      "snapshot_host": str(row.get("host"))}
            newest = row.get("newest_at")
            out.set("drkit_freshness_newest_snapshot_timestamp_seconds", "The newest "
                    "snapshot of the target/host the repository holds (at the last judgement).",
                    _ts(datetime.fromisoformat(newest.removesuffix("Z")))
                    if isinstance(newest, str) else None, **labels)
            out.set("drkit_freshness_stale", "1 when the repository's newest snapshot of the "
                    "target/host was past its RPO at the last judgement.",
                    int(bool(row.get("stale"))), **labels)
    return list(out.families.values())


def registry(load: Any) -> CollectorRegistry:
    """A registry whose collector calls ``load()`` -> (config, plans, catalog) at each
    scrape and reports its metrics."""
    from prometheus_client.registry import Collector, CollectorRegistry

    class _Collector(Collector):
        def collect(self) -> Iterator[GaugeMetricFamily]:
            from prometheus_client.core import GaugeMetricFamily

            up = GaugeMetricFamily("drkit_up", "1 when the metrics could be read from the "
                                   "catalog at this scrape.", labels=["host"])
            host = ""
            try:
                config, plans, catalog = load()
                host = config.host
                families = collect(config, plans, catalog)
            except Exception as exc:  # one line, and a metric an alert can fire on
                from drkit.config.secrets import redact

                log.error("metrics: the catalog could not be read: %s: %s",
                          type(exc).__name__, redact(str(exc))[:300])
                up.add_metric([host], 0.0)
                yield up
                return
            up.add_metric([host], 1.0)
            yield up
            yield from families

    found = CollectorRegistry(auto_describe=False)
    found.register(_Collector())
    return found


@contextmanager
def serve_metrics(address: str, port: int, load: Any) -> Iterator[str]:
    """Serve ``/metrics`` on ``address:port`` (computed by ``load()`` at each scrape) until
    the context ends; yields its URL. A port that cannot be had is a bad request."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=address, registry=registry(load))
    except OSError as exc:
        raise BadRequestError(f"--metrics-port {port}: cannot listen on {address}:{port}: "
                              f"{exc.strerror or exc}") from None
    try:
        host = f"[{address}]" if ":" in address else address
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def exposition(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog) -> str:
    """The metrics in Prometheus' text exposition format."""
    from prometheus_client import generate_latest

    return generate_latest(registry(lambda: (config, plans, catalog))).decode("utf-8")
