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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drkit.catalog.chain import optional_time
from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.drills.plans import RecoveryPlan
from drkit.errors import DrkitError, describe
from drkit.identity import target_of
from drkit.notify import notify_failure
from drkit.restic.commands import Snapshot

log = logging.getLogger("drkit.check")


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
          rpos: dict[str, float], now: datetime, unusable: frozenset[str] = frozenset()
          ) -> list[Freshness]:
    """Freshness of every target/host ``listed`` (a repository's ``restic snapshots``), and
    of each declared target the repository should hold but does not. Snapshots whose id
    starts with one of ``unusable`` (this host's failed runs left them) do not count; nor do
    the ``retired_hosts``. A copy repository is judged by its ``max_snapshot_age`` only (it
    lags its source by the copy schedule)."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    newest: dict[tuple[str, str], list[datetime]] = {}
    for snap in listed:
        if snap.time > now:
            continue  # judged as of an earlier moment: what came later did not exist yet
        target = target_of(snap.tags)
        if target is None or snap.hostname in config.retired_hosts:
            continue  # safety copies and foreign snapshots carry no target tag
        if any(snap.id.startswith(bad) for bad in unusable):
            continue
        newest.setdefault((target, snap.hostname), []).append(snap.time)
    held = {target for target, _ in newest}
    for target in config.targets:  # declared here, and no host's snapshot of it at all
        if repository in config.holding(target) and target not in held:
            newest[(target, config.host_of(target))] = []
    default = config.repositories[repository].max_snapshot_age
    if config.repositories[repository].copy_from is not None:
        rpos = {}
    out = []
    for (target, host), times in sorted(newest.items()):
        latest = max(times) if times else None
        out.append(Freshness(
            repository=repository, target=target, host=host,
            newest_at=latest.replace(tzinfo=None) if latest else None, snapshots=len(times),
            age_s=round((now - latest).total_seconds(), 3) if latest else None,
            rpo_s=rpos.get(target, default)))
    return out


@dataclass
class FreshnessRun:
    """One repository's freshness verdict, as recorded (kind ``freshness``)."""

    repository: str
    status: str
    rows: list[Freshness]
    errors: list[str]
    record_id: int | None = None
    transient: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "status": self.status, "errors": self.errors,
                "record_id": self.record_id, "rows": [row.to_json() for row in self.rows]}


def record_freshness(config: Config, catalog: Catalog, repository: str,
                     listed: Sequence[Snapshot] | None, rpos: dict[str, float], *,
                     now: datetime | None = None, error: DrkitError | None = None
                     ) -> FreshnessRun:
    """Judge ``listed`` (None: the list could not be read, ``error`` says why) and record
    the verdict: ``passed``, or ``failed`` naming every stale target/host. Kept apart from
    the integrity check's verdict (a host that went silent is no damage to the data). A
    judgement as of another moment (``now``) is recorded as such (``as_of_asked``) and never
    taken for the current verdict (:func:`last_verdicts`)."""
    from drkit.catalog.inflight import utcnow
    from drkit.catalog.snapshots import failed_run_snapshots
    from drkit.catalog.store import NewRecord

    moment = now or utcnow()
    rows: list[Freshness] = []
    errors: list[str] = []
    if listed is None:
        errors.append(f"the snapshot list of {repository} could not be read: "
                      f"{describe(error) if error else 'not read'}")
    else:
        with catalog.read_session() as session:
            unusable = [snapshot for host in sorted({config.host, *config.site_hosts()})
                        for snapshot in failed_run_snapshots(session, repository=repository,
                                                             host=host)]
        rows = judge(config, repository, listed, rpos, moment, frozenset(unusable))
        errors = [row.describe() for row in rows if row.stale]
    status = "failed" if errors else "passed"
    started = utcnow()
    record = catalog.append(NewRecord(
        kind="freshness", status=status, repository=repository, started_at=started,
        finished_at=utcnow(), error="; ".join(errors)[:4000] or None,
        evidence={"as_of": moment, "as_of_asked": now is not None,
                  "rows": [row.to_json() for row in rows],
                  "errors": errors, "retired_hosts": list(config.retired_hosts)}))
    for problem in errors:
        log.error("freshness %s: %s", repository, problem)
    if errors:
        notify_failure(config, "freshness", status, repository=repository, errors=errors,
                       record_id=record.id)
    return FreshnessRun(repository=repository, status=status, rows=rows, errors=errors,
                        record_id=record.id,
                        transient=listed is None and bool(error and error.transient))


def last_verdicts(config: Config, catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Each repository's newest recorded freshness verdict of now by this host (its
    evidence, with ``status`` and ``finished_at``; judgements asked ``--as-of`` another
    moment do not count)."""
    import json

    from sqlalchemy import func, select

    from drkit.catalog.models import Record

    with catalog.read_session() as session:
        newest = (select(Record.repository, func.max(Record.seq).label("seq"))
                  .where(Record.kind == "freshness", Record.hostname == config.host,
                         Record.evidence.not_like('%"as_of_asked":true%'))
                  .group_by(Record.repository).subquery())
        found = session.execute(select(Record.repository, Record.status, Record.finished_at,
                                       Record.evidence)
                                .join(newest, Record.seq == newest.c.seq)).all()
    return {repository: {**json.loads(evidence), "status": status, "finished_at": finished}
            for repository, status, finished, evidence in found
            if repository in config.repositories}
