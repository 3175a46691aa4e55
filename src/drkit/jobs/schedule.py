"""What runs when: every schedule declared in the config and the plans, and which targets
are overdue for a backup (the catch-up after downtime). Plain data, no Prefect: the flows
package turns these into deployments."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drkit.catalog import queries
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import BadRequestError


@dataclass(frozen=True)
class Schedule:
    """One scheduled job: a Prefect deployment named ``name`` running flow ``kind``."""

    kind: str  # backup | copy | check | prune | drill | report
    name: str
    cron: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def declared_schedules(config: Config, plans: dict[str, RecoveryPlan]) -> list[Schedule]:
    """Every schedule in the config (targets' backups, copies, checks, prune, report) and in
    the plans (drills), in a stable order."""
    out = []
    for name, target in config.targets.items():
        if target.schedule:
            out.append(Schedule("backup", f"backup-{name}", target.schedule,
                                {"target": name, "repositories": list(target.repositories)},
                                f"back up {name} to {', '.join(target.repositories)}"))
    for name, repo in config.repositories.items():
        if repo.copy_schedule and repo.copy_from:
            out.append(Schedule("copy", f"copy-{name}", repo.copy_schedule,
                                {"repository": name},
                                f"copy {repo.copy_from}'s good snapshots into {name}"))
    if config.checks and config.checks.schedule:
        out.append(Schedule("check", "check", config.checks.schedule,
                            {"repositories": list(config.repositories)},
                            f"check {', '.join(config.repositories)}"))
    pruned = [name for name, target in config.targets.items() if target.retention]
    if config.prune and config.prune.schedule and pruned:
        out.append(Schedule("prune", "prune", config.prune.schedule, {"targets": pruned},
                            f"apply retention to {', '.join(pruned)}"))
    for name, plan in plans.items():
        if plan.schedule:
            out.append(Schedule("drill", f"drill-{name}", plan.schedule, {"plan": name},
                                f"recovery drill {name}"))
    if config.reports and config.reports.schedule:
        out.append(Schedule("report", "report", config.reports.schedule, {},
                            "compliance report"))
    return out


def require_schedules(config: Config, plans: dict[str, RecoveryPlan]) -> list[Schedule]:
    """:func:`declared_schedules`; :class:`BadRequestError` when there is none at all."""
    found = declared_schedules(config, plans)
    if not found:
        raise BadRequestError(
            "nothing to schedule: no 'schedule:' on any target, plan, 'checks', 'prune' or "
            "'reports', and no copy_schedule, in the config")
    return found


def cron_interval(cron: str, timezone: str, now: datetime | None = None) -> float:
    """Seconds between the last time ``cron`` fired before ``now`` and the next time."""
    from croniter import croniter

    zone = zoneinfo.ZoneInfo(timezone)
    local = (now or utcnow()).replace(tzinfo=UTC).astimezone(zone)
    it = croniter(cron, local)
    following: datetime = it.get_next(datetime)
    it = croniter(cron, local)
    previous: datetime = it.get_prev(datetime)
    return (following - previous).total_seconds()


def overdue_targets(config: Config, catalog: Catalog, now: datetime | None = None) -> list[str]:
    """Scheduled targets whose last good backup (in any of their repositories, the oldest of
    those counts) is older than their schedule's interval, or that have none: each gets one
    catch-up run when ``serve`` starts, however many runs were missed."""
    now = now or utcnow()
    with catalog.read_session() as session:
        states = {(s.target, s.repository): s
                  for s in queries.backup_states(session, host=config.host)}
    overdue = []
    for name, target in config.targets.items():
        if not target.schedule:
            continue
        interval = cron_interval(target.schedule, config.timezone, now)
        successes = [states[(name, r)].last_success_at if (name, r) in states else None
                     for r in target.repositories]
        if any(s is None or (now - s).total_seconds() > interval for s in successes):
            overdue.append(name)
    return overdue
