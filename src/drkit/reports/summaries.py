"""Per-plan, per-drill, per-target and per-repository summaries of a period, from the catalog's
aggregates (:mod:`drkit.catalog.report_queries`)."""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from drkit.catalog import report_queries as q
from drkit.catalog.models import Record
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.reports.rows import (
    DRILL_STATUSES,
    RTO_STAGES,
    CopySummary,
    DrillPoint,
    DrillRow,
    PlanSummary,
    RecoveryRow,
    RepositorySummary,
    TargetSummary,
)


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def drill_row(record: Record, evidence: dict[str, Any]) -> DrillRow:
    """A drill record as a row of the Drills table (evidence of older drills may lack the
    stages, the completeness flag or the steps: shown as not recorded)."""
    steps = [s for s in evidence.get("steps") or [] if isinstance(s, dict)]
    stages = evidence.get("rto_stages") or {}
    repositories: list[str] = []
    for step in steps:
        if step.get("restore_s") is not None and step.get("repository") not in repositories:
            repositories.append(step["repository"])
    proofs = [s["proof"] for s in steps if isinstance(s.get("proof"), dict)]
    proved = bool(evidence.get("prove_checks")) or bool(proofs)
    return DrillRow(
        plan=record.plan or "", record_seq=record.seq, finished_at=record.finished_at,
        status=record.status, rpo_achieved_s=evidence.get("rpo_achieved_s"),
        rpo_complete=evidence.get("rpo_complete", True) is not False,
        rto_achieved_s=evidence.get("rto_achieved_s"),
        rto_stages={stage: stages.get(stage) for stage in RTO_STAGES},
        repositories=repositories,
        proofs=len(proofs) if proved else None,
        proofs_detected=sum(bool(p.get("detected")) for p in proofs) if proved else None,
        rpo_objective_s=evidence.get("rpo_objective_s"),
        rto_objective_s=evidence.get("rto_objective_s"),
        config_hash=getattr(record, "config_hash", None), record_id=record.id)


def plan_summaries(session: Session, plans: dict[str, RecoveryPlan], scope: q.Scope,
                   end: datetime) -> tuple[list[PlanSummary], list[DrillRow]]:
    """Each plan's drills of the period, and every drill as a row (in finishing order).

    ``end`` (the period's end, or now if sooner) is when a plan with ``drill_every`` is
    overdue if no drill of it passed within ``drill_every`` before (never drilled counts).
    """
    drills = [(r, json.loads(r.evidence)) for r in q.records_of_kind(session, scope, "drill")]
    names = [n for n in plans if scope.plans is None or n in scope.plans]
    names += sorted({r.plan or "" for r, _ in drills} - set(names))  # plans since removed
    last_passed = q.last_passed_drills(session, names, end)
    out = []
    for name in names:
        plan = plans.get(name)
        summary = PlanSummary(plan=name,
                              rpo_objective_s=plan.objectives.rpo if plan else None,
                              rto_objective_s=plan.objectives.rto if plan else None,
                              drill_every_s=plan.drill_every if plan else None,
                              last_passed_at=last_passed.get(name))
        if summary.drill_every_s is not None:
            summary.overdue = summary.last_passed_at is None or \
                (end - summary.last_passed_at).total_seconds() > summary.drill_every_s
        rpo_met = rto_met = 0
        rpos: list[float] = []
        rtos: list[float] = []
        for record, evidence in ((r, e) for r, e in drills if r.plan == name):
            rpo, rto = evidence.get("rpo_achieved_s"), evidence.get("rto_achieved_s")
            # The objective the drill was scored against (plans change; the record does not).
            rpo_goal = evidence.get("rpo_objective_s", summary.rpo_objective_s)
            rto_goal = evidence.get("rto_objective_s", summary.rto_objective_s)
            summary.drills += 1
            status = record.status if record.status in DRILL_STATUSES else "failed"
            setattr(summary, status, getattr(summary, status) + 1)
            if rpo is not None:
                rpos.append(rpo)
                # A drill that restored only some steps measured a lower bound: not met.
                rpo_met += rpo_goal is not None and rpo <= rpo_goal and \
                    evidence.get("rpo_complete", True) is not False
            if rto is not None:
                rtos.append(rto)
                rto_met += rto_goal is not None and rto <= rto_goal
            summary.points.append(DrillPoint(record.finished_at, record.status, rpo, rto,
                                             record.seq))
            summary.last_drill_at, summary.last_status = record.finished_at, record.status
        # A drill that never measured (it failed before restoring) did not meet the objective.
        summary.rpo_compliance_rate = _rate(rpo_met, summary.drills)
        summary.rto_compliance_rate = _rate(rto_met, summary.drills)
        if rpos:
            summary.rpo_worst_s, summary.rpo_median_s = max(rpos), statistics.median(rpos)
        if rtos:
            summary.rto_worst_s, summary.rto_median_s = max(rtos), statistics.median(rtos)
        out.append(summary)
    rows = sorted((drill_row(r, e) for r, e in drills), key=lambda d: (d.finished_at,
                                                                       d.record_seq))
    return out, rows


def _copy_summary(copy: q.CopyExposure, end: datetime, declared: bool) -> CopySummary:
    """One repository's figures; the exposure still open at ``end`` counts as one too."""
    row = CopySummary(repository=copy.repository, good_backups=copy.good_backups,
                      last_good_at=copy.last_good_at,
                      last_recovery_point_at=copy.recovery_point,
                      longest_exposure_s=copy.longest_s,
                      longest_exposure_ended_at=copy.longest_ended_at, declared=declared)
    if copy.recovery_point is not None:
        still_open = (end - copy.recovery_point).total_seconds()
        row.open_exposure_s = round(still_open, 3)
        if row.longest_exposure_s is None or still_open > row.longest_exposure_s:
            row.longest_exposure_s, row.longest_exposure_ended_at = still_open, end
    if row.longest_exposure_s is not None:
        row.longest_exposure_s = round(row.longest_exposure_s, 3)
    return row


def _worst_copy(summary: TargetSummary) -> None:
    """The target's exposure figures: its worst counted repository's. A repository with no
    good backup at all is the worst (the target's exposure is then unbounded: None)."""
    counted = [c for c in summary.by_repository if c.declared]
    if not counted:
        return
    if summary.without_backup:
        summary.worst_repository = summary.without_backup[0]
        return
    worst = max(counted, key=lambda c: c.longest_exposure_s or 0.0)
    stalest = min(counted, key=lambda c: c.last_recovery_point_at or datetime.max)
    summary.worst_repository = worst.repository
    summary.longest_rpo_exposure_s = worst.longest_exposure_s
    summary.longest_exposure_ended_at = worst.longest_exposure_ended_at
    summary.open_exposure_s = stalest.open_exposure_s
    summary.last_good_at = stalest.last_good_at
    summary.last_recovery_point_at = stalest.last_recovery_point_at


def target_summaries(session: Session, config: Config, plans: dict[str, RecoveryPlan],
                     scope: q.Scope, by_subject: dict[tuple[str, str], dict[str, int]],
                     end: datetime, series: bool) -> list[TargetSummary]:
    """Each target's backups of the period and its recovery point exposure, per repository
    and (the worst repository's) for the target; exposures still open are measured at
    ``end`` (the period's end, or now if sooner)."""
    names = [n for n in config.targets if scope.targets is None or n in scope.targets]
    names += sorted({s for k, s in by_subject if k == "backup"} - set(names))
    out = []
    for name in names:
        target = config.targets.get(name)
        declared = config.holding(name) if target else None
        rpo = min((p.objectives.rpo for p in plans.values()
                   if any(step.target == name for step in p.steps)), default=None)
        runs = by_subject.get(("backup", name), {})
        summary = TargetSummary(
            target=name, repositories=declared or [],
            rpo_objective_s=rpo, backups=sum(runs.values()),
            succeeded=runs.get("succeeded", 0),
            failed=sum(v for k, v in runs.items() if k != "succeeded"))
        for copy in q.copy_exposures(session, scope, name, declared, series=series).values():
            counted = declared is None or copy.repository in declared
            row = _copy_summary(copy, end, counted)
            summary.by_repository.append(row)
            if counted:
                summary.exposure_series += copy.series
                if row.open_exposure_s is not None:
                    summary.exposure_series.append((end, row.open_exposure_s))
            if target is None:  # a target no longer declared: the repositories it used
                summary.repositories.append(copy.repository)
        summary.exposure_series.sort()
        _worst_copy(summary)
        out.append(summary)
    return out


def repository_summaries(session: Session, config: Config, scope: q.Scope,
                         by_subject: dict[tuple[str, str], dict[str, int]]
                         ) -> list[RepositorySummary]:
    latest = q.latest_before_end(session, scope, "check", Record.repository)
    names = [n for n in config.repositories
             if scope.repositories is None or n in scope.repositories]
    out = []
    for name in names:
        checks = by_subject.get(("check", name), {})
        summary = RepositorySummary(
            repository=name, checks=sum(checks.values()),
            checks_passed=checks.get("passed", 0),
            checks_failed=sum(v for k, v in checks.items() if k != "passed"))
        record = latest.get(name)
        if record is not None:
            summary.last_check_at, summary.last_check_status = record.finished_at, record.status
            summary.posture = json.loads(record.evidence).get("posture")
        out.append(summary)
    return out


def recovery_rows(session: Session, scope: q.Scope) -> list[RecoveryRow]:
    """Every real recovery and restore of the period, in finishing order."""
    rows = []
    for kind in ("recover", "restore"):
        for record in q.records_of_kind(session, scope, kind):
            evidence = json.loads(record.evidence)
            destinations = ([str(s.get("destination")) for s in evidence.get("steps", [])]
                            if kind == "recover" else [str(evidence.get("destination"))])
            rows.append(RecoveryRow(
                kind=kind, subject=(record.plan if kind == "recover" else record.target) or "",
                record_seq=record.seq, finished_at=record.finished_at, status=record.status,
                actor=evidence.get("actor"), reason=evidence.get("reason"),
                destinations=destinations, rto_achieved_s=evidence.get("rto_achieved_s")))
    return sorted(rows, key=lambda row: row.record_seq)
