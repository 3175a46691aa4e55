"""Back targets up: prepare each target's data, run restic per repository, record every run.

Targets run concurrently up to ``parallelism``; a target's repositories run one after the
other from one prepared copy. A failing target never stops the others.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import RunHandle, RunJournal, utcnow
from drkit.config.models import Config
from drkit.errors import DrkitError, describe
from drkit.jobs.common import CatalogOpener, restic_repository, select_names
from drkit.jobs.locks import repository_lock
from drkit.notify import notify_failure, ping
from drkit.processes import stop_process
from drkit.restic import commands
from drkit.restic.commands import BackupProgress, BackupSummary
from drkit.restic.errors import ResticError, SourceIncomplete
from drkit.restic.runner import (
    ResticRepository,
    mask,
    mask_url,
    restic_version,
    terminate_all,
)
from drkit.targets import registry
from drkit.targets.base import StreamSource, TargetError
from drkit.units import human_bytes

log = logging.getLogger("drkit.backup")

ProgressHook = Callable[[str, str, BackupProgress], None]

TAG = "drkit"


def target_tag(name: str) -> str:
    """The restic tag that marks a snapshot as target ``name``'s."""
    return f"drkit-target={name}"


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

    @property
    def duration_s(self) -> float:
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = canonical_time(self.started_at)
        data["finished_at"] = canonical_time(self.finished_at)
        data["duration_s"] = self.duration_s
        return data


@dataclass(frozen=True)
class Recorder:
    """Where runs are journaled while in flight and recorded when done."""

    journal: RunJournal
    catalog: CatalogOpener
    config: Config


def run_backups(config: Config, recorder: Recorder | None, names: Sequence[str] = (), *,
                dry_run: bool = False, on_progress: ProgressHook | None = None
                ) -> list[BackupRun]:
    """Back up ``names`` (all targets when empty) to each of their repositories.

    ``recorder`` may be None only for a dry run (which records nothing). Returns one
    :class:`BackupRun` per target x repository. Raises :class:`BadRequestError` for unknown
    targets before anything runs; every other failure is recorded and returned as a run.
    """
    selected = select_names(names, config.targets, "target")
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
        try:
            for future in futures:
                runs.extend(future.result())
        except BaseException:
            cancel.set()
            terminate_all()
            for future in futures:
                future.cancel()
            raise
    return runs


def detect_restic_version(config: Config) -> str | None:
    """restic's version for the records, or None (logged) when restic cannot run: then every
    run fails on its own, and each failure is recorded."""
    try:
        return restic_version(config.restic_binary)
    except ResticError as exc:
        log.error("%s", exc)
        return None


def backup_target(config: Config, recorder: Recorder | None, name: str, *, dry_run: bool = False,
                  restic_version: str | None = None, on_progress: ProgressHook | None = None,
                  cancel: threading.Event | None = None,
                  repositories: Sequence[str] | None = None, ping: bool = True
                  ) -> list[BackupRun]:
    """Back one target up to each of its repositories (or only ``repositories``); record and
    return every run. ``ping``: report the outcome to the target's healthcheck URL, if any."""
    target = config.targets[name]
    kind = registry.get(target.kind)
    chosen = [r for r in target.repositories if repositories is None or r in repositories]
    handles: dict[str, RunHandle | None] = {}
    for repo_name in chosen:
        handles[repo_name] = None if dry_run or recorder is None else recorder.journal.open(
            "backup", target=name, repository=repo_name, restic_version=restic_version)
    started = {repo: (h.started_at if h else utcnow()) for repo, h in handles.items()}
    staging = _fresh_staging(config.state_dir, name)
    runs: list[BackupRun] = []
    try:
        with kind.prepare(name, target, staging) as source:
            for repo_name in chosen:
                if cancel is not None and cancel.is_set():
                    runs.append(_finish(recorder, handles[repo_name], name, repo_name,
                                        started[repo_name], error="interrupted before it began",
                                        status="interrupted"))
                    continue
                runs.append(_backup_one(config, recorder, handles[repo_name], name, repo_name,
                                        started[repo_name], source, dry_run, on_progress, cancel))
    except Exception as exc:  # the target could not be prepared: every repository fails
        if not isinstance(exc, DrkitError):
            log.debug("unexpected error preparing %s", name, exc_info=True)
        reason = describe(exc) if isinstance(exc, DrkitError) else \
            f"internal error: {type(exc).__name__}: {exc}"
        done = {run.repository for run in runs}
        for repo_name in chosen:
            if repo_name not in done:
                runs.append(_finish(recorder, handles[repo_name], name, repo_name,
                                    started[repo_name], error=reason))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if ping and not dry_run and runs:
        ping_failures(config, name, {r.repository: r.error or r.status for r in runs
                                     if r.status != "succeeded"})
    return runs


def ping_failures(config: Config, name: str, failures: dict[str, str]) -> None:
    """Ping the target's healthcheck URL (if any): success when ``failures`` (repository ->
    reason) is empty, else a failure listing them."""
    check = config.targets[name].healthcheck
    if check is not None:
        ping(check.url, success=not failures,
             body="; ".join(f"{repo}: {why}" for repo, why in failures.items()) or "ok")


def _backup_one(config: Config, recorder: Recorder | None, handle: RunHandle | None, name: str,
                repo_name: str, started_at: datetime, source: Any, dry_run: bool,
                on_progress: ProgressHook | None, cancel: threading.Event | None) -> BackupRun:
    repo = restic_repository(config, repo_name)
    action = f"backup {name} -> {repo_name}"
    hook = None
    if on_progress is not None:
        def hook(progress: BackupProgress) -> None:
            on_progress(name, repo_name, progress)
    # Once restic runs, open the catalog meanwhile (see CatalogOpener).
    on_start = recorder.catalog.start if recorder is not None else None
    clock = time.monotonic()
    evidence: dict[str, Any] = {"source": source.description, **source.evidence,
                                "repository_url": mask_url(repo.url)}
    try:
        # Shared with other backups, never beside a check or prune of the same repository.
        with repository_lock(config.state_dir, repo_name, exclusive=False,
                             timeout=config.lock_timeout, action=action) as locked_at:
            evidence["lock_acquired_at"] = locked_at
            if source.stream is not None:
                summary = backup_stream(repo, source.stream, tags=(TAG, target_tag(name)),
                                        dry_run=dry_run, action=action, on_progress=hook,
                                        on_start=on_start)
            else:
                summary = commands.backup(
                    repo, source.paths, tags=(TAG, target_tag(name)),
                    excludes=source.excludes, cwd=source.cwd, dry_run=dry_run, action=action,
                    on_progress=hook, on_start=on_start)
    except SourceIncomplete as exc:
        evidence["incomplete_snapshot_id"] = exc.snapshot_id
        return _finish(recorder, handle, name, repo_name, started_at, error=str(exc),
                       evidence=evidence)
    except DrkitError as exc:
        interrupted = cancel is not None and cancel.is_set()
        return _finish(recorder, handle, name, repo_name, started_at,
                       error="interrupted by the user" if interrupted else describe(exc),
                       status="interrupted" if interrupted else "failed", evidence=evidence,
                       transient=exc.transient and not interrupted)
    except Exception as exc:
        log.debug("unexpected error in %s", action, exc_info=True)
        return _finish(recorder, handle, name, repo_name, started_at,
                       error=f"internal error: {type(exc).__name__}: {exc}", evidence=evidence)
    evidence["restic_summary"] = asdict(summary)
    log.info("%s: %s (snapshot %s, %s added, %.1f s)", action,
             "dry run done" if dry_run else "succeeded", summary.snapshot_id or "-",
             human_bytes(summary.data_added), time.monotonic() - clock)
    return _finish(recorder, handle, name, repo_name, started_at, summary=summary,
                   evidence=evidence, status="succeeded", dry_run=dry_run)


def backup_stream(repo: ResticRepository, stream: StreamSource, *, tags: tuple[str, ...],
                  dry_run: bool, action: str,
                  on_progress: Callable[[BackupProgress], None] | None,
                  on_start: Callable[[], None] | None = None) -> BackupSummary:
    """Pipe ``stream``'s command into ``restic backup --stdin``; nothing touches local disk.

    Either side failing fails the run. A dump that died halfway still gives restic an end of
    input and so a snapshot: that snapshot is forgotten at once and the run fails, so a torn
    dump is never recorded as a good backup.
    """
    with tempfile.TemporaryFile() as errors:
        try:
            producer = subprocess.Popen(list(stream.argv), stdout=subprocess.PIPE, stderr=errors,
                                        stdin=subprocess.DEVNULL, env=stream.env)
        except OSError as exc:
            raise TargetError(f"{stream.what}: cannot run {stream.argv[0]!r}: "
                              f"{exc.strerror}") from None
        assert producer.stdout is not None
        restic_error: DrkitError | None = None
        summary: BackupSummary | None = None
        try:
            summary = commands.backup(repo, (), tags=tags, dry_run=dry_run, action=action,
                                      on_progress=on_progress, stdin=producer.stdout,
                                      stdin_filename=stream.filename, on_start=on_start)
        except DrkitError as exc:
            restic_error = exc
        except BaseException:
            stop_process(producer)
            raise
        finally:
            producer.stdout.close()
        try:
            code = producer.wait(timeout=5 if restic_error else None)
        except subprocess.TimeoutExpired:  # restic gave up first; the producer is stuck
            stop_process(producer)
            code = 0
        if code == 0:
            if restic_error is not None:
                raise restic_error
            assert summary is not None
            return summary
        errors.seek(0)
        text = mask(errors.read().decode("utf-8", "replace"), stream.secrets).strip()
    detail = (text.splitlines() or ["no error output"])[-1]
    discarded = ""
    if summary is not None and summary.snapshot_id and not dry_run:
        commands.forget_snapshots(repo, [summary.snapshot_id], action=f"{action}: discard")
        discarded = f"; its partial snapshot {summary.snapshot_id} was discarded"
    raise TargetError(f"{action}: {stream.what} failed (exit {code}): {detail}{discarded}")


def _finish(recorder: Recorder | None, handle: RunHandle | None, name: str, repo_name: str,
            started_at: datetime, *, status: str = "failed", error: str | None = None,
            summary: BackupSummary | None = None, evidence: dict[str, Any] | None = None,
            dry_run: bool = False, transient: bool = False) -> BackupRun:
    if error is not None:
        prefix = f"backup {name} -> {repo_name}"
        log.error("%s", error if error.startswith(prefix) else f"{prefix}: {error}")
    run = BackupRun(
        target=name, repository=repo_name, status=status, started_at=started_at,
        finished_at=utcnow(), error=error, dry_run=dry_run,
        snapshot_id=summary.snapshot_id if summary and not dry_run else None,
        bytes_added=summary.data_added if summary else None,
        files_new=summary.files_new if summary else None,
        files_changed=summary.files_changed if summary else None,
        transient=transient,
    )
    if recorder is not None and handle is not None:
        record = recorder.catalog.get().finish_run(
            handle, status=status, snapshot_id=run.snapshot_id, error=error,
            evidence=evidence or {}, finished_at=run.finished_at)
        recorder.journal.close(handle)
        run.record_id = record.id
        if status != "succeeded":
            notify_failure(recorder.config, "backup", status, target=name,
                           repository=repo_name, error=error, run_id=handle.run_id,
                           record_id=record.id)
    return run


def _fresh_staging(state_dir: Path, name: str) -> Path:
    staging = state_dir / "staging" / name
    shutil.rmtree(staging, ignore_errors=True)  # left over by a killed run
    staging.mkdir(parents=True, mode=0o700)
    return staging
