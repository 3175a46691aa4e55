"""Runs in flight, journaled as one small file each under ``state_dir/runs/``.

A run is journaled before it starts work and the file is removed once its catalog record is
appended. A file whose process is gone (killed, crashed, host rebooted) is what the next start
turns into an ``interrupted`` record. Files, not catalog rows, so that starting a run costs no
database import or round trip, and the run is journaled before restic starts.
This module must stay free of SQLAlchemy: the backup path imports it before the catalog.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from drkit.processes import pid_exists


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (how the catalog stores times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def process_start_token(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts after the command name, which may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, token: str | None) -> bool:
    """Whether the process that journaled a run is still running on this host."""
    if Path("/proc").is_dir() and token is not None:
        return process_start_token(pid) == token
    return pid_exists(pid)


@dataclass(frozen=True)
class Unreadable:
    """A journal file that could not be read or parsed: a run of this host whose kind and
    subject cannot be told any more."""

    name: str
    reason: str
    excerpt: bytes


def _parse(name: str, raw: bytes) -> RunHandle | Unreadable:
    try:
        data = json.loads(raw.decode("utf-8"))
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        return RunHandle(**data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Unreadable(name, f"{type(exc).__name__}: {exc}", raw[:512])


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunHandle:
    """A journaled run; pass it back to ``Catalog.finish_run`` and :meth:`RunJournal.close`."""

    run_id: str
    kind: str
    started_at: datetime
    hostname: str
    pid: int
    pid_started: str | None
    target: str | None = None
    repository: str | None = None
    plan: str | None = None
    restic_version: str | None = None
    note: dict[str, object] | None = None  # what the run was about to do (see RunJournal.note)


class RunJournal:
    """The in-flight runs of one deployment on this host (``state_dir/runs``)."""

    def __init__(self, state_dir: Path, hostname: str | None = None) -> None:
        self.directory = state_dir / "runs"
        self.hostname = hostname or socket.gethostname()

    def open(self, kind: str, *, target: str | None = None, repository: str | None = None,
             plan: str | None = None, restic_version: str | None = None) -> RunHandle:
        """Journal a run as started now by this process; return its handle."""
        pid = os.getpid()
        handle = RunHandle(run_id=str(uuid.uuid4()), kind=kind, started_at=utcnow(),
                           hostname=self.hostname, pid=pid, pid_started=process_start_token(pid),
                           target=target, repository=repository, plan=plan,
                           restic_version=restic_version)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write(handle)
        return handle

    def note(self, handle: RunHandle, note: dict[str, object]) -> None:
        """Write down what the run is about to do (a prune: the snapshots it is about to
        forget), so that a run that dies meanwhile is recorded with it."""
        self._write(replace(handle, note=note))

    def _write(self, handle: RunHandle) -> None:
        data = asdict(handle)
        data["started_at"] = handle.started_at.isoformat()
        path = self.directory / f"{handle.run_id}.json"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(json.dumps(data))
            out.flush()
            os.fsync(out.fileno())  # the entry survives a power cut once the run starts
        temporary.replace(path)  # atomic: a reader never sees half a file
        fsync_directory(self.directory)

    def close(self, handle: RunHandle) -> None:
        """Forget a run whose record is in the catalog."""
        (self.directory / f"{handle.run_id}.json").unlink(missing_ok=True)

    def keep_unreadable(self, claimed: Path, name: str) -> Path:
        """Set a reported unreadable journal file aside (``NAME.unreadable``)."""
        kept = self.directory / f"{name}.unreadable"
        claimed.replace(kept)
        return kept

    def claim_stale(self) -> Iterator[tuple[RunHandle | Unreadable, Path]]:
        """Runs whose process is gone, each claimed by renaming its file (so only one process
        records it). Yield (handle, claimed file); delete the file once recorded. A file that
        cannot be read is yielded as :class:`Unreadable` (claimed too): it must be reported,
        not skipped forever; keep it (renamed ``.unreadable``) for inspection."""
        if not self.directory.is_dir():
            return
        orphans = [p for p in self.directory.glob("*.claimed-*")
                   if not pid_exists(int(p.suffix.rsplit("-", 1)[-1]))]
        for path in sorted(self.directory.glob("*.json")) + orphans:
            entry: RunHandle | Unreadable
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # finished or claimed meanwhile
            except OSError as exc:
                entry = Unreadable(path.name, f"cannot read it: {exc.strerror}", b"")
            else:
                entry = _parse(path.name, raw)
            if isinstance(entry, RunHandle) and (
                    entry.hostname != self.hostname
                    or process_alive(entry.pid, entry.pid_started)):
                continue
            claimed = path.with_suffix(f".claimed-{os.getpid()}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another process claimed it first
            yield entry, claimed
