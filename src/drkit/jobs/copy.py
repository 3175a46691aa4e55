"""``drkit copy [REPO...]``: fill copy repositories (``copy_from: SOURCE``) with ``restic copy``.

What is copied is what the catalog says is good: this host's good backups of every target
backed up to the source, not copied before (restic itself skips a snapshot it copied already).
Each copied snapshot becomes one ``copy`` record: the copy's snapshot id in the copy
repository, the source snapshot and backup record, and the source backup's evidence that a
drill or restore needs (fingerprints, size). Its ``started_at`` is the source backup's: the
recovery point of a copy is its data's, not the copy run's. A target whose copy fails is one
failed ``copy`` record. A copy holds both repositories' drkit locks shared (a prune of either
waits).
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from drkit.catalog.inflight import utcnow
from drkit.catalog.store import NewRecord
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.common import Recorder, detect_restic_version, restic_repository, select_names
from drkit.jobs.locks import repository_lock
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.supervise import Limits

log = logging.getLogger("drkit.copy")


@dataclass
class CopyRun:
    repository: str
    source: str
    target: str
    status: str = "failed"   # "succeeded" | "failed" | "up_to_date"
    copied: dict[str, str] = field(default_factory=dict)  # source snapshot -> its copy
    error: str | None = None
    transient: bool = False  # trying again later may succeed (storage unreachable, locked)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def copy_repositories(config: Config, recorder: Recorder, names: list[str]) -> list[CopyRun]:
    """Copy into each named copy repository (all of them when none is named)."""
    copies = [n for n, repo in config.repositories.items() if repo.copy_from is not None]
    if not copies and not names:
        raise BadRequestError("no repository declares copy_from: nothing to copy into")
    selected = select_names(names, config.repositories, "repository")
    plain = [n for n in selected if config.repositories[n].copy_from is None]
    if names and plain:
        raise BadRequestError(f"{', '.join(plain)}: not a copy repository (no copy_from)")
    version = detect_restic_version(config)
    runs: list[CopyRun] = []
    for name in [n for n in selected if n in copies]:
        source = config.repositories[name].copy_from
        assert source is not None
        targets = [t for t, target in config.targets.items() if source in target.repositories]
        try:
            with ExitStack() as held:
                # The copy repository exclusively (two copies at once would both copy), the
                # source shared (a prune of it waits).
                for repo_name in sorted((name, source)):
                    held.enter_context(repository_lock(
                        config.state_dir, repo_name, exclusive=repo_name == name,
                        timeout=config.lock_timeout, action=f"copy {source} -> {name}"))
                runs += [_copy_target(config, recorder, name, source, target, version)
                         for target in targets]
        except DrkitError as exc:  # a lock that could not be had: each target's copy failed
            for target in targets:
                runs.append(_failed(config, recorder, CopyRun(name, source, target,
                                                              transient=exc.transient),
                                    describe(exc), version, {}))
    return runs


def _failed(config: Config, recorder: Recorder, run: CopyRun, error: str,
            version: str | None, evidence: dict[str, Any]) -> CopyRun:
    """Record ``run`` failed with ``error`` (and notify)."""
    run.status, run.error = "failed", error
    prefix = f"copy {run.target} {run.source} -> {run.repository}"
    log.error("%s", error if error.startswith(prefix) else f"{prefix}: {error}")
    handle = recorder.journal.open("copy", target=run.target, repository=run.repository,
                                   restic_version=version)
    record = recorder.catalog.get().finish_run(
        handle, status="failed", error=error, hostname=config.host_of(run.target),
        evidence={"source_repository": run.source, **evidence})
    recorder.journal.close(handle)
    notify_failure(config, "copy", "failed", target=run.target, repository=run.repository,
                   error=error, run_id=handle.run_id, record_id=record.id)
    return run


def _copy_target(config: Config, recorder: Recorder, name: str, source: str, target: str,
                 version: str | None) -> CopyRun:
    from drkit.catalog import snapshots as known

    run = CopyRun(repository=name, source=source, target=target)
    catalog = recorder.catalog.get()
    with catalog.read_session() as session:
        done = known.copied_sources(session, name)  # copied, or found gone from the source
        pending = [(r.id, r.snapshot_id or "", r.started_at, r.finished_at, r.evidence)
                   for r in known.good_backup_records(session, target=target,
                                                      repository=source,
                                                      host=config.host_of(target))
                   if (r.snapshot_id or "")[:8] not in done]
    if not pending:
        run.status = "up_to_date"
        return run
    handle = recorder.journal.open("copy", target=target, repository=name,
                                   restic_version=version)
    repo = restic_repository(config, name, with_source=True)
    identity = config.identity(target)
    action = f"copy {target} {source} -> {name}"
    try:
        commands.copy(repo, [p[1] for p in pending], action=action,
                      limits=Limits.after(config.targets[target].timeout
                                          or config.timeouts.backup))
        listed = commands.snapshots(repo, tags=identity.tags, host=identity.host,
                                    action=f"{action}: list the copies")
    except DrkitError as exc:
        recorder.journal.close(handle)
        run.transient = exc.transient
        return _failed(config, recorder, run, describe(exc), version,
                       {"source_snapshots": [p[1][:8] for p in pending]})
    copies = {s.original[:8]: s.short_id for s in listed if s.original}
    for index, (record_id, snapshot, started, finished, evidence_text) in enumerate(
            [p for p in pending if p[1][:8] in copies]):
        evidence = json.loads(evidence_text)
        run.copied[snapshot[:8]] = copies[snapshot[:8]]
        catalog.append(NewRecord(
            kind="copy", status="succeeded", started_at=started, finished_at=utcnow(),
            target=target, repository=name, snapshot_id=copies[snapshot[:8]],
            restic_version=version, hostname=config.host_of(target),
            # One record per copied snapshot; the run's id on the first (a run is recorded
            # once: the journal's crash recovery looks for it), fresh ones on the others.
            run_id=handle.run_id if index == 0 else None,
            evidence={"source_repository": source, "source_snapshot": snapshot[:8],
                      "source_record": record_id,
                      "source_finished_at": finished.isoformat() + "Z",
                      "copy_started_at": handle.started_at.isoformat() + "Z",
                      **{key: evidence[key] for key in ("fingerprints", "restic_summary")
                         if key in evidence}}))
    recorder.journal.close(handle)
    gone = [p[1][:8] for p in pending if p[1][:8] not in copies]
    if gone:
        # restic skips an id it cannot find (exit 0): a snapshot removed from the source
        # outside drkit. Recorded, so that it is never asked for again, and loud.
        return _failed(config, recorder, run,
                       f"{action}: {', '.join(gone)} not found in '{source}' (removed "
                       "outside drkit?); the other snapshots were copied", version,
                       {"source_missing": gone})
    run.status = "succeeded"
    log.info("%s: %d snapshot(s) copied", action, len(run.copied))
    return run
