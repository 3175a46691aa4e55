"""Back targets up: prepare each target once, back that one prepared copy up to each of its
repositories, record every run. The CLI (``drkit backup``) and the Prefect backup flow both
call :func:`backup_target`.

Targets run concurrently up to ``parallelism``; a target's repositories run one after the
other. Each run prepares into a staging directory of its own (two runs of one target never
share one). A failing target never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import RunHandle, utcnow
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.common import (
    Recorder,
    detect_restic_version,
    refuse_elsewhere,
    restic_repository,
    select_names,
)
from drkit.jobs.locks import RepositoryBusy, repository_lock
from drkit.jobs.staging import staging_dir
from drkit.notify import notify_failure, ping
from drkit.restic import commands
from drkit.restic.commands import BackupProgress, BackupSummary
from drkit.restic.errors import SourceIncomplete
from drkit.restic.runner import mask_url
from drkit.restic.stream import StreamSourceFailed, backup_stream
from drkit.supervise import Limits, terminate_all
from drkit.targets import registry
from drkit.targets.base import BackupSource
from drkit.units import human_bytes

log = logging.getLogger("drkit.backup")

ProgressHook = Callable[[str, str, BackupProgress], None]


@dataclass
class BackupRun:
    """The outcome of one target backed up to one repository (the ``backup --json`` shape)."""

    target: str
    repository: str
    status: str
    started_at: datetime
    finished_at: datetime
    snapshot_id: str | None = None
    bytes_added: int | None = None
    files_new: int | None = None
    files_changed: int | None = None
    error: str | None = None
    record_id: int | None = None
    dry_run: bool = False
    transient: bool = False  # failed for a reason that may pass (storage down, locked)
    # A snapshot the failed run left behind (a torn dump, an incomplete backup): never a
    # backup; the next prune forgets it.
    unusable_snapshot_id: str | None = None
    # Why the run looks unlike the target's history (ransomware? a lost mount?), if it does:
    # it succeeded, and `status` fails until somebody acknowledges it (`drkit ack`).
    anomaly: list[str] | None = None

    @property
    def duration_s(self) -> float:
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = canonical_time(self.started_at)
        data["finished_at"] = canonical_time(self.finished_at)
        data["duration_s"] = self.duration_s
        return data


def run_backups(config: Config, recorder: Recorder | None, names: Sequence[str] = (), *,
                dry_run: bool = False, on_progress: ProgressHook | None = None
                ) -> list[BackupRun]:
    """Back up ``names`` (all targets when empty) to each of their repositories.

    ``recorder`` may be None only for a dry run (which records nothing). Returns one
    :class:`BackupRun` per target x repository. Raises :class:`BadRequestError` for unknown
    targets before anything runs; every other failure is recorded and returned as a run.
    """
    selected = select_names(names, config.targets, "target")
    if names:
        for name in selected:
            refuse_elsewhere(config, name)
    else:  # all of this host's targets; another host's are backed up there
        selected = [name for name in selected if config.runs_here(name)]
    if not selected:
        return []
    version = detect_restic_version(config)
    cancel = threading.Event()  # set on Ctrl-C/SIGTERM: runs still going become "interrupted"
    runs: list[BackupRun] = []
    with ThreadPoolExecutor(max_workers=config.parallelism,
                            thread_name_prefix="drkit-backup") as pool:
        futures = [pool.submit(backup_target, config, recorder, name, dry_run=dry_run,
                               restic_version=version, on_progress=on_progress, cancel=cancel)
                   for name in selected]
        failure: BaseException | None = None
        try:
            for future in futures:
                try:
                    runs.extend(future.result())
                except Exception as exc:  # one target broke (the catalog?): the rest go on
                    failure = failure or exc
        except BaseException:  # Ctrl-C or SIGTERM: every run still going stops now
            cancel.set()
            terminate_all()
            for future in futures:
                future.cancel()
            raise
    if failure is not None:
        raise failure
    return runs


def backup_target(config: Config, recorder: Recorder | None, name: str, *, dry_run: bool = False,
                  restic_version: str | None = None, on_progress: ProgressHook | None = None,
                  cancel: threading.Event | None = None,
                  repositories: Sequence[str] | None = None, ping: bool = True
                  ) -> list[BackupRun]:
    """Back target ``name`` up to each of its repositories (or only ``repositories``): prepare
    it once, then back that prepared copy up to each; record and return every run.

    ``ping``: report the outcome to the target's healthcheck URL, if any. Raises
    :class:`BadRequestError` when no repository of the target is left to back up to.
    """
    refuse_elsewhere(config, name)
    target = config.targets[name]
    kind = registry.get(target.kind)
    chosen = [r for r in target.repositories if repositories is None or r in repositories]
    if not chosen:
        raise BadRequestError(f"target '{name}' is backed up to none of "
                              f"{', '.join(repositories or [])} (its repositories: "
                              f"{', '.join(target.repositories)})")
    runs = _TargetRun(config, recorder, name, chosen, dry_run=dry_run, version=restic_version)
    try:
        with staging_dir(config.state_dir, name) as staging, \
                kind.prepare(name, target, staging / "data") as source:
            runs.source_paths = [str((source.cwd or Path()) / path) for path in source.paths] \
                if source.stream is None else []
            for repo_name in chosen:
                if cancel is not None and cancel.is_set():
                    runs.finish(repo_name, error="interrupted before it began",
                                status="interrupted")
                    continue
                _backup_one(config, runs, repo_name, source, staging / "stream", on_progress,
                            cancel)
    except Exception as exc:  # the target could not be prepared: every repository fails
        if not isinstance(exc, DrkitError):
            log.debug("unexpected error preparing %s", name, exc_info=True)
        reason = describe(exc) if isinstance(exc, DrkitError) else \
            f"internal error: {type(exc).__name__}: {exc}"
        for repo_name in chosen:
            runs.finish(repo_name, error=reason)
    done = runs.done()
    if ping and not dry_run and done:
        ping_failures(config, name, {  # a flagged backup pings a failure: look at it
            r.repository: r.error or r.status if r.status != "succeeded"
            else "anomaly: " + "; ".join(r.anomaly or []) for r in done
            if r.status != "succeeded" or r.anomaly})
    return done


def ping_failures(config: Config, name: str, failures: dict[str, str]) -> None:
    """Ping the target's healthcheck URL (if any): success when ``failures`` (repository ->
    reason) is empty, else a failure listing them."""
    check = config.targets[name].healthcheck
    if check is not None:
        ping(check.url, success=not failures,
             body="; ".join(f"{repo}: {why}" for repo, why in failures.items()) or "ok")


class _TargetRun:
    """The runs of one target's backup: journaled up front, each recorded exactly once."""

    def __init__(self, config: Config, recorder: Recorder | None, name: str,
                 chosen: list[str], *, dry_run: bool, version: str | None) -> None:
        self.config = config
        self.recorder = recorder
        self.name = name
        self.dry_run = dry_run
        self.handles: dict[str, RunHandle | None] = {
            repo: None if dry_run or recorder is None else recorder.journal.open(
                "backup", target=name, repository=repo, restic_version=version)
            for repo in chosen}
        self.started = {repo: (h.started_at if h else utcnow())
                        for repo, h in self.handles.items()}
        self.runs: dict[str, BackupRun] = {}
        self.source_paths: list[str] = []  # a files target's paths (the entropy sample's)
        self._entropy: dict[str, Any] | None = None

    def done(self) -> list[BackupRun]:
        return [self.runs[repo] for repo in self.handles if repo in self.runs]

    def finish(self, repo_name: str, *, status: str = "failed", error: str | None = None,
               summary: BackupSummary | None = None, snapshot_id: str | None = None,
               evidence: dict[str, Any] | None = None, transient: bool = False) -> BackupRun:
        """Record the run to ``repo_name`` (once: a second call returns the first outcome)."""
        if repo_name in self.runs:
            return self.runs[repo_name]
        if error is not None:
            prefix = f"backup {self.name} -> {repo_name}"
            log.error("%s", error if error.startswith(prefix) else f"{prefix}: {error}")
        good = summary.snapshot_id if summary and not self.dry_run else None
        run = BackupRun(
            target=self.name, repository=repo_name, status=status,
            started_at=self.started[repo_name], finished_at=utcnow(), error=error,
            dry_run=self.dry_run, snapshot_id=good, unusable_snapshot_id=snapshot_id,
            bytes_added=summary.data_added if summary else None,
            files_new=summary.files_new if summary else None,
            files_changed=summary.files_changed if summary else None, transient=transient)
        handle = self.handles[repo_name]
        verdict = None
        if status == "succeeded" and summary is not None and evidence is not None and \
                self.recorder is not None and handle is not None:
            verdict = self._judge(repo_name, summary, evidence)
            run.anomaly = verdict.get("reasons") if verdict.get("flagged") else None
        if self.recorder is not None and handle is not None:
            record = self.recorder.catalog.get().finish_run(
                handle, status=status, snapshot_id=good or snapshot_id, error=error,
                evidence=evidence or {}, finished_at=run.finished_at)
            self.runs[repo_name] = run  # recorded: nothing below may record it again
            run.record_id = record.id
            self.recorder.journal.close(handle)
            if status != "succeeded":
                notify_failure(self.config, "backup", status, target=self.name,
                               repository=repo_name, error=error, run_id=handle.run_id,
                               record_id=record.id)
            elif run.anomaly:
                log.warning("backup %s -> %s: ANOMALY (record %d): %s; the snapshot is kept, "
                            "`drkit status` fails until `drkit ack %d --reason ...`",
                            self.name, repo_name, record.id, "; ".join(run.anomaly),
                            record.id, record.id)
                notify_failure(self.config, "backup", "anomaly", target=self.name,
                               repository=repo_name, reasons=run.anomaly,
                               snapshot_id=run.snapshot_id, run_id=handle.run_id,
                               record_id=record.id)
        self.runs[repo_name] = run
        return run

    def _judge(self, repo_name: str, summary: BackupSummary,
               evidence: dict[str, Any]) -> dict[str, Any]:
        """Score the run against its history (drkit.jobs.anomaly) into ``evidence``. Never
        fails the run: a scoring problem is logged and noted in the evidence."""
        from drkit.catalog.anomalies import recent_backups
        from drkit.jobs.anomaly import score

        target = self.config.targets[self.name]
        settings = target.anomaly
        if not settings.enabled:
            return {}
        clock, sampling = time.perf_counter(), 0.0
        try:
            catalog = self.recorder.catalog.get() if self.recorder is not None else None
            assert catalog is not None
            with catalog.read_session() as session:
                history = recent_backups(session, target=self.name, repository=repo_name,
                                         host=self.config.host, limit=2 * settings.window + 1)
            count = getattr(target, "entropy_sample", 0)
            if count and self.source_paths and self._entropy is None:
                from drkit.targets.sample import entropy_sample

                since = history[-1].started_at.replace(tzinfo=UTC).timestamp() \
                    if history else 0.0
                sampling = time.perf_counter()
                self._entropy = entropy_sample(self.source_paths, since=since, count=count,
                                               exclude=getattr(target, "exclude", ()))
                sampling = time.perf_counter() - sampling  # its own cost is in its evidence
            if self._entropy is not None:
                evidence["entropy_sample"] = self._entropy
            verdict = score(asdict(summary), history, settings, self._entropy).to_json()
        except Exception as exc:  # the backup itself succeeded: that stays true
            log.warning("backup %s -> %s: not compared with its history: %s: %s", self.name,
                        repo_name, type(exc).__name__, exc)
            verdict = {"flagged": False, "error": f"{type(exc).__name__}: {exc}"}
        verdict["ms"] = round((time.perf_counter() - clock - sampling) * 1000, 2)
        evidence["anomaly"] = verdict
        return verdict


def _backup_one(config: Config, runs: _TargetRun, repo_name: str, source: BackupSource,
                workdir: Path, on_progress: ProgressHook | None,
                cancel: threading.Event | None) -> BackupRun:
    action = f"backup {runs.name} -> {repo_name}"
    evidence: dict[str, Any] = {"source": source.description, **source.evidence,
                                "host": config.host}
    try:
        # Shared with other backups, never beside a check or prune of the same repository;
        # held until the run is recorded, so that a prune never sees its snapshot unrecorded.
        with repository_lock(config.state_dir, repo_name, exclusive=False,
                             timeout=config.lock_timeout, action=action) as locked_at:
            evidence["lock_acquired_at"] = locked_at
            return _back_up_and_record(config, runs, repo_name, source, workdir, on_progress,
                                       cancel, evidence)
    except RepositoryBusy as exc:  # the lock could not be had
        return runs.finish(repo_name, error=describe(exc), evidence=evidence,
                           transient=exc.transient)


def _back_up_and_record(config: Config, runs: _TargetRun, repo_name: str,
                        source: BackupSource, workdir: Path,
                        on_progress: ProgressHook | None, cancel: threading.Event | None,
                        evidence: dict[str, Any]) -> BackupRun:
    name = runs.name
    repo = restic_repository(config, repo_name)
    action = f"backup {name} -> {repo_name}"
    identity = config.identity(name)
    hook = None
    if on_progress is not None:
        def hook(progress: BackupProgress) -> None:
            on_progress(name, repo_name, progress)
    # Once restic runs, open the catalog meanwhile (see CatalogOpener).
    on_start = runs.recorder.catalog.start if runs.recorder is not None else None
    limit = config.targets[name].timeout or config.timeouts.backup
    evidence.update({"repository_url": mask_url(repo.url), "timeout_s": limit})
    clock = time.monotonic()
    limits = Limits.after(limit)
    try:
        if source.stream is not None:
            summary = backup_stream(
                repo, source.stream.producer, filename=source.stream.filename,
                tags=identity.tags, host=identity.host, dry_run=runs.dry_run, action=action,
                workdir=workdir, on_progress=hook, on_start=on_start, limits=limits)
        else:
            summary = commands.backup(
                repo, source.paths, tags=identity.tags, host=identity.host,
                excludes=source.excludes, cwd=source.cwd, dry_run=runs.dry_run, action=action,
                on_progress=hook, on_start=on_start, limits=limits)
    except DrkitError as exc:
        # A snapshot the failed run left (a torn dump, an incomplete backup, one committed
        # just as the run was stopped) is recorded with it: never drilled, and the next prune
        # forgets it.
        bad, state = _left_behind(exc)
        if bad:
            evidence["snapshot_state"] = state
        interrupted = cancel is not None and cancel.is_set()
        plain = isinstance(exc, StreamSourceFailed | SourceIncomplete)
        return runs.finish(repo_name, error="interrupted by the user" if interrupted
                           else (str(exc) if plain else describe(exc)),
                           status="interrupted" if interrupted else "failed",
                           snapshot_id=bad, evidence=evidence,
                           transient=exc.transient and not interrupted)
    except Exception as exc:
        log.debug("unexpected error in %s", action, exc_info=True)
        return runs.finish(repo_name, error=f"internal error: {type(exc).__name__}: {exc}",
                           evidence=evidence)
    evidence["restic_summary"] = asdict(summary)
    log.info("%s: %s (snapshot %s, %s added, %.1f s)", action,
             "dry run done" if runs.dry_run else "succeeded", (summary.snapshot_id or "-")[:8],
             human_bytes(summary.data_added), time.monotonic() - clock)
    return runs.finish(repo_name, summary=summary, evidence=evidence, status="succeeded")


def _left_behind(exc: DrkitError) -> tuple[str | None, str]:
    """The snapshot a failed backup left in the repository, and what it is."""
    if isinstance(exc, StreamSourceFailed):
        return exc.torn_snapshot_id, "torn"
    if isinstance(exc, SourceIncomplete):
        return exc.snapshot_id, "incomplete"
    result = getattr(exc, "result", None)
    summary = result.last("summary") if result is not None else None
    return (str(summary["snapshot_id"]) if summary and summary.get("snapshot_id") else None,
            "made_by_a_failed_run")
