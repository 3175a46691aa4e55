"""What a drill found: each step's result, the drill's, and who took part. Plain data the
runner fills and the catalog, the CLI and the reports read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.drills.checks import CheckResult
from drkit.drills.damage import Proof


@dataclass
class StepResult:
    target: str
    repository: str
    snapshot_id: str | None = None
    snapshot_time: datetime | None = None
    chosen_by: str | None = None  # why this snapshot: the catalog's newest good backup, or asked
    restore_s: float | None = None
    verify_s: float | None = None      # the restored tree against the snapshot's listing
    load_s: float | None = None        # database steps: loading the dump into scratch
    checks_s: float | None = None      # the plan's checks
    proof_s: float | None = None       # --prove-checks: damaging the copy, checking it again
    bytes_restored: int | None = None
    production_server: bool = False    # restored into a new database on production's server
    checks: list[CheckResult] = field(default_factory=list)
    proof: Proof | None = None         # --prove-checks: the checks against a damaged copy
    error: str | None = None
    started_at: datetime | None = None   # the timeline of the DR test report
    finished_at: datetime | None = None
    scratch_database: str | None = None  # database steps: where it was restored (dropped)

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "repository": self.repository,
            "snapshot_id": self.snapshot_id,
            "snapshot_time": canonical_time(self.snapshot_time) if self.snapshot_time else None,
            "chosen_by": self.chosen_by, "restore_s": _round(self.restore_s),
            "verify_s": _round(self.verify_s), "load_s": _round(self.load_s),
            "checks_s": _round(self.checks_s),
            "bytes_restored": self.bytes_restored, "error": self.error,
            "started_at": canonical_time(self.started_at) if self.started_at else None,
            "finished_at": canonical_time(self.finished_at) if self.finished_at else None,
            **({"scratch_database": self.scratch_database} if self.scratch_database else {}),
            **({"production_server": True} if self.production_server else {}),
            "checks": [check.to_json() for check in self.checks],
            **({"proof": self.proof.to_json(), "proof_s": _round(self.proof_s)}
               if self.proof is not None else {}),
        }


@dataclass(frozen=True)
class DrillContext:
    """Who took part and what was rehearsed: the DR test report an auditor asks for names
    them (``drill --scenario --approved-by --participant``; the plan's owner and scenario)."""

    scenario: str | None = None
    approved_by: str | None = None
    participants: tuple[str, ...] = ()
    owner: str | None = None
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "approved_by": self.approved_by,
                "participants": list(self.participants), "owner": self.owner,
                "actor": self.actor}


@dataclass
class DrillResult:
    plan: str
    status: str
    started_at: datetime
    finished_at: datetime
    rpo_objective_s: float
    rto_objective_s: float
    rpo_achieved_s: float | None
    rto_achieved_s: float | None
    steps: list[StepResult]
    error: str | None = None
    sandbox: str | None = None
    sandbox_kept: bool = False
    prove_checks: bool = False
    context: DrillContext | None = None
    next_due: datetime | None = None  # with drill_every: when the next passed drill is due
    record_id: int | None = None
    record_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan, "status": self.status,
            **(self.context.to_json() if self.context else {}),
            "next_due": canonical_time(self.next_due) if self.next_due else None,
            "started_at": canonical_time(self.started_at),
            "finished_at": canonical_time(self.finished_at),
            "rpo_objective_s": self.rpo_objective_s, "rpo_achieved_s": _round(self.rpo_achieved_s),
            "rto_objective_s": self.rto_objective_s, "rto_achieved_s": _round(self.rto_achieved_s),
            "rpo_met": _met(self.rpo_achieved_s, self.rpo_objective_s) and all(
                step.restore_s is not None for step in self.steps),
            "rto_met": _met(self.rto_achieved_s, self.rto_objective_s),
            "rpo_complete": bool(self.steps) and all(
                step.restore_s is not None for step in self.steps),
            "rto_stages": rto_stages(self.steps),
            "steps": [step.to_json() for step in self.steps], "error": self.error,
            "sandbox": self.sandbox, "sandbox_kept": self.sandbox_kept,
            "prove_checks": self.prove_checks,
            "record_id": self.record_id, "record_hash": self.record_hash,
        }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _met(achieved: float | None, objective: float) -> bool | None:
    return None if achieved is None else achieved <= objective


STAGES = (("restore", "restore_s"), ("verify", "verify_s"), ("database_load", "load_s"),
          ("checks", "checks_s"))


def rto_stages(steps: list[StepResult]) -> dict[str, float]:
    """Where the recovery time went, summed over the steps: restore, verify (the tree against
    the snapshot), database load, checks."""
    return {stage: round(sum(getattr(step, key) or 0.0 for step in steps), 3)
            for stage, key in STAGES}
