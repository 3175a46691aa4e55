"""Repository-side freshness, the dead man's switch: what the repositories themselves hold.

The catalog and the scheduler can both say all is well while a host's worker silently
stopped: nothing runs, so nothing fails. This reads each repository's own snapshot list
(every host's) and judges each target/host by its newest snapshot against the target's RPO
(the tightest of the plans restoring it), or the repository's ``max_snapshot_age`` for
targets no plan here restores (another host's). A declared target no host's snapshot of
which the repository holds counts as stale too. `drkit check` records it with every check
(and alone with `check --freshness`); `drkit status --freshness` shows it without recording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drkit.catalog.chain import optional_time
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.identity import target_of
from drkit.restic.commands import Snapshot


@dataclass(frozen=True)
class Freshness:
    """One target/host in one repository: its newest snapshot's age against the RPO."""

    repository: str
    target: str
    host: str
    newest_at: datetime | None
    snapshots: int
    age_s: float | None
    rpo_s: float | None

    @property
    def stale(self) -> bool:
        """Older than the RPO (or absent), where an RPO is declared."""
        return self.rpo_s is not None and (self.age_s is None or self.age_s > self.rpo_s)

    def describe(self) -> str:
        if self.newest_at is None:
            return (f"target {self.target} of host {self.host}: repository {self.repository} "
                    "holds no snapshot of it")
        return (f"target {self.target} of host {self.host}: the newest snapshot in "
                f"{self.repository} is {self.age_s:.0f} s old, allowed "
                f"{self.rpo_s:.0f} s old at most (has its worker stopped?)")

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "target": self.target, "host": self.host,
                "newest_at": optional_time(self.newest_at), "snapshots": self.snapshots,
                "age_s": self.age_s, "rpo_s": self.rpo_s, "stale": self.stale}


def target_rpos(plans: dict[str, RecoveryPlan]) -> dict[str, float]:
    """Each target's RPO: the tightest objective of the plans that restore it."""
    out: dict[str, float] = {}
    for plan in plans.values():
        for step in plan.steps:
            out[step.target] = min(out.get(step.target, plan.objectives.rpo),
                                   plan.objectives.rpo)
    return out


def judge(config: Config, repository: str, listed: Sequence[Snapshot],
          rpos: dict[str, float], now: datetime) -> list[Freshness]:
    """Freshness of every target/host ``listed`` (a repository's ``restic snapshots``), and
    of each of this host's targets the repository should hold but does not."""
    newest: dict[tuple[str, str], list[datetime]] = {}
    for snap in listed:
        target = target_of(snap.tags)
        if target is not None:  # safety copies and foreign snapshots carry no target tag
            newest.setdefault((target, snap.hostname), []).append(snap.time)
    held = {target for target, _ in newest}
    for target in config.targets:  # declared here, and no host's snapshot of it at all
        if repository in config.holding(target) and target not in held:
            newest[(target, config.host)] = []
    default = config.repositories[repository].max_snapshot_age
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    out = []
    for (target, host), times in sorted(newest.items()):
        latest = max(times) if times else None
        out.append(Freshness(
            repository=repository, target=target, host=host,
            newest_at=latest.replace(tzinfo=None) if latest else None, snapshots=len(times),
            age_s=round((now - latest).total_seconds(), 3) if latest else None,
            rpo_s=rpos.get(target, default)))
    return out
