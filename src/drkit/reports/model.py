"""The report model: what a reviewer reads for a period, computed from the catalog.

:func:`build_report` asks the catalog for aggregates (counts, each target's good backups per
repository, the few drill and check records) and turns them into per-plan, per-drill,
per-target and per-repository summaries (:mod:`drkit.reports.summaries`) plus control rows
(:mod:`drkit.reports.controls`). The period's records themselves are streamed by the
renderers (:func:`drkit.catalog.report_queries.period_records`), never held here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from drkit import __version__
from drkit.catalog import report_queries as q
from drkit.catalog.anomalies import Anomaly, anomalies
from drkit.catalog.capacity import Forecast, forecast
from drkit.catalog.chain import optional_time as iso
from drkit.catalog.inflight import utcnow
from drkit.catalog.remediation import items as remediation_items
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.reports import controls as ctl
from drkit.reports import summaries
from drkit.reports.rows import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_EVALUATED,
    Control,
    CopySummary,
    DrillPoint,
    DrillRow,
    PlanSummary,
    RecoveryRow,
    RepositorySummary,
    TargetSummary,
)

__all__ = ["COMPLIANT", "NON_COMPLIANT", "NOT_EVALUATED", "Control", "CopySummary",
           "DrillPoint", "DrillRow", "PlanSummary", "RecoveryRow", "Report",
           "RepositorySummary",
           "TargetSummary", "build_report"]


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
    drills: list[DrillRow] = field(default_factory=list)  # every drill of the period
    recoveries: list[RecoveryRow] = field(default_factory=list)  # real recoveries, restores
    remediations: list[dict[str, Any]] = field(default_factory=list)  # open, or of the period
    # Backups flagged as anomalies in the period, or still unacknowledged at its end.
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    # Each repository's size, growth and quota forecast at the period's end (and the sizes
    # measured in the period, for the chart).
    capacity: list[Forecast] = field(default_factory=list)
    # ``audit verify``'s verdict on the chain the report was built from (run first).
    audit: dict[str, Any] | None = None
    # The key that signs checkpoints: a reviewer checks signatures with it.
    evidence_key: dict[str, str] | None = None
    # The config and plans in force at the period's end (its `config` record), if recorded.
    config_in_force: dict[str, Any] | None = None
    last_seq: int | None = None  # the period's last record (what evidence must cover)
    drkit_version: str = __version__

    def add_evidence_control(self, config: Config) -> None:
        """``evidence_anchored``, judged on :attr:`audit` (set once verification ended)."""
        self.controls += ctl.with_references(ctl.evidence_controls(
            self.audit, self.last_seq, signing=config.evidence.signing_key is not None,
            bucket=config.evidence.bucket is not None))

    @property
    def evaluated(self) -> list[Control]:
        return [c for c in self.controls if c.status != NOT_EVALUATED]

    @property
    def verdict_line(self) -> str:
        """The report's first line: a broken chain first, then the controls."""
        if self.audit is not None and not self.audit.get("intact"):
            first = self.audit.get("first_break") or {}
            return (f"CHAIN BROKEN: audit verify found {len(self.audit.get('problems', []))} "
                    f"problem(s), first: {first.get('problem')}: {first.get('detail')}. "
                    "Nothing in this report can be relied on until that is explained.")
        bad, evaluated = self.non_compliant, self.evaluated
        skipped = len(self.controls) - len(evaluated)
        tail = f" ({skipped} not evaluated)" if skipped else ""
        if bad:
            return f"{len(bad)} of {len(evaluated)} evaluated controls non-compliant{tail}"
        return f"All {len(evaluated)} evaluated controls compliant{tail}"

    @property
    def records_in_period(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.totals.values())

    @property
    def non_compliant(self) -> list[Control]:
        return [c for c in self.controls if c.status == NON_COMPLIANT]

    def header_json(self) -> dict[str, Any]:
        """Everything but the records (which the renderers stream after this)."""
        return {
            "verdict": self.verdict_line,
            "audit": self.audit,
            "report": {"generated_at": iso(self.generated_at), "hostname": self.hostname,
                       "drkit_version": self.drkit_version, "filters": self.filters},
            "evidence_key": self.evidence_key,
            "config_in_force": self.config_in_force,
            "period": {"since": iso(self.since), "until": iso(self.until)},
            "chain": {"head_seq": self.chain_head_seq, "head_hash": self.chain_head_hash},
            "summary": {
                "records": self.records_in_period, "totals": self.totals,
                "plans": [p.to_json() for p in self.plans],
                "targets": [t.to_json() for t in self.targets],
                "repositories": [r.to_json() for r in self.repositories],
                "drills": [d.to_json() for d in self.drills],
                "recoveries": [r.to_json() for r in self.recoveries],
                "remediations": self.remediations,
                "anomalies": self.anomalies,
                "capacity": [f.to_json() for f in self.capacity],
            },
            "controls": [c.to_json() for c in self.controls],
        }


def _as_of(anomaly: Anomaly, end: datetime) -> dict[str, Any]:
    """An anomaly as it stood at the period's end: an acknowledgement made later is not
    shown (the report of a past period says the same thing whenever it is built)."""
    if anomaly.acknowledged_at is not None and anomaly.acknowledged_at > end:
        anomaly.acknowledged_by = anomaly.acknowledged_at = anomaly.ack_record = None
        anomaly.ack_reason = None
    return anomaly.to_json()


def build_report(session: Session, config: Config, plans: dict[str, RecoveryPlan],
                 scope: q.Scope, *, series: bool = False, now: datetime | None = None
                 ) -> Report:
    """Summaries and controls of ``scope`` from the catalog (``series``: also the exposure at
    each good backup, which the HTML charts draw)."""
    now = now or utcnow()
    head_seq, head_hash = q.chain_head(session)
    counts = q.counts_by_status(session, scope)
    totals: dict[str, dict[str, int]] = {}
    by_subject: dict[tuple[str, str], dict[str, int]] = {}
    for kind, subject, status, count in counts:
        totals.setdefault(kind, {})
        totals[kind][status] = totals[kind].get(status, 0) + count
        by_subject.setdefault((kind, subject or ""), {})[status] = count

    end = min(scope.until, now)  # as of when open exposures and overdue plans are judged
    plan_rows, drill_rows = summaries.plan_summaries(session, plans, scope, end)
    target_rows = summaries.target_summaries(session, config, plans, scope, by_subject, end,
                                             series)
    repo_rows = summaries.repository_summaries(session, config, scope, by_subject)
    found = remediation_items(session)
    last_seq = q.last_seq(session, scope)
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
        drills=drill_rows, recoveries=summaries.recovery_rows(session, scope),
        remediations=[i.to_json() for i in found if i.plan in {p.plan for p in plan_rows}
                      and (i.open_at(end) or scope.since <= (i.closed_at or end) <= end)],
        anomalies=[_as_of(a, end) for a in anomalies(session, until=end, from_chain=True)
                   if (scope.targets is None or a.target in scope.targets)
                   and (a.finished_at >= scope.since or a.acknowledged_at is None
                        or a.acknowledged_at > end)],
        capacity=[forecast(config, session, name, end) for name in config.repositories],
        controls=ctl.with_references(
            ctl.rpo_controls(target_rows) + ctl.rto_controls(plan_rows)
            + ctl.frequency_controls(plan_rows, end) + ctl.check_controls(repo_rows)
            + ctl.immutability_controls(config, repo_rows)
            + ctl.remediation_controls([p.plan for p in plan_rows], found, end)),
        last_seq=last_seq)
