"""``prune``: apply each target's retention, scoped to this host's snapshots of the target,
alone on the repository, refusing object-locked buckets. The failed runs' snapshots are
forgotten first; what each prune removed is recorded, also when it fails halfway."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import RunJournal
from drkit.catalog.store import Catalog
from drkit.config.models import Config, Retention
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import SnapshotIdentity
from drkit.jobs.common import detect_restic_version, restic_repository, select_names
from drkit.jobs.locks import repository_lock
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.restic.commands import Snapshot
from drkit.restic.runner import ResticRepository
from drkit.supervise import Limits

log = logging.getLogger("drkit.prune")


def retention_flags(policy: Retention) -> tuple[str, ...]:
    """restic's ``--keep-*`` flags for ``policy`` (unset and zero counts are left out)."""
    flags: tuple[str, ...] = ()
    for key, value in policy.model_dump().items():
        if value:
            flags += (f"--{key.replace('_', '-')}", str(value))
    return flags


@dataclass
class PruneRun:
    target: str
    repository: str
    status: str
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str | None = None
    record_id: int | None = None
    transient: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_prunes(config: Config, catalog: Catalog | None, journal: RunJournal,
               names: Sequence[str] = (), *, dry_run: bool = False) -> list[PruneRun]:
    """Prune each named target in each of its repositories; with no names, every target with
    a retention policy, and every other target whose failed runs left snapshots to forget.

    Raises :class:`BadRequestError` for unknown targets or a named target without retention.
    A dry run records nothing.
    """
    selected = select_names(names, config.targets, "target")
    without = [n for n in selected if config.targets[n].retention is None]
    if names and without:
        raise BadRequestError(f"no retention policy for: {', '.join(without)} "
                              "(add 'retention:' to the target)")
    version = detect_restic_version(config)
    runs = []
    for name in selected:
        for repo_name in config.targets[name].repositories:
            if name in without and not _has_unusable(catalog, config, name, repo_name):
                continue
            runs.append(_prune_one(config, catalog, journal, name, repo_name, dry_run, version))
    return runs


def _has_unusable(catalog: Catalog | None, config: Config, name: str, repo_name: str) -> bool:
    from drkit.catalog import snapshots as known

    if catalog is None:
        return False
    with catalog.read_session() as session:
        return bool(known.unusable_snapshots(session, target=name, repository=repo_name,
                                             host=config.host_of(name)).forget
                    or known.had_runs_cut_short(session, target=name, repository=repo_name,
                                                host=config.host_of(name)))


def _prune_one(config: Config, catalog: Catalog | None, journal: RunJournal, name: str,
               repo_name: str, dry_run: bool, version: str | None) -> PruneRun:
    target = config.targets[name]
    repo = restic_repository(config, repo_name)
    identity = config.identity(name)
    handle = None if dry_run else journal.open("prune", target=name, repository=repo_name,
                                               restic_version=version)
    run = PruneRun(target=name, repository=repo_name, status="failed", dry_run=dry_run)
    policy = target.retention.model_dump(exclude_none=True) if target.retention else None
    evidence: dict[str, Any] = {"policy": policy, "dry_run": dry_run, "host": identity.host}
    action = f"prune {name} in {repo_name}"
    limits = Limits.after(config.timeouts.prune)
    try:
        if repo.config.is_s3:
            _refuse_object_lock(repo_name, repo.config, dry_run)
        with repository_lock(config.state_dir, repo_name, exclusive=True,
                             timeout=config.lock_timeout, action=action) as locked_at:
            evidence["lock_acquired_at"] = locked_at
            try:
                _forget_and_prune(
                    repo, catalog, identity, target.retention, run, evidence, action=action,
                    limits=limits, intend=lambda ids: journal.note(handle, {
                        "removal_uncertain": ids}) if handle is not None else None)
            except KeyboardInterrupt:  # recorded as such now, with what it had removed
                if catalog is not None and handle is not None:
                    catalog.finish_run(handle, status="interrupted", evidence=evidence,
                                       error="interrupted by the user")
                    journal.close(handle)
                raise
        run.status = "succeeded"
        log.info("%s: %s %d snapshot(s), kept %d", action,
                 "would remove" if dry_run else "removed", len(run.removed), len(run.kept))
    except DrkitError as exc:
        run.error = describe(exc)
        run.transient = exc.transient
        log.error("%s: %s", action, run.error)
    if catalog is not None and handle is not None:
        record = catalog.finish_run(handle, status=run.status, error=run.error,
                                    evidence=evidence)
        journal.close(handle)
        run.record_id = record.id
        if run.error:
            notify_failure(config, "prune", run.status, target=name, repository=repo_name,
                           error=run.error, run_id=handle.run_id, record_id=record.id)
    return run


def _forget_and_prune(repo: ResticRepository, catalog: Catalog | None,
                      identity: SnapshotIdentity, policy: Retention | None, run: PruneRun,
                      evidence: dict[str, Any], *, action: str, limits: Limits,
                      intend: Callable[[list[str]], None]) -> None:
    """Forget the failed runs' snapshots and those the policy (if any) does not keep, then
    prune.

    The failed runs' snapshots (torn dumps, snapshots of runs cut short) go first, so that
    they never count for retention (``keep_last: 1`` must not keep a torn dump and drop the
    good one); while incomplete backups newer than the last good one are held back, retention
    waits. The policy is evaluated by a dry run, then exactly those snapshots are forgotten;
    ``intend`` is told which, first (the run's journal keeps it, should drkit die meanwhile).
    If forgetting fails halfway, what is really gone is read back from the repository; if
    the storage does not answer or drkit is interrupted, the record says which snapshots may
    be gone (``removal_uncertain``).
    """
    bad, held_back, unfinished = _unusable(repo, catalog, identity, limits=limits,
                                           action=action)
    if bad and not run.dry_run:
        intend(bad)
        _forget(repo, identity, bad, [], evidence, action=f"{action}: failed runs' snapshots",
                limits=limits)
    evidence["forgotten_failed" if not run.dry_run else "would_forget_failed"] = bad
    plan = commands.ForgetOutcome(kept=(), removed=())
    if held_back:
        evidence["retention_deferred"] = (
            f"{len(held_back)} incomplete backup(s) newer than the last good one are kept "
            "until a backup succeeds; retention waits until then")
        log.warning("%s: retention waits: %s", action, evidence["retention_deferred"])
    elif policy is not None:
        plan = commands.forget(repo, tags=identity.tags, host=identity.host,
                               keep=retention_flags(policy), dry_run=True, action=action,
                               limits=limits)
    held = _anomaly_hold(catalog, identity, repo.name)
    removing = [s for s in plan.removed if s.id not in bad]
    holding = [s for s in removing if any(s.id.startswith(h) for h in held)]
    if holding:
        evidence["anomaly_hold"] = _listed(holding)
        log.warning("%s: %d snapshot(s) kept past retention while an anomaly is open (the "
                    "last normal backup and the flagged ones): %s", action, len(holding),
                    ", ".join(s.short_id for s in holding))
    removing = [s for s in removing if s not in holding]
    kept = [s for s in plan.kept if s.id not in bad] + holding
    run.kept = [s.id for s in kept]
    evidence["kept"] = _listed(kept)
    if run.dry_run:
        run.removed = [s.id for s in removing]
        evidence["removed"] = _listed(removing)
        return
    if removing:
        intend(bad + [s.id for s in removing])
        _forget(repo, identity, [], removing, evidence, action=action, limits=limits)
    run.removed = [s.id for s in removing]
    evidence["removed"] = _listed(removing)
    if bad or removing or unfinished:
        evidence["prune_summary"] = commands.prune(repo, action=action, limits=limits)


def _anomaly_hold(catalog: Catalog | None, identity: SnapshotIdentity,
                  repository: str) -> set[str]:
    """While an anomaly of the target is open, retention must not take what a recovery from
    it needs: the last normal snapshot before it (pick: last_normal) and the flagged ones
    (evidence). Their snapshot ids (as the catalog holds them)."""
    from drkit.catalog.anomalies import last_normal

    if catalog is None:
        return set()
    with catalog.read_session() as session:
        chosen, _, opened = last_normal(session, target=identity.target,
                                        repository=repository, host=identity.host)
    held = {a.snapshot_id for a in opened if a.repository == repository and a.snapshot_id}
    if opened and chosen is not None:
        held.add(chosen.snapshot_id)
    return held


def _unusable(repo: ResticRepository, catalog: Catalog | None, identity: SnapshotIdentity,
              *, limits: Limits, action: str) -> tuple[list[str], list[str], bool]:
    """The snapshots to forget before the policy runs, those held back (see
    :mod:`drkit.catalog.snapshots`), and whether the last prune was left unfinished (its data
    still to be freed)."""
    from drkit.catalog import snapshots as known

    if catalog is None:
        return [], [], False
    where = {"target": identity.target, "repository": repo.name, "host": identity.host}
    with catalog.read_session() as session:
        unusable = known.unusable_snapshots(session, **where)
        unfinished = known.last_prune_failed(session, **where)
        cut_short = known.had_runs_cut_short(session, **where)
    bad = list(unusable.forget)
    if cut_short:  # a run stopped after restic committed leaves a snapshot nobody recorded
        present = [(s.id, s.time) for s in commands.snapshots(
            repo, tags=identity.tags, host=identity.host, action=action, limits=limits)]
        with catalog.read_session() as session:
            bad += known.unrecorded_in_runs_cut_short(session, present=present, **where)
    return bad, unusable.held_back, unfinished


def _forget(repo: ResticRepository, identity: SnapshotIdentity, bad: list[str],
            removing: list[Snapshot], evidence: dict[str, Any], *, action: str,
            limits: Limits) -> None:
    """Forget exactly ``bad`` and ``removing``; when that fails halfway, record what is gone."""
    try:
        commands.forget_snapshots(repo, bad + [s.id for s in removing], action=action,
                                  limits=limits)
    except DrkitError:
        _record_partial_forget(repo, identity, bad, removing, evidence, action=action)
        raise
    except BaseException:  # interrupted: no time to read the repository back
        evidence.setdefault("removal_uncertain", []).extend(bad + [s.id for s in removing])
        raise


def _listed(snapshots: list[Snapshot]) -> list[dict[str, str]]:
    return [{"id": s.id, "time": canonical_time(s.time)} for s in snapshots]


def _record_partial_forget(repo: ResticRepository, identity: SnapshotIdentity, bad: list[str],
                           removing: list[Snapshot], evidence: dict[str, Any], *,
                           action: str) -> None:
    """After ``forget`` of ``bad`` and ``removing`` failed halfway: record which of them are
    really gone (read back), or, when the storage does not answer, that they may be."""
    try:
        present = {s.id for s in commands.snapshots(
            repo, tags=identity.tags, host=identity.host, action=f"{action}: read back",
            limits=Limits.after(min(60.0, repo.storage_timeout)))}
    except DrkitError:
        evidence.setdefault("removal_uncertain", []).extend(bad + [s.id for s in removing])
        return
    if bad:
        evidence["forgotten_failed"] = [b for b in bad
                                        if not any(p.startswith(b) for p in present)]
    if removing:
        evidence["removed"] = _listed([s for s in removing if s.id not in present])


def _refuse_object_lock(name: str, repository: Any, dry_run: bool) -> None:
    from drkit.storage.posture import read_posture

    found = read_posture(repository)
    if found.object_lock and not dry_run:
        raise DrkitError(
            f"prune refused: repository '{name}' is on bucket '{found.bucket}' with object "
            f"lock ({found.object_lock_mode}, {found.object_lock_days} days): deletes there only "
            "add delete markers, so prune would report success while freeing nothing. Expire "
            "old data with a lifecycle rule on noncurrent versions after the retention period")
