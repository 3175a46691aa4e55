"""``prune``: apply each target's retention (``restic forget --prune``), scoped to the target's
own snapshots, alone on the repository, refusing object-locked buckets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import RunJournal
from drkit.catalog.store import Catalog
from drkit.config.models import Config, Retention
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.backup import TAG, target_tag
from drkit.jobs.common import restic_repository, select_names
from drkit.jobs.locks import repository_lock
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.restic.errors import ResticError
from drkit.restic.runner import restic_version

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
    """Prune each named target (all with a retention policy when empty) in each repository.

    Raises :class:`BadRequestError` for unknown targets or a named target without retention.
    A dry run records nothing.
    """
    selected = select_names(names, config.targets, "target")
    without = [n for n in selected if config.targets[n].retention is None]
    if names and without:
        raise BadRequestError(f"no retention policy for: {', '.join(without)} "
                              "(add 'retention:' to the target)")
    try:
        version: str | None = restic_version(config.restic_binary)
    except ResticError:
        version = None
    runs = []
    for name in selected:
        if name in without:
            continue
        for repo_name in config.targets[name].repositories:
            runs.append(_prune_one(config, catalog, journal, name, repo_name, dry_run, version))
    return runs


def _prune_one(config: Config, catalog: Catalog | None, journal: RunJournal, name: str,
               repo_name: str, dry_run: bool, version: str | None) -> PruneRun:
    target = config.targets[name]
    assert target.retention is not None
    repo = restic_repository(config, repo_name)
    handle = None if dry_run else journal.open("prune", target=name, repository=repo_name,
                                               restic_version=version)
    run = PruneRun(target=name, repository=repo_name, status="failed", dry_run=dry_run)
    evidence: dict[str, Any] = {"policy": target.retention.model_dump(exclude_none=True),
                                "dry_run": dry_run}
    action = f"prune {name} in {repo_name}"
    try:
        if repo.config.is_s3:
            _refuse_object_lock(repo_name, repo.config, dry_run)
        with repository_lock(config.state_dir, repo_name, exclusive=True,
                             timeout=config.lock_timeout, action=action) as locked_at:
            evidence["lock_acquired_at"] = locked_at
            outcome = commands.forget(repo, tags=(TAG, target_tag(name)),
                                      keep=retention_flags(target.retention), prune=True,
                                      dry_run=dry_run, action=action)
        run.kept = [s.id for s in outcome.kept]
        run.removed = [s.id for s in outcome.removed]
        run.status = "succeeded"
        evidence.update({
            "kept": [{"id": s.id, "time": canonical_time(s.time)} for s in outcome.kept],
            "removed": [{"id": s.id, "time": canonical_time(s.time)} for s in outcome.removed],
            "prune_summary": outcome.prune_summary})
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


def _refuse_object_lock(name: str, repository: Any, dry_run: bool) -> None:
    from drkit.storage.posture import read_posture

    found = read_posture(repository)
    if found.object_lock and not dry_run:
        raise DrkitError(
            f"prune refused: repository '{name}' is on bucket '{found.bucket}' with object "
            f"lock ({found.object_lock_mode}, {found.object_lock_days} days): deletes there only "
            "add delete markers, so prune would report success while freeing nothing. Expire "
            "old data with a lifecycle rule on noncurrent versions after the retention period")
