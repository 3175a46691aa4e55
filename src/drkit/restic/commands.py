"""restic verbs drkit uses, each built as an argument tuple over :func:`run_restic`.

Policy (what to back up, which tags) is decided by the caller; this module only knows how
restic is asked for it and how its JSON answers are parsed into typed results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.restic.errors import ResticError, ResticFailed, SourceIncomplete, fatal_line
from drkit.restic.runner import ResticRepository, ResticResult, json_list, run_restic
from drkit.supervise import NO_LIMITS, Limits

EXIT_INCOMPLETE = 3  # restic: snapshot made, but some source files could not be read


@dataclass(frozen=True)
class BackupProgress:
    """One ``status`` line of ``restic backup --json``."""

    percent_done: float
    bytes_done: int
    total_bytes: int
    files_done: int
    total_files: int


@dataclass(frozen=True)
class BackupSummary:
    """The ``summary`` line of ``restic backup --json`` (fields present since 0.14)."""

    snapshot_id: str | None
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs_new: int
    dirs_changed: int
    data_added: int
    total_files_processed: int
    total_bytes_processed: int
    total_duration: float
    dry_run: bool
    data_added_packed: int | None = None  # restic >= 0.17: what the added data takes stored

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupSummary:
        return cls(
            snapshot_id=data.get("snapshot_id"),
            files_new=int(data.get("files_new", 0)),
            files_changed=int(data.get("files_changed", 0)),
            files_unmodified=int(data.get("files_unmodified", 0)),
            dirs_new=int(data.get("dirs_new", 0)),
            dirs_changed=int(data.get("dirs_changed", 0)),
            data_added=int(data.get("data_added", 0)),
            total_files_processed=int(data.get("total_files_processed", 0)),
            total_bytes_processed=int(data.get("total_bytes_processed", 0)),
            total_duration=float(data.get("total_duration", 0.0)),
            dry_run=bool(data.get("dry_run", False)),
            data_added_packed=int(data["data_added_packed"])
            if isinstance(data.get("data_added_packed"), int | float) else None,
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as ``restic snapshots --json`` lists it."""

    id: str
    short_id: str
    time: datetime
    hostname: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    original: str | None = None  # a copied snapshot: the id of the snapshot it copies

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            id=str(data["id"]),
            short_id=str(data.get("short_id") or data["id"][:8]),
            time=parse_restic_time(str(data["time"])),
            hostname=str(data.get("hostname", "")),
            paths=tuple(data.get("paths") or ()),
            tags=tuple(data.get("tags") or ()),
            original=str(data["original"]) if data.get("original") else None,
        )


def parse_restic_time(value: str) -> datetime:
    """Parse restic's RFC 3339 times (nanoseconds, ``Z`` or offset) into an aware datetime."""
    head, _, rest = value.partition(".")
    if rest:
        match = re.match(r"(\d+)(.*)", rest)
        if match:
            digits, zone = match.groups()
            value = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def backup_args(paths: Sequence[str], *, tags: Sequence[str], host: str | None,
                excludes: Sequence[str], dry_run: bool, stdin_filename: str | None = None,
                compression: str | None = None, command: Sequence[str] | None = None,
                retry_lock: float | None = None) -> tuple[str, ...]:
    """Arguments of ``restic backup`` for ``paths``, or for stdin stored as ``stdin_filename``
    (with ``command``: restic >= 0.17 runs it and stores its stdout), with drkit's tags."""
    source: tuple[str, ...] = ("--", *paths)
    if stdin_filename and command:
        source = ("--stdin-from-command", "--stdin-filename", stdin_filename, "--", *command)
    elif stdin_filename:
        source = ("--stdin", "--stdin-filename", stdin_filename)
    return (
        ("backup", "--json")
        + tuple(arg for tag in tags for arg in ("--tag", tag))
        + (("--host", host) if host else ())
        + tuple(arg for pattern in excludes for arg in ("--exclude", pattern))
        + (("--compression", compression) if compression else ())
        + (("--retry-lock", f"{max(1, int(retry_lock))}s") if retry_lock else ())
        + (("--dry-run",) if dry_run else ())
        + source
    )


def progress_handler(on_progress: Callable[[BackupProgress], None] | None
                     ) -> Callable[[dict[str, Any]], None]:
    """A JSON-line handler turning ``status`` lines into :class:`BackupProgress` calls."""
    def handle(message: dict[str, Any]) -> None:
        if on_progress is not None and message.get("message_type") == "status":
            on_progress(BackupProgress(
                percent_done=float(message.get("percent_done", 0.0)),
                bytes_done=int(message.get("bytes_done", 0)),
                total_bytes=int(message.get("total_bytes", 0)),
                files_done=int(message.get("files_done", 0)),
                total_files=int(message.get("total_files", 0)),
            ))
    return handle


def backup_summary(result: ResticResult, *, action: str, dry_run: bool) -> BackupSummary:
    """restic's summary of a finished backup. Raises :class:`SourceIncomplete` (with the
    snapshot id) after exit 3, :class:`ResticFailed` when restic made no snapshot."""
    summary_json = result.last("summary")
    summary = BackupSummary.from_json(summary_json) if summary_json else None
    if result.returncode == EXIT_INCOMPLETE:
        unreadable = [m.get("item") for m in result.messages if m.get("message_type") == "error"]
        listed = ", ".join(str(item) for item in unreadable[:5] if item)
        raise SourceIncomplete(
            f"{action}: some files could not be read ({listed or fatal_line(result.stderr)}); "
            "the snapshot is incomplete",
            snapshot_id=summary.snapshot_id if summary else None,
            stderr=result.stderr, returncode=result.returncode,
        )
    if summary is None or (not dry_run and not summary.snapshot_id):
        raise ResticFailed(f"{action}: restic reported no snapshot ({fatal_line(result.stderr)})",
                           stderr=result.stderr, returncode=result.returncode)
    return summary


def backup(repo: ResticRepository, paths: Sequence[str], *, tags: Sequence[str],
           host: str | None = None, excludes: Sequence[str] = (), cwd: Path | None = None,
           dry_run: bool = False, action: str,
           on_progress: Callable[[BackupProgress], None] | None = None,
           on_start: Callable[[], None] | None = None,
           limits: Limits = NO_LIMITS) -> BackupSummary:
    """Back ``paths`` up into ``repo`` (as ``host``, with ``tags``); return restic's summary.

    Raises :class:`SourceIncomplete` (with the snapshot id) when restic could not read some
    files, and the typed errors of :func:`run_restic` otherwise.
    """
    args = backup_args(paths, tags=tags, host=host, excludes=excludes, dry_run=dry_run,
                       compression=repo.config.compression)
    result = run_restic(repo, args, action=action, on_json=progress_handler(on_progress),
                        cwd=cwd, ok_codes=(0, EXIT_INCOMPLETE), on_start=on_start,
                        limits=limits)
    return backup_summary(result, action=action, dry_run=dry_run)


def filter_args(*, tags: Sequence[str] = (), host: str | None = None) -> tuple[str, ...]:
    """restic's snapshot filter: all of ``tags``, made by ``host``."""
    return ((("--tag", ",".join(tags)) if tags else ())
            + (("--host", host) if host else ()))


def snapshots(repo: ResticRepository, *, tags: Sequence[str] = (), host: str | None = None,
              action: str, limits: Limits = NO_LIMITS) -> list[Snapshot]:
    """Snapshots in ``repo`` carrying all of ``tags`` (made by ``host``, if given), oldest
    first."""
    result = run_restic(repo, ("snapshots", "--json", *filter_args(tags=tags, host=host)),
                        action=action, limits=limits)
    found = [Snapshot.from_json(item) for item in json_list(result) if isinstance(item, dict)]
    return sorted(found, key=lambda snap: snap.time)


def init(repo: ResticRepository, *, action: str) -> None:
    """Create the repository (format version 2: compression; a copy repository with its
    source's chunker parameters, so that copied data deduplicates). Raises
    :class:`RepositoryAlreadyExists` if one is there."""
    chunker = ("--copy-chunker-params",) if repo.source is not None else ()
    run_restic(repo, ("init", "--repository-version", "2", *chunker), action=action)


def copy(repo: ResticRepository, snapshot_ids: Sequence[str], *, action: str,
         limits: Limits = NO_LIMITS) -> None:
    """``restic copy`` of ``snapshot_ids`` from ``repo.source`` into ``repo`` (restic skips
    those copied before)."""
    run_restic(repo, ("copy", *snapshot_ids), action=action, limits=limits)


def cat_config(repo: ResticRepository, *, action: str) -> dict[str, Any]:
    """The repository's config (proves the repository exists and the password opens it)."""
    result = run_restic(repo, ("cat", "config"), action=action)
    parsed = json.loads("\n".join(result.stdout_lines) or "{}")
    return dict(parsed) if isinstance(parsed, dict) else {}


_CHECK_ERROR = re.compile(
    r"error|fail|does not match|not found|missing|invalid|damaged|Fatal|unreferenced",
    re.IGNORECASE)


@dataclass(frozen=True)
class CheckOutcome:
    """``restic check``'s verdict and the lines that name the damage."""

    ok: bool
    errors: tuple[str, ...]
    output_tail: str


def check(repo: ResticRepository, *, read_data_subset: str | None, action: str,
          limits: Limits = NO_LIMITS) -> CheckOutcome:
    """``restic check`` (structure), reading ``read_data_subset`` of the data if given
    (``n/m``, ``x%``; ``100%`` reads everything). Damage is returned as an outcome naming it;
    other failures (unreachable, wrong password, locked too long, timed out) raise typed
    errors."""
    args: tuple[str, ...] = ("check",)
    if read_data_subset:
        args += (("--read-data",) if read_data_subset in ("100%", "1/1")
                 else ("--read-data-subset", read_data_subset))
    try:
        result = run_restic(repo, args, action=action, limits=limits)
    except ResticError as failed:
        if "repository contains errors" not in failed.stderr and \
                not isinstance(failed, ResticFailed):
            raise  # could not check at all: unreachable, wrong password, locked
        lines = failed.stderr.splitlines()
        damage = tuple(line.strip() for line in lines if _CHECK_ERROR.search(line))
        return CheckOutcome(ok=False, errors=damage[:50] or (fatal_line(failed.stderr),),
                            output_tail="\n".join(lines[-30:]))
    tail = "\n".join([*result.stdout_lines, *result.stderr.splitlines()][-30:])
    return CheckOutcome(ok=True, errors=(), output_tail=tail)


@dataclass(frozen=True)
class ForgetOutcome:
    """What ``restic forget`` kept and removed."""

    kept: tuple[Snapshot, ...]
    removed: tuple[Snapshot, ...]


def forget_outcome(result: ResticResult | None) -> ForgetOutcome:
    """Parse ``restic forget --json`` output (also of a run that failed after printing it)."""
    kept: list[Snapshot] = []
    removed: list[Snapshot] = []
    for group in json_list(result) if result is not None else []:
        if isinstance(group, dict):
            kept += [Snapshot.from_json(s) for s in group.get("keep") or ()]
            removed += [Snapshot.from_json(s) for s in group.get("remove") or ()]
    return ForgetOutcome(kept=tuple(kept), removed=tuple(removed))


def forget(repo: ResticRepository, *, tags: Sequence[str], host: str | None,
           keep: Sequence[str], dry_run: bool, action: str,
           limits: Limits = NO_LIMITS) -> ForgetOutcome:
    """``restic forget`` the snapshots of ``host`` carrying all of ``tags`` that the ``keep``
    flags do not keep (grouped by host and tags). Removes snapshot files only: their data goes
    with :func:`prune`. On failure the error's ``result`` holds what was printed."""
    args = (("forget", "--json", *filter_args(tags=tags, host=host), "--group-by", "host,tags")
            + tuple(keep) + (("--dry-run",) if dry_run else ()))
    return forget_outcome(run_restic(repo, args, action=action, limits=limits))


def forget_snapshots(repo: ResticRepository, ids: Sequence[str], *, action: str,
                     limits: Limits = NO_LIMITS) -> None:
    """Forget exactly these snapshots (no prune: their data goes at the next prune)."""
    run_restic(repo, ("forget", *ids), action=action, limits=limits)


def prune(repo: ResticRepository, *, action: str, limits: Limits = NO_LIMITS) -> str:
    """``restic prune``: remove the data no snapshot uses any more; return its summary."""
    result = run_restic(repo, ("prune",), action=action, limits=limits)
    return "\n".join(result.stdout_lines[-12:])
