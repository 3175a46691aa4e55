"""``status``: per target, the last good backup and its age, from the catalog alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drkit.catalog import queries
from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import Catalog
from drkit.config.models import Config


@dataclass
class RepositoryStatus:
    repository: str
    last_success_at: datetime | None
    last_status: str | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository,
                "last_success_at": _time(self.last_success_at),
                "last_status": self.last_status, "last_error": self.last_error}


@dataclass
class TargetStatus:
    target: str
    last_success_at: datetime | None
    age_s: float | None
    repositories: list[RepositoryStatus] = field(default_factory=list)
    rpo_objective_s: float | None = None
    rpo_ok: bool | None = None
    last_check_status: str | None = None
    last_drill_status: str | None = None

    @property
    def healthy(self) -> bool:
        """Every repository has a good backup and its latest run succeeded."""
        return bool(self.repositories) and all(
            r.last_success_at is not None and r.last_status == "succeeded"
            for r in self.repositories)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "last_success_at": _time(self.last_success_at),
                "age_s": self.age_s, "rpo_objective_s": self.rpo_objective_s,
                "rpo_ok": self.rpo_ok, "last_check_status": self.last_check_status,
                "last_drill_status": self.last_drill_status, "healthy": self.healthy,
                "repositories": [r.to_json() for r in self.repositories]}


def _time(value: datetime | None) -> str | None:
    return canonical_time(value) if value is not None else None


def target_statuses(config: Config, catalog: Catalog, now: datetime | None = None
                    ) -> list[TargetStatus]:
    """One :class:`TargetStatus` per declared target, in config order."""
    now = now or utcnow()
    with catalog.session() as session:
        states = {(s.target, s.repository): s for s in queries.backup_states(session)}
    out = []
    for name, target in config.targets.items():
        repos = []
        for repo_name in target.repositories:
            state = states.get((name, repo_name))
            repos.append(RepositoryStatus(
                repository=repo_name,
                last_success_at=state.last_success_at if state else None,
                last_status=state.last_status if state else None,
                last_error=state.last_error if state else None,
            ))
        successes = [r.last_success_at for r in repos if r.last_success_at is not None]
        newest = max(successes) if successes else None
        age = round((now - newest).total_seconds(), 3) if newest is not None else None
        out.append(TargetStatus(target=name, last_success_at=newest, age_s=age,
                                repositories=repos))
    return out
