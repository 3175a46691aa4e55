"""``status``: per target, the last good backup and its data's age, from the catalog alone.

Ages are measured from the **recovery point**, the last good backup's ``started_at``: the run
begins before the data is captured, so the newest recoverable data is at least that new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drkit.catalog import queries
from drkit.catalog.anomalies import Anomaly, anomalies
from drkit.catalog.chain import optional_time as _time
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan


@dataclass
class RepositoryStatus:
    repository: str
    last_success_at: datetime | None
    last_status: str | None
    last_error: str | None
    recovery_point_at: datetime | None = None  # the last good backup's started_at
    age_s: float | None = None       # this copy's age: now - its recovery point
    rpo_ok: bool | None = None       # this copy within the target's RPO objective

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository,
                "last_success_at": _time(self.last_success_at),
                "recovery_point_at": _time(self.recovery_point_at), "age_s": self.age_s,
                "rpo_ok": self.rpo_ok,
                "last_status": self.last_status, "last_error": self.last_error}


@dataclass
class TargetStatus:
    target: str
    last_success_at: datetime | None
    age_s: float | None              # the stalest copy's: now - its recovery point
    repositories: list[RepositoryStatus] = field(default_factory=list)
    recovery_point_at: datetime | None = None  # the stalest copy's (None: a copy has none)
    rpo_objective_s: float | None = None
    rpo_ok: bool | None = None
    last_check_status: str | None = None
    last_drill_status: str | None = None
    # Backups flagged as unlike the target's history that nobody acknowledged yet.
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Every repository has a good backup, its latest run succeeded, the RPO holds, and
        no anomaly is open."""
        return bool(self.repositories) and self.rpo_ok is not False and not self.anomalies \
            and all(r.last_success_at is not None and r.last_status == "succeeded"
                    for r in self.repositories)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "last_success_at": _time(self.last_success_at),
                "recovery_point_at": _time(self.recovery_point_at), "age_s": self.age_s,
                "rpo_objective_s": self.rpo_objective_s,
                "rpo_ok": self.rpo_ok, "last_check_status": self.last_check_status,
                "last_drill_status": self.last_drill_status, "healthy": self.healthy,
                "anomalies": [a.to_json() for a in self.anomalies],
                "repositories": [r.to_json() for r in self.repositories]}


@dataclass
class PlanStatus:
    plan: str
    rpo_objective_s: float
    rto_objective_s: float
    last_drill_at: datetime | None = None
    last_drill_status: str | None = None
    rpo_achieved_s: float | None = None
    rto_achieved_s: float | None = None
    drill_every_s: float | None = None   # the plan's drill_every
    overdue: bool = False                # no passed drill within drill_every

    @property
    def healthy(self) -> bool:
        """Never drilled or the last drill passed, and not overdue."""
        return self.last_drill_status in (None, "passed") and not self.overdue

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "rpo_objective_s": self.rpo_objective_s,
                "rto_objective_s": self.rto_objective_s,
                "drill_every_s": self.drill_every_s, "overdue": self.overdue,
                "last_drill_at": _time(self.last_drill_at),
                "last_drill_status": self.last_drill_status,
                "rpo_achieved_s": self.rpo_achieved_s, "rto_achieved_s": self.rto_achieved_s}


def plan_statuses(plans: dict[str, RecoveryPlan], catalog: Catalog,
                  now: datetime | None = None) -> list[PlanStatus]:
    """Each plan's objectives and its last drill; a plan with ``drill_every`` is overdue when
    no drill of it passed within that time (never drilled counts)."""
    now = now or utcnow()
    with catalog.read_session() as session:
        drills = queries.last_drills(session)
        passed = queries.last_passed_drills(session)
    out = []
    for name, plan in plans.items():
        status = PlanStatus(plan=name, rpo_objective_s=plan.objectives.rpo,
                            rto_objective_s=plan.objectives.rto,
                            drill_every_s=plan.drill_every)
        if plan.drill_every is not None:
            good = passed.get(name)
            status.overdue = good is None or \
                (now - good).total_seconds() > plan.drill_every
        last = drills.get(name)
        if last is not None:
            evidence = json.loads(last.evidence)
            status.last_drill_at = last.finished_at
            status.last_drill_status = last.status
            status.rpo_achieved_s = evidence.get("rpo_achieved_s")
            status.rto_achieved_s = evidence.get("rto_achieved_s")
        out.append(status)
    return out


def target_statuses(config: Config, catalog: Catalog, plans: dict[str, RecoveryPlan] | None = None,
                    now: datetime | None = None) -> list[TargetStatus]:
    """One :class:`TargetStatus` per declared target, in config order.

    A target's RPO objective is the tightest of the plans that restore it; ``rpo_ok`` compares
    each copy's age (since its recovery point, the last good backup's ``started_at``) with it,
    continuously, with no drill needed.
    """
    now = now or utcnow()
    plans = plans or {}
    with catalog.read_session() as session:
        states = queries.states_by_host(session, ("backup", "copy"), [
            (config.host_of(t), t, r) for t in config.targets for r in config.holding(t)])
        drills = queries.last_drills(session)
        checks = queries.last_checks(session)
        flagged = [a for a in anomalies(session) if a.open and a.target in config.targets
                   and a.host == config.host_of(a.target)]
    out = []
    for name in config.targets:
        repos = []
        for repo_name in config.holding(name):
            state = states.get((name, repo_name))
            repos.append(RepositoryStatus(
                repository=repo_name,
                last_success_at=state.last_success_at if state else None,
                last_status=state.last_status if state else None,
                last_error=state.last_error if state else None,
                recovery_point_at=state.recovery_point_at if state else None,
            ))
        successes = [r.last_success_at for r in repos if r.last_success_at is not None]
        stalest = min(successes) if successes else None
        covering = [plan for plan in plans.values()
                    if any(step.target == name for step in plan.steps)]
        rpo = min((plan.objectives.rpo for plan in covering), default=None)
        # Every copy counts: an off-site copy that stopped working breaches the RPO although
        # the primary is fresh. The target's age is its stalest copy's.
        for repo in repos:
            if repo.recovery_point_at is not None:
                repo.age_s = round((now - repo.recovery_point_at).total_seconds(), 3)
            repo.rpo_ok = None if rpo is None else (
                repo.age_s is not None and repo.age_s <= rpo)
        ages = [r.age_s for r in repos]
        age = None if not ages or any(a is None for a in ages) else \
            max(a for a in ages if a is not None)
        points = [r.recovery_point_at for r in repos]
        recovery_point = None if not points or None in points else \
            min(p for p in points if p is not None)
        drilled = [drills[plan.name] for plan in covering if plan.name in drills]
        last_drill = max(drilled, key=lambda d: d.finished_at) if drilled else None
        checked = [checks[r].status for r in config.holding(name) if r in checks]
        last_check = None if not checked else (
            "failed" if "failed" in checked else checked[-1])
        out.append(TargetStatus(
            target=name, last_success_at=stalest, age_s=age, repositories=repos,
            recovery_point_at=recovery_point, rpo_objective_s=rpo,
            rpo_ok=None if rpo is None else all(r.rpo_ok for r in repos),
            last_check_status=last_check,
            last_drill_status=last_drill.status if last_drill else None,
            anomalies=[a for a in flagged if a.target == name]))
    return out


@dataclass
class RepositoryCheckStatus:
    repository: str
    last_check_at: datetime | None
    last_check_status: str | None
    read_data_subset: str | None
    errors: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "last_check_at": _time(self.last_check_at),
                "last_check_status": self.last_check_status,
                "read_data_subset": self.read_data_subset, "errors": self.errors}


def repository_checks(config: Config, catalog: Catalog) -> list[RepositoryCheckStatus]:
    """Each repository's last check."""
    with catalog.read_session() as session:
        checks = queries.last_checks(session)
    out = []
    for name in config.repositories:
        last = checks.get(name)
        evidence = json.loads(last.evidence) if last else {}
        out.append(RepositoryCheckStatus(
            repository=name, last_check_at=last.finished_at if last else None,
            last_check_status=last.status if last else None,
            read_data_subset=evidence.get("read_data_subset"),
            errors=list(evidence.get("errors") or [])))
    return out


@dataclass
class EvidenceStatus:
    """Whether the chain's head is signed and anchored (with a signing key configured)."""

    head_seq: int
    checkpoint_seq: int | None
    anchored: str | None
    bucket: bool

    @property
    def healthy(self) -> bool:
        if self.checkpoint_seq is None or self.checkpoint_seq < self.head_seq:
            return False  # a run's checkpoint was not written
        anchored = self.anchored or ""
        return not self.bucket or (bool(anchored) and "NOT LOCKED" not in anchored)

    def to_json(self) -> dict[str, Any]:
        return {"head_seq": self.head_seq, "checkpoint_seq": self.checkpoint_seq,
                "anchored": self.anchored, "healthy": self.healthy}


def evidence_status(config: Config, catalog: Catalog) -> EvidenceStatus | None:
    """The newest checkpoint whose signature holds against the chain's head (where it was
    anchored as the catalog notes it; `audit verify` reads the bucket); None without a
    signing key."""
    if config.evidence.signing_key is None:
        return None
    import json

    from sqlalchemy import select

    from drkit.catalog.models import ChainHead, Checkpoint
    from drkit.signing import Verifier

    verifier = Verifier(config.evidence.public_key or "")
    with catalog.read_session() as session:
        head = session.get(ChainHead, 1)
        newest = None
        for row in session.scalars(select(Checkpoint).order_by(Checkpoint.seq.desc())
                                   .limit(20)):
            try:  # a row counts only if its signed payload says what its columns say
                data = json.loads(row.payload)
                if verifier.verify(row.payload.encode(), row.signature) and \
                        data["seq"] == row.seq and data["head_hash"] == row.head_hash:
                    newest = row
                    break
            except (ValueError, KeyError, TypeError):
                continue
    return EvidenceStatus(head_seq=head.seq if head else 0,
                          checkpoint_seq=newest.seq if newest else None,
                          anchored=newest.anchored if newest else None,
                          bucket=config.evidence.bucket is not None)
