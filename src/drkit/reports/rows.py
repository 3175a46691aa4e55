"""The rows of a report: per-plan, per-drill, per-target (and per copy), per-repository
summaries and the control rows, each with its JSON form. Built by
:mod:`drkit.reports.summaries` and :mod:`drkit.reports.controls`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from drkit.catalog.chain import optional_time as iso

COMPLIANT, NON_COMPLIANT, NOT_EVALUATED = "compliant", "non_compliant", "not_evaluated"
# Drill statuses counted apart in a plan's summary; any other status counts as failed.
DRILL_STATUSES = ("passed", "breached", "failed", "interrupted", "checks_too_weak")
# Where a drill's recovery time went (the keys of its evidence's ``rto_stages``).
RTO_STAGES = ("restore", "verify", "database_load", "checks")


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
class DrillRow:
    """One drill of the period for the Drills table: its measures and where the time went."""

    plan: str
    record_seq: int
    finished_at: datetime
    status: str
    rpo_achieved_s: float | None
    rpo_complete: bool          # False: some steps were not restored, the RPO is a lower bound
    rto_achieved_s: float | None
    rto_stages: dict[str, float | None]   # RTO_STAGES -> seconds (None: not recorded)
    repositories: list[str]     # the repositories restored from, in step order
    proofs: int | None = None   # --prove-checks: steps whose checks met a damaged copy
    proofs_detected: int | None = None  # ... and failed on it, as they should
    # The objectives in force when it ran (recorded with it) and that config's hash.
    rpo_objective_s: float | None = None
    rto_objective_s: float | None = None
    config_hash: str | None = None
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished_at": iso(self.finished_at)}


@dataclass
class RecoveryRow:
    """A real recovery (``recover``) or restore (``restore``) of the period: kept apart from
    drills, which rehearse."""

    kind: str                   # "recover" | "restore"
    subject: str                # the plan recovered, or the target restored
    record_seq: int
    finished_at: datetime
    status: str
    actor: str | None
    reason: str | None
    destinations: list[str]
    rto_achieved_s: float | None  # a recovery's, from choosing snapshots to the last step

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
    checks_too_weak: int = 0  # checks that passed on data drkit damaged on purpose
    rpo_compliance_rate: float | None = None
    rto_compliance_rate: float | None = None
    rpo_worst_s: float | None = None
    rpo_median_s: float | None = None
    rto_worst_s: float | None = None
    rto_median_s: float | None = None
    last_drill_at: datetime | None = None
    last_status: str | None = None
    drill_every_s: float | None = None     # the plan's drill_every
    last_passed_at: datetime | None = None  # the newest passed drill before the period's end
    overdue: bool = False  # drill_every declared and no passed drill within it at the end
    points: list[DrillPoint] = field(default_factory=list)

    @property
    def unsuccessful(self) -> int:
        """Drills that did not restore and verify (failed, interrupted, checks too weak)."""
        return self.failed + self.interrupted + self.checks_too_weak

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_drill_at"] = iso(self.last_drill_at)
        data["last_passed_at"] = iso(self.last_passed_at)
        data["points"] = [p.to_json() for p in self.points]
        return data


@dataclass
class CopySummary:
    """One repository of a target: its good backups and recovery point exposure."""

    repository: str
    good_backups: int = 0                         # in the period
    last_good_at: datetime | None = None          # newest good backup before the period's end
    last_recovery_point_at: datetime | None = None  # ... its started_at
    longest_exposure_s: float | None = None       # the open exposure included
    longest_exposure_ended_at: datetime | None = None
    open_exposure_s: float | None = None          # since the recovery point, at the end
    declared: bool = True  # False: no longer a repository of the target (shown, not counted)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "last_good_at": iso(self.last_good_at),
                "last_recovery_point_at": iso(self.last_recovery_point_at),
                "longest_exposure_ended_at": iso(self.longest_exposure_ended_at)}


@dataclass
class TargetSummary:
    """One target; its exposure figures are its worst repository's (every copy counts)."""

    target: str
    repositories: list[str]
    rpo_objective_s: float | None
    backups: int = 0
    succeeded: int = 0
    failed: int = 0
    last_good_at: datetime | None = None  # the stalest copy's newest good backup
    last_recovery_point_at: datetime | None = None  # the stalest copy's recovery point
    longest_rpo_exposure_s: float | None = None
    longest_exposure_ended_at: datetime | None = None
    worst_repository: str | None = None  # the copy with the longest exposure, or with none
    checks_passed: int = 0
    checks_failed: int = 0
    open_exposure_s: float | None = None  # since the stalest recovery point, at the end
    by_repository: list[CopySummary] = field(default_factory=list)
    exposure_series: list[tuple[datetime, float]] = field(default_factory=list)

    @property
    def without_backup(self) -> list[str]:
        """Repositories of the target with no good backup before the period's end."""
        return [c.repository for c in self.by_repository
                if c.declared and c.last_recovery_point_at is None]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("exposure_series")
        data["last_good_at"] = iso(self.last_good_at)
        data["last_recovery_point_at"] = iso(self.last_recovery_point_at)
        data["longest_exposure_ended_at"] = iso(self.longest_exposure_ended_at)
        data["by_repository"] = [c.to_json() for c in self.by_repository]
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
    references: list[str] = field(default_factory=list)  # the frameworks' clauses it serves

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
