"""What a drill step restores: from which repositories (``repository: NAME | all | rotate``)
and which snapshot (``pick: newest`` or ``pick: {random_within: 30d}``, or ``--snapshot``).

Snapshots are chosen from the catalog's good backups, never from restic's ``latest``; each
choice comes with its reason, which the evidence keeps.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from drkit.catalog.inflight import utcnow
from drkit.drills.plans import PlanStep, RandomPick, RecoveryPlan
from drkit.drills.restore import (
    DrillError,
    Listing,
    NotThisTarget,
    SnapshotNotFound,
    list_snapshot,
)
from drkit.identity import SnapshotIdentity
from drkit.restic.commands import Snapshot
from drkit.restic.runner import ResticRepository
from drkit.supervise import Limits

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from drkit.catalog.snapshots import GoodSnapshot
    from drkit.config.models import Config
    from drkit.jobs.common import Recorder

log = logging.getLogger("drkit.drill")


def step_repositories(config: Config, session: Session, plan: RecoveryPlan,
                      step: PlanStep) -> list[tuple[str, str]]:
    """The repositories ``step`` restores from, each with why (empty: the plain case)."""
    from drkit.catalog import snapshots as known

    repositories = config.holding(step.target)  # its own repositories, then their copies
    if step.repository == "all":
        return [(name, f"repository: all ({index + 1} of {len(repositories)})")
                for index, name in enumerate(repositories)]
    if step.repository == "rotate":
        count = known.drill_count(session, plan.name)
        chosen = repositories[count % len(repositories)]
        return [(chosen, f"repository: rotate (drill #{count + 1} of this plan takes "
                         f"{chosen}, {count % len(repositories) + 1} of {len(repositories)})")]
    return [(step.repository or repositories[0], "")]


@dataclass(frozen=True)
class Choice:
    """The snapshot a step restores and why. A snapshot asked for with ``--snapshot`` is
    listed before it is restored (``snapshot``, ``listing``); one chosen from the catalog is
    listed while it is restored, and ``size`` (its backup's recorded size) is what the
    restore needs room for."""

    snapshot_id: str
    reason: str
    size: int | None = None
    snapshot: Snapshot | None = None
    listing: Listing | None = None


def choose_snapshot(recorder: Recorder, repo: ResticRepository, identity: SnapshotIdentity,
                    wanted: str | None, pick: str | RandomPick, limits: Limits) -> Choice:
    """The snapshot a step restores and why it was chosen."""
    from drkit.catalog import snapshots as known

    if wanted is not None:
        try:
            snapshot, listing = list_snapshot(repo, identity, wanted, limits=limits)
        except (NotThisTarget, SnapshotNotFound):
            pass  # --snapshot names another step's snapshot: this step takes the catalog's
        else:
            with recorder.catalog.get().read_session() as session:
                verdict = known.snapshot_verdict(session, snapshot.id)
            if verdict != "succeeded":
                log.warning("drill: snapshot %s was asked for; the catalog records its backup "
                            "as %s", snapshot.short_id, verdict or "unknown")
            return Choice(snapshot.id, f"--snapshot (backup recorded as {verdict or 'unknown'})",
                          snapshot=snapshot, listing=listing)
    if pick == "last_normal":
        chosen, reason = last_normal(recorder, identity, repo.name)
        return Choice(chosen.snapshot_id, reason,
                      size=recorded_size(recorder, chosen.snapshot_id, repo.name))
    window = pick.random_within if isinstance(pick, RandomPick) else None
    with recorder.catalog.get().read_session() as session:
        good = known.good_snapshots(
            session, target=identity.target, repository=repo.name, host=identity.host,
            since=None if window is None else utcnow() - timedelta(seconds=window),
            limit=1 if window is None else None)
    if not good:
        within = "" if window is None else f" within the last {window:.0f} s"
        raise DrillError(f"no good backup of {identity.describe()} in repository "
                         f"'{repo.name}'{within} is recorded in the catalog (has it been "
                         "backed up?)")
    if window is None:
        chosen, reason = good[0], f"the catalog's newest good backup, record {good[0].record_id}"
    else:
        chosen = secrets.choice(good)  # not predictable by whoever prepares for the drill
        reason = (f"picked at random among the {len(good)} good backups of the last "
                  f"{window:.0f} s, record {chosen.record_id} of "
                  f"{chosen.backed_up_at.isoformat(timespec='seconds')}")
    return Choice(chosen.snapshot_id, reason,
                  size=recorded_size(recorder, chosen.snapshot_id, repo.name))


def last_normal(recorder: Recorder, identity: SnapshotIdentity, repository: str
                ) -> tuple[GoodSnapshot, str]:
    """The good snapshot to go back to (:func:`drkit.catalog.anomalies.last_normal`) and
    why. Raises :class:`DrillError` when there is none."""
    from drkit.catalog.anomalies import last_normal as find

    with recorder.catalog.get().read_session() as session:
        chosen, why, _ = find(session, target=identity.target, repository=repository,
                              host=identity.host)
    if chosen is None:
        raise DrillError(f"no good backup of {identity.describe()} in repository "
                         f"'{repository}' precedes its anomalies (pick: last_normal)")
    return chosen, f"{why}: record {chosen.record_id} (pick: last_normal)"


def newest_by(recorder: Recorder, identity: SnapshotIdentity, repository: str,
              at: datetime | None) -> tuple[GoodSnapshot, str]:
    """The catalog's newest good backup of ``identity`` in ``repository`` (backed up by
    ``at`` when given), and why it was chosen. Raises :class:`DrillError` when none is."""
    from drkit.catalog import snapshots as known

    with recorder.catalog.get().read_session() as session:
        good = [g for g in known.good_snapshots(session, target=identity.target,
                                                repository=repository, host=identity.host)
                if at is None or g.backed_up_at <= at]
    by = f" completed by {at.isoformat()}Z" if at else ""
    if not good:
        raise DrillError(f"no good backup of {identity.describe()} in repository "
                         f"'{repository}'{by} is recorded in the catalog")
    return good[0], f"the catalog's newest good backup{by}, record {good[0].record_id}"


def recorded_size(recorder: Recorder, snapshot_id: str, repository: str) -> int | None:
    """The bytes the backup of ``snapshot_id`` read (what restoring it needs room for)."""
    from drkit.catalog import snapshots as known

    with recorder.catalog.get().read_session() as session:
        summary = known.backup_evidence(session, snapshot_id, repository).get(
            "restic_summary")
    size = summary.get("total_bytes_processed") if isinstance(summary, dict) else None
    return size if isinstance(size, int) else None


def recorded_fingerprints(recorder: Recorder, snapshot_id: str, repository: str
                          ) -> dict[str, dict[str, Any]] | None:
    """The fingerprints taken when ``snapshot_id`` was backed up, if any were."""
    from drkit.catalog import snapshots as known

    with recorder.catalog.get().read_session() as session:
        found = known.backup_evidence(session, snapshot_id, repository).get("fingerprints")
    return found if isinstance(found, dict) else None
