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
    # Which workers may run it: a host-bound backup only that host's ("host-NAME"), the rest
    # any host of the site ("any").
    queue: str = "any"
    labels: tuple[str, ...] = ()  # "target:NAME", "repository:NAME", "plan:NAME"


def declared_schedules(config: Config, plans: dict[str, RecoveryPlan]) -> list[Schedule]:
    """Every schedule in the config (targets' backups, copies, checks, prune, report) and in
    the plans (drills), in a stable order."""
    out = []
    for name, target in config.targets.items():
        if target.schedule:
            out.append(Schedule("backup", f"backup-{name}", target.schedule,
                                {"target": name, "repositories": list(target.repositories)},
                                f"back up {name} (host {config.host_of(name)}) to "
                                f"{', '.join(target.repositories)}",
                                queue=f"host-{config.host_of(name)}",
                                labels=(f"target:{name}", *(f"repository:{r}"
                                                            for r in target.repositories))))
    for name, repo in config.repositories.items():
        if repo.copy_schedule and repo.copy_from:
            out.append(Schedule("copy", f"copy-{name}", repo.copy_schedule,
                                {"repository": name},
                                f"copy {repo.copy_from}'s good snapshots into {name}",
                                labels=(f"repository:{name}", f"repository:{repo.copy_from}")))
    if config.checks and config.checks.schedule:
        out.append(Schedule("check", "check", config.checks.schedule,
                            {"repositories": list(config.repositories)},
                            f"check {', '.join(config.repositories)}",
                            labels=tuple(f"repository:{r}" for r in config.repositories)))
    pruned = [name for name, target in config.targets.items() if target.retention]
    if config.prune and config.prune.schedule and pruned:
        out.append(Schedule("prune", "prune", config.prune.schedule, {"targets": pruned},
                            f"apply retention to {', '.join(pruned)}",
                            labels=tuple(f"target:{t}" for t in pruned)))
    for name, plan in plans.items():
        if plan.schedule:
            out.append(Schedule("drill", f"drill-{name}", plan.schedule, {"plan": name},
                                f"recovery drill {name}",
                                labels=(f"plan:{name}", *dict.fromkeys(
                                    f"target:{step.target}" for step in plan.steps))))
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
        states = queries.states_by_host(session, ("backup",), [
            (config.host_of(t), t, r) for t in config.targets
            for r in config.targets[t].repositories])
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


def skip_reason(config: Config, catalog: Catalog, target: str, repositories: list[str],
                scheduled_at: datetime) -> dict[str, dict[str, Any]] | None:
    """No bursts: when every one of ``repositories`` already has a good backup of ``target``
    whose recovery point is at or after ``scheduled_at`` (a run that was due while nothing
    ran, picked up late), the newer backup in each; else None (the run backs up)."""
    due = scheduled_at.astimezone(UTC).replace(tzinfo=None) if scheduled_at.tzinfo \
        else scheduled_at
    with catalog.read_session() as session:
        states = queries.states_by_host(session, ("backup",), [
            (config.host_of(target), target, r) for r in repositories])
    newer = {}
    for repository in repositories:
        state = states.get((target, repository))
        if state is None or state.recovery_point_at is None or state.recovery_point_at < due:
            return None
        newer[repository] = {"snapshot_id": state.last_snapshot_id,
                             "recovery_point_at": state.recovery_point_at.isoformat() + "Z"}
    return newer


def record_skips(config: Config, catalog: Catalog, target: str, scheduled_at: datetime,
                 newer: dict[str, dict[str, Any]], *, run: str) -> list[int]:
    """One ``skip`` record per repository: the scheduled run that did not back up, and why."""
    from drkit.catalog.store import NewRecord

    now = utcnow()
    ids = []
    for repository, backup in newer.items():
        ids.append(catalog.append(NewRecord(
            kind="skip", status="skipped", started_at=now, finished_at=now, target=target,
            repository=repository, hostname=config.host_of(target),
            evidence={"scheduled_at": scheduled_at.astimezone(UTC).isoformat(), "run": run,
                      "reason": "a good backup newer than the run's scheduled time exists "
                                "(a late run is not replayed)", "newer_backup": backup})).id)
    return ids
