"""Back up a producer's output (a dump, any command's stdout) with restic, as one unit.

restic >= 0.17: ``restic backup --stdin-from-command`` runs the producer itself (through
:mod:`drkit.exec_child`, so the producer gets its own environment, not restic's) and makes no
snapshot when the producer fails. restic 0.14 to 0.16: the producer is piped into ``restic
backup --stdin``, both watched together (:func:`drkit.pipeline.run_pipeline`); a producer that
dies halfway still gives restic an end of input, so restic makes a snapshot of a torn stream:
its id is returned in the error, for the run's record (the next prune forgets it).

Either way the error raised is the one that happened first: restic refusing the password is
:class:`WrongPassword`, restic losing the storage is :class:`StorageUnreachable` (transient),
never "dump failed: Broken pipe"; a producer that failed first is :class:`StreamSourceFailed`.
A repository locked by another process cannot be waited for by restic 0.14 without consuming
the stream, so the whole unit is restarted until the lock goes (``lock_timeout``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from drkit import exec_child
from drkit.errors import DrkitError
from drkit.pipeline import run_pipeline
from drkit.restic.commands import (
    EXIT_INCOMPLETE,
    BackupProgress,
    BackupSummary,
    backup_args,
    backup_summary,
    progress_handler,
)
from drkit.restic.errors import (
    AccessDenied,
    Interrupted,
    LockVanished,
    RepositoryLocked,
    RepositoryNotFound,
    ResticError,
    SourceIncomplete,
    StorageUnreachable,
    TimedOut,
    WrongPassword,
)
from drkit.restic.locks import after_interrupt, clear_pending, sweep_after
from drkit.restic.runner import (
    ResticRepository,
    ResticResult,
    error_of,
    finish_result,
    remove_stale_lock,
    restic_child,
    restic_version,
    run_restic,
    take_line,
    version_tuple,
)
from drkit.supervise import (
    NO_LIMITS,
    ChildError,
    ChildSpec,
    Exit,
    Limits,
    base_env,
    mask,
    pause,
    stopping,
)

log = logging.getLogger("drkit.restic")

STDIN_FROM_COMMAND = (0, 17, 0)
RETRY_LOCK = (0, 16, 0)
RETRY_LOCK_S = 60.0  # restic >= 0.16 waits this long for a lock before drkit restarts the unit
_EMPTY_INPUT = re.compile(r"snapshot is empty", re.IGNORECASE)
_COMMAND_FAILED = re.compile(r"(?:command failed|failed to start command):? ([^\"\n]*)")
# Failures that are restic's own even when the producer also failed (it was stopped for them).
_RESTIC_FIRST = (WrongPassword, StorageUnreachable, AccessDenied, RepositoryLocked,
                 RepositoryNotFound, TimedOut, Interrupted)


class StreamSourceFailed(DrkitError):
    """The producer failed before restic did. ``torn_snapshot_id``: the snapshot restic made
    of the partial stream (restic < 0.17), which must never count as a backup."""

    def __init__(self, message: str, *, torn_snapshot_id: str | None = None) -> None:
        super().__init__(message)
        self.torn_snapshot_id = torn_snapshot_id


def backup_stream(repo: ResticRepository, producer: ChildSpec, *, filename: str,
                  tags: Sequence[str], host: str | None, dry_run: bool, action: str,
                  workdir: Path, on_progress: Callable[[BackupProgress], None] | None = None,
                  on_start: Callable[[], None] | None = None,
                  limits: Limits = NO_LIMITS) -> BackupSummary:
    """Store ``producer``'s stdout in ``repo`` as ``filename``; return restic's summary.

    ``workdir`` is a private directory for the producer's spec and stderr. Raises
    :class:`StreamSourceFailed`, or restic's typed errors (:class:`TimedOut` at ``limits``).
    """
    version = version_tuple(restic_version(repo.binary, repo.state_dir))
    from_command = version >= STDIN_FROM_COMMAND
    lock_deadline = time.monotonic() + repo.lock_timeout
    delay = 1.0
    while True:
        once = _from_command if from_command else _through_pipe
        try:
            return once(repo, producer, filename=filename, tags=tags, host=host,
                        dry_run=dry_run, action=action, workdir=workdir,
                        on_progress=on_progress, on_start=on_start, limits=limits,
                        retry_lock=min(repo.lock_timeout, RETRY_LOCK_S)
                        if version >= RETRY_LOCK else None)
        except RepositoryLocked as locked:
            vanished = isinstance(locked, LockVanished) and time.monotonic() < lock_deadline
            if vanished or remove_stale_lock(repo, locked, action=action):
                continue
            wait = min(delay, lock_deadline - time.monotonic())
            remaining = limits.remaining()
            if wait <= 0 or (remaining is not None and remaining <= wait):
                raise RepositoryLocked(
                    f"{locked.message} - still locked after waiting {repo.lock_timeout:.0f} s",
                    stderr=locked.stderr, returncode=locked.returncode) from None
            log.info("%s: repository is locked by another run; restarting %s in %.0f s",
                     action, producer.what, wait)
            pause(wait)
            if stopping():
                raise Interrupted(f"{action}: interrupted while waiting for the lock") from None
            delay = min(delay * 2, 15.0)
        finally:
            on_start = None  # the catalog opens once


def _producer_error(stderr: str, secrets: Sequence[str]) -> str:
    lines = [line for line in mask(stderr, secrets).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error output"


def _from_command(repo: ResticRepository, producer: ChildSpec, *, filename: str,
                  tags: Sequence[str], host: str | None, dry_run: bool, action: str,
                  workdir: Path, on_progress: Callable[[BackupProgress], None] | None,
                  on_start: Callable[[], None] | None, limits: Limits,
                  retry_lock: float | None) -> BackupSummary:
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec_path = workdir / "producer.json"
    stderr_path = workdir / "producer.stderr"
    stderr_path.unlink(missing_ok=True)
    fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        env = dict(producer.env) if producer.env is not None else base_env()
        json.dump({"argv": list(producer.argv), "env": env,
                   "cwd": str(producer.cwd) if producer.cwd else None,
                   "stderr": str(stderr_path)}, handle)
    trampoline = (sys.executable, "-I", "-S", exec_child.__file__, str(spec_path))
    args = backup_args((), tags=tags, host=host, excludes=(), dry_run=dry_run,
                       stdin_filename=filename, compression=repo.config.compression,
                       command=trampoline, retry_lock=retry_lock)
    try:
        result = run_restic(repo, args, action=action, on_json=progress_handler(on_progress),
                            on_start=on_start, limits=limits, ok_codes=(0, EXIT_INCOMPLETE))
    except ResticError as exc:
        stderr = stderr_path.read_text("utf-8", "replace") if stderr_path.exists() else ""
        how = _COMMAND_FAILED.search(exc.stderr)
        if isinstance(exc, _RESTIC_FIRST) or how is None:
            raise
        said = _producer_error(stderr, producer.secrets) if stderr.strip() else "no error output"
        code = re.match(r"exit status (\d+)", how.group(1).strip())
        raise StreamSourceFailed(
            f"{action}: {producer.what} failed "
            f"({f'exit {code.group(1)}' if code else how.group(1).strip()}): {said} "
            "(restic made no snapshot)") from None
    finally:
        spec_path.unlink(missing_ok=True)
    try:
        return backup_summary(result, action=action, dry_run=dry_run)
    except SourceIncomplete as exc:  # restic >= 0.17 on an empty stream: exit 3
        raise _wrote_nothing(action, producer, exc.snapshot_id) from None


def _through_pipe(repo: ResticRepository, producer: ChildSpec, *, filename: str,
                  tags: Sequence[str], host: str | None, dry_run: bool, action: str,
                  workdir: Path, on_progress: Callable[[BackupProgress], None] | None,
                  on_start: Callable[[], None] | None, limits: Limits,
                  retry_lock: float | None) -> BackupSummary:
    clear_pending(repo)
    args = backup_args((), tags=tags, host=host, excludes=(), dry_run=dry_run,
                       stdin_filename=filename, compression=repo.config.compression,
                       retry_lock=retry_lock)
    spec, watch = restic_child(repo, args, action=action)
    result = ResticResult(returncode=-1)
    handler = progress_handler(on_progress)
    try:
        pipe = run_pipeline(producer, spec, limits=limits, watch=watch.verdict,
                            on_consumer_stderr=watch.see, on_started=on_start,
                            on_consumer_line=lambda raw: take_line(raw, result, handler))
    except ChildError as exc:
        if stopping():
            raise Interrupted(f"{action}: interrupted") from None
        raise StreamSourceFailed(f"{action}: {exc}") from None
    except BaseException:  # Ctrl-C: both were stopped; no lock of restic may stay
        after_interrupt(repo, f"{action}: interrupted")
        raise
    finish_result(result, pipe.consumer, watch)
    sweep_after(repo, result, failed=not pipe.consumer.ok, action=action)
    if "interrupt" in (pipe.producer.stopped, pipe.consumer.stopped):
        raise Interrupted(f"{action}: interrupted")
    if pipe.producer.stopped == "timeout" or pipe.consumer.stopped == "timeout":
        torn = _torn_snapshot(result, dry_run=dry_run)
        raise StreamSourceFailed(
            f"{action}: {limits.message()} ({producer.what} and restic stopped)"
            + (f"; restic had stored the stream as snapshot {torn[:8]}, which is not a "
               "backup (the next prune forgets it)" if torn else ""), torn_snapshot_id=torn)
    first = pipe.first_failure
    if first == "consumer" and pipe.producer.stopped is None and \
            _EMPTY_INPUT.search(result.stderr):
        if pipe.producer.ok:  # restic 0.14 refuses an empty stream
            raise _wrote_nothing(action, producer, None)
        first = "producer"  # it failed before writing anything; restic refused the empty input
    if first == "producer":
        torn = _torn_snapshot(result, dry_run=dry_run)
        raise StreamSourceFailed(
            f"{action}: {producer.what} failed ({_exit_text(pipe.producer)}): "
            f"{_producer_error(pipe.producer.stderr, producer.secrets)}"
            + (f"; restic stored the partial stream as snapshot {torn[:8]}, which is not a "
               "backup (the next prune forgets it)" if torn else ""),
            torn_snapshot_id=torn)
    if first == "consumer":
        raise error_of(pipe.consumer, result, action=action, limits=limits)
    return backup_summary(result, action=action, dry_run=dry_run)


def _torn_snapshot(result: ResticResult, *, dry_run: bool) -> str | None:
    """The snapshot restic reported making, even if it was stopped right after."""
    if dry_run:
        return None
    summary = result.last("summary")
    return str(summary["snapshot_id"]) if summary and summary.get("snapshot_id") else None


def _exit_text(exit_: Exit) -> str:
    if exit_.returncode < 0:
        return f"killed by signal {-exit_.returncode}"
    return f"exit {exit_.returncode}"


def _wrote_nothing(action: str, producer: ChildSpec, snapshot_id: str | None
                   ) -> StreamSourceFailed:
    return StreamSourceFailed(
        f"{action}: {producer.what} succeeded but wrote nothing"
        + (f"; restic stored the empty stream as snapshot {snapshot_id[:8]}, which is not a "
           "backup (the next prune forgets it)" if snapshot_id else
           " (restic stores no empty stream)"), torn_snapshot_id=snapshot_id)
