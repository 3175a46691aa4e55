"""The report model: what a reviewer reads for a period, computed from the catalog.

:func:`build_report` asks the catalog for aggregates (counts, gaps between good backups, the
few drill and check records) and turns them into per-plan, per-target and per-repository
summaries plus control rows. The period's records themselves are streamed by the renderers
(:func:`drkit.catalog.report_queries.period_records`), never held here.
"""

from __future__ import annotations

import json
import socket
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from drkit import __version__
from drkit.catalog import report_queries as q
from drkit.catalog.chain import optional_time as iso
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Record
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan

COMPLIANT, NON_COMPLIANT, NOT_EVALUATED = "compliant", "non_compliant", "not_evaluated"


@dataclass
class DrillPoint:
    """One drill as the charts and the plan table see it."""

    finished_at: datetime
    status: str
    rpo_achieved_s: float | None
    rto_achieved_s: float | None
    record_seq: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished_at": iso(self.finished_at)}


@dataclass
class PlanSummary:
    plan: str
    rpo_objective_s: float | None
    rto_objective_s: float | None
    drills: int = 0
    passed: int = 0
    breached: int = 0
    failed: int = 0
    interrupted: int = 0
    rpo_compliance_rate: float | None = None
    rto_compliance_rate: float | None = None
    rpo_worst_s: float | None = None
    rpo_median_s: float | None = None
    rto_worst_s: float | None = None
    rto_median_s: float | None = None
    last_drill_at: datetime | None = None
    last_status: str | None = None
    points: list[DrillPoint] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_drill_at"] = iso(self.last_drill_at)
        data["points"] = [p.to_json() for p in self.points]
        return data


@dataclass
class TargetSummary:
    target: str
    repositories: list[str]
    rpo_objective_s: float | None
    backups: int = 0
    succeeded: int = 0
    failed: int = 0
    last_good_at: datetime | None = None
    longest_rpo_exposure_s: float | None = None
    longest_exposure_ended_at: datetime | None = None
    checks_passed: int = 0
    checks_failed: int = 0
    open_exposure_s: float | None = None  # since the newest good backup, at the period's end
    exposure_series: list[tuple[datetime, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("exposure_series")
        data["last_good_at"] = iso(self.last_good_at)
        data["longest_exposure_ended_at"] = iso(self.longest_exposure_ended_at)
        return data


@dataclass
class RepositorySummary:
    repository: str
    checks: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    last_check_at: datetime | None = None
    last_check_status: str | None = None
    posture: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "last_check_at": iso(self.last_check_at)}


@dataclass
class Control:
    """One control row: what was required, of what, and whether the period met it."""

    control: str
    subject: str
    status: str
    detail: str
    counts: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    since: datetime
    until: datetime
    generated_at: datetime
    hostname: str
    chain_head_seq: int
    chain_head_hash: str
    filters: dict[str, list[str] | None]
    totals: dict[str, dict[str, int]]
    plans: list[PlanSummary]
    targets: list[TargetSummary]
    repositories: list[RepositorySummary]
    controls: list[Control]
    drkit_version: str = __version__

    @property
    def records_in_period(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.totals.values())

    @property
    def non_compliant(self) -> list[Control]:
        return [c for c in self.controls if c.status == NON_COMPLIANT]

    def header_json(self) -> dict[str, Any]:
        """Everything but the records (which the renderers stream after this)."""
        return {
            "report": {"generated_at": iso(self.generated_at), "hostname": self.hostname,
                       "drkit_version": self.drkit_version, "filters": self.filters},
            "period": {"since": iso(self.since), "until": iso(self.until)},
            "chain": {"head_seq": self.chain_head_seq, "head_hash": self.chain_head_hash},
            "summary": {
                "records": self.records_in_period, "totals": self.totals,
                "plans": [p.to_json() for p in self.plans],
                "targets": [t.to_json() for t in self.targets],
                "repositories": [r.to_json() for r in self.repositories],
            },
            "controls": [c.to_json() for c in self.controls],
        }


def build_report(session: Session, config: Config, plans: dict[str, RecoveryPlan],
                 scope: q.Scope, *, series: bool = False, now: datetime | None = None
                 ) -> Report:
    """Summaries and controls of ``scope`` from the catalog (``series``: also the per-backup
    gaps the HTML charts draw)."""
    now = now or utcnow()
    head_seq, head_hash = q.chain_head(session)
    counts = q.counts_by_status(session, scope)
    totals: dict[str, dict[str, int]] = {}
    by_subject: dict[tuple[str, str], dict[str, int]] = {}
    for kind, subject, status, count in counts:
        totals.setdefault(kind, {})
        totals[kind][status] = totals[kind].get(status, 0) + count
        by_subject.setdefault((kind, subject or ""), {})[status] = count

    plan_rows = _plan_summaries(session, plans, scope)
    target_rows = _target_summaries(session, config, plans, scope, by_subject, now, series)
    repo_rows = _repository_summaries(session, config, scope, by_subject)
    for target in target_rows:
        for repo in repo_rows:
            if repo.repository in target.repositories:
                target.checks_passed += repo.checks_passed
                target.checks_failed += repo.checks_failed
    return Report(
        since=scope.since, until=scope.until, generated_at=now, hostname=socket.gethostname(),
        chain_head_seq=head_seq, chain_head_hash=head_hash,
        filters={"plans": sorted(scope.plans) if scope.plans is not None else None,
                 "targets": sorted(scope.targets) if scope.targets is not None else None},
        totals=totals, plans=plan_rows, targets=target_rows, repositories=repo_rows,
        controls=(_rpo_controls(target_rows) + _rto_controls(plan_rows)
                  + _check_controls(repo_rows) + _immutability_controls(config, repo_rows)))


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _plan_summaries(session: Session, plans: dict[str, RecoveryPlan],
                    scope: q.Scope) -> list[PlanSummary]:
    drills = q.records_of_kind(session, scope, "drill")
    names = [n for n in plans if scope.plans is None or n in scope.plans]
    names += sorted({r.plan or "" for r in drills} - set(names))  # plans since removed
    out = []
    for name in names:
        plan = plans.get(name)
        summary = PlanSummary(plan=name,
                              rpo_objective_s=plan.objectives.rpo if plan else None,
                              rto_objective_s=plan.objectives.rto if plan else None)
        rpo_met = rto_met = 0
        rpos: list[float] = []
        rtos: list[float] = []
        for record in (r for r in drills if r.plan == name):
            evidence = json.loads(record.evidence)
            rpo, rto = evidence.get("rpo_achieved_s"), evidence.get("rto_achieved_s")
            # The objective the drill was scored against (plans change; the record does not).
            rpo_goal = evidence.get("rpo_objective_s", summary.rpo_objective_s)
            rto_goal = evidence.get("rto_objective_s", summary.rto_objective_s)
            summary.drills += 1
            if record.status in ("passed", "breached", "failed", "interrupted"):
                setattr(summary, record.status, getattr(summary, record.status) + 1)
            else:
                summary.failed += 1
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
    return out


def _target_summaries(session: Session, config: Config, plans: dict[str, RecoveryPlan],
                      scope: q.Scope, by_subject: dict[tuple[str, str], dict[str, int]],
                      now: datetime, series: bool) -> list[TargetSummary]:
    names = [n for n in config.targets if scope.targets is None or n in scope.targets]
    names += sorted({s for k, s in by_subject if k == "backup"} - set(names))
    gaps = q.backup_gaps(session, scope, names, series=series)
    end = min(scope.until, now)
    out = []
    for name in names:
        target = config.targets.get(name)
        rpo = min((p.objectives.rpo for p in plans.values()
                   if any(step.target == name for step in p.steps)), default=None)
        runs = by_subject.get(("backup", name), {})
        summary = TargetSummary(
            target=name, repositories=list(target.repositories) if target else [],
            rpo_objective_s=rpo, backups=sum(runs.values()),
            succeeded=runs.get("succeeded", 0),
            failed=sum(v for k, v in runs.items() if k != "succeeded"))
        gap = gaps.get(name)
        if gap is not None:
            summary.exposure_series = list(gap.series)
            summary.last_good_at = gap.last_good_at
            summary.longest_rpo_exposure_s = gap.longest_gap_s
            summary.longest_exposure_ended_at = gap.longest_gap_ended_at
            if gap.last_good_at is not None:
                # The wait since the newest good backup, still open at the period's end.
                still_open = (end - gap.last_good_at).total_seconds()
                summary.open_exposure_s = round(still_open, 3)
                summary.exposure_series = [*summary.exposure_series, (end, still_open)]
                if summary.longest_rpo_exposure_s is None or \
                        still_open > summary.longest_rpo_exposure_s:
                    summary.longest_rpo_exposure_s = still_open
                    summary.longest_exposure_ended_at = end
        if summary.longest_rpo_exposure_s is not None:
            summary.longest_rpo_exposure_s = round(summary.longest_rpo_exposure_s, 3)
        out.append(summary)
    return out


def _repository_summaries(session: Session, config: Config, scope: q.Scope,
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


def _rpo_controls(targets: list[TargetSummary]) -> list[Control]:
    out = []
    for t in targets:
        counts = {"backups": t.backups, "failed": t.failed,
                  "longest_rpo_exposure_s": t.longest_rpo_exposure_s}
        params = {"rpo_objective_s": t.rpo_objective_s}
        if t.rpo_objective_s is None:
            out.append(Control("backup_within_rpo", t.target, NOT_EVALUATED,
                               "no recovery plan declares an RPO for this target", counts, params))
        elif t.longest_rpo_exposure_s is None:
            out.append(Control("backup_within_rpo", t.target, NON_COMPLIANT,
                               "no good backup recorded", counts, params))
        else:
            ok = t.longest_rpo_exposure_s <= t.rpo_objective_s
            out.append(Control(
                "backup_within_rpo", t.target, COMPLIANT if ok else NON_COMPLIANT,
                f"longest time without a newer good backup {t.longest_rpo_exposure_s:.0f} s "
                f"{'within' if ok else 'exceeds'} the RPO of {t.rpo_objective_s:.0f} s",
                counts, params))
    return out


def _rto_controls(plans: list[PlanSummary]) -> list[Control]:
    out = []
    for p in plans:
        within = round((p.rto_compliance_rate or 0) * p.drills)
        counts = {"drills": p.drills, "within_rto": within, "passed": p.passed,
                  "breached": p.breached, "failed": p.failed + p.interrupted}
        params = {"rto_objective_s": p.rto_objective_s}
        if not p.drills:
            out.append(Control("drill_within_rto", p.plan, NON_COMPLIANT,
                               "no drill in the period", counts, params))
            continue
        ok = within == p.drills and p.failed + p.interrupted == 0
        out.append(Control(
            "drill_within_rto", p.plan, COMPLIANT if ok else NON_COMPLIANT,
            f"{within} of {p.drills} drills restored and verified within the RTO"
            + (f"; {p.failed + p.interrupted} failed" if p.failed + p.interrupted else ""),
            counts, params))
    return out


def _check_controls(repos: list[RepositorySummary]) -> list[Control]:
    out = []
    for r in repos:
        counts = {"checks": r.checks, "passed": r.checks_passed, "failed": r.checks_failed}
        params = {"last_check_at": iso(r.last_check_at)}
        if not r.checks:
            out.append(Control("repository_checked", r.repository, NON_COMPLIANT,
                               "no integrity check in the period", counts, params))
        elif r.last_check_status != "passed":
            out.append(Control("repository_checked", r.repository, NON_COMPLIANT,
                               "the latest check in the period failed", counts, params))
        else:
            out.append(Control("repository_checked", r.repository, COMPLIANT,
                               "the latest check in the period passed", counts, params))
    return out


def _immutability_controls(config: Config, repos: list[RepositorySummary]) -> list[Control]:
    out = []
    for r in repos:
        repo = config.repositories.get(r.repository)
        declared = repo.posture.model_dump() if repo is not None and repo.posture else None
        params = {"declared_posture": declared}
        posture = r.posture
        if posture is None:
            out.append(Control("storage_immutable", r.repository, NON_COMPLIANT,
                               "no storage posture evidence in the period (not S3, or no "
                               "check read it)", {}, params))
            continue
        locked = bool(posture.get("object_lock")) and posture.get("versioning") == "Enabled"
        detail = (f"object lock {posture.get('object_lock_mode') or 'on'} "
                  f"{posture.get('object_lock_days') or '?'} days, versioning enabled"
                  if locked else
                  f"object lock {'on' if posture.get('object_lock') else 'off'}, versioning "
                  f"{posture.get('versioning')}")
        out.append(Control("storage_immutable", r.repository,
                           COMPLIANT if locked else NON_COMPLIANT, detail,
                           {"checks_with_posture": 1}, {**params, "found": posture}))
    return out
