"""``drkit restore TARGET --to PATH``: put one target's data back where the operator says.

The snapshot is the catalog's newest good backup of the target by this host in the
repository (or the newest completed by ``--at``, or ``--snapshot``). It is restored into a
private staging directory on the destination's filesystem (inside it when it exists, else
beside it), verified like a drill
(``restic restore --verify``, the tree against the snapshot's listing, the fingerprints of a
sqlite target), and only then moved into the destination, entry by entry (a rename each). A
destination that is not empty is refused unless ``--overwrite``; then each entry the restore
replaces is first moved aside to ``NAME.before-restore-<time>``, never deleted. Nothing
reaches the destination from a restore that failed. The run is one ``restore`` record with
the actor (the OS user) and what was moved where.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.config.models import Config
from drkit.drills.checks import CheckResult, StepContext, run_check
from drkit.drills.plans import FingerprintsCheck
from drkit.drills.restore import (
    DrillError,
    Listing,
    compare_tree,
    data_root,
    ensure_space,
    list_snapshot,
    restore,
    restore_while_listing,
    size_watch,
)
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import os_actor
from drkit.jobs.common import Recorder, detect_restic_version, holding_repository, restic_repository
from drkit.owned import remove_tree
from drkit.restic.commands import Snapshot
from drkit.supervise import Limits
from drkit.targets.sqlite import SqliteTarget

log = logging.getLogger("drkit.restore")


@dataclass
class RestoreResult:
    target: str
    repository: str
    destination: str
    status: str = "failed"
    snapshot_id: str | None = None
    snapshot_time: datetime | None = None
    chosen_by: str | None = None
    bytes_restored: int | None = None
    restore_s: float | None = None
    checks: list[CheckResult] = field(default_factory=list)
    placed: list[str] = field(default_factory=list)       # entries moved into the destination
    moved_aside: dict[str, str] = field(default_factory=dict)  # replaced entry -> kept as
    included: list[str] = field(default_factory=list)  # --include: only these paths
    actor: str = ""
    error: str | None = None
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "repository": self.repository,
                "destination": self.destination, "status": self.status,
                "snapshot_id": self.snapshot_id,
                "snapshot_time": canonical_time(self.snapshot_time)
                if self.snapshot_time else None,
                "chosen_by": self.chosen_by, "bytes_restored": self.bytes_restored,
                "restore_s": round(self.restore_s, 3) if self.restore_s is not None else None,
                "checks": [c.to_json() for c in self.checks], "placed": self.placed,
                "moved_aside": self.moved_aside, "included": self.included,
                "actor": self.actor, "error": self.error,
                "record_id": self.record_id}


def check_destination(config: Config, to: Path, *, overwrite: bool,
                      only: Sequence[str] = ()) -> Path:
    """``to`` made absolute; a bad request when it cannot take a restore (a file, a symlink,
    the root, a missing parent, writable by everyone, drkit's own state or a local
    repository, or not empty without ``overwrite``; with ``only``, paths relative to ``to``:
    one of them there already). Nothing is changed."""
    to = Path(os.path.abspath(to))
    if to == Path(to.anchor):
        raise BadRequestError("refusing to restore into the filesystem root")
    if to.is_symlink() or (to.exists() and not to.is_dir()):
        raise BadRequestError(f"{to} exists and is not a directory (or is a symbolic link)")
    if not to.parent.is_dir():
        raise BadRequestError(f"{to.parent} does not exist")
    for name, path in _protected(config):
        if to == path or path in to.parents or to in path.parents:
            raise BadRequestError(f"refusing to restore into {to}: it overlaps {name} {path}")
    if to.is_dir():
        mode = to.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise BadRequestError(f"refusing to restore into {to}: anyone can write to it",
                                  hint="restore into a directory only you can write to")
        try:
            there = [p for p in only if (to / p).exists() or (to / p).is_symlink()]
            busy = bool(there) if only else any(to.iterdir())
        except OSError as exc:
            raise BadRequestError(f"cannot read {to}: {exc.strerror}") from None
        if busy and not overwrite:
            there_text = f": {', '.join(there)} exists there" if only else " is not empty"
            raise BadRequestError(f"{to}{there_text}: nothing restored",
                                  hint="restore into an empty or new directory, or add "
                                       "--overwrite (what it replaces is moved aside, not "
                                       "deleted)")
    return to


def _protected(config: Config) -> list[tuple[str, Path]]:
    """What a restore must never be placed over: drkit's state and local repositories."""
    out = [("drkit's state directory", Path(os.path.abspath(config.state_dir)))]
    for name, repo in config.repositories.items():
        if not re.match(r"^[a-z0-9]+:", repo.url):  # a local path, not s3:, sftp:, rest: ...
            out.append((f"repository {name!r}", Path(os.path.abspath(repo.url))))
    return out


ProgressHook = Callable[[int, int | None], None]  # bytes restored so far, of how many


def check_snapshot_id(snapshot: str | None) -> None:
    """A bad request unless ``snapshot`` is None or a snapshot id (or a prefix of one)."""
    if snapshot is not None and not re.fullmatch(r"[0-9a-f]{4,64}", snapshot):
        raise BadRequestError(f"--snapshot takes a snapshot id (or a prefix of one), not "
                              f"{snapshot!r}", hint="drkit snapshots lists them")


def include_paths(config: Config, name: str, include: Sequence[str]) -> list[str]:
    """``--include`` paths made absolute as in the snapshot: relative ones are relative to
    the target's one backed-up path (as ``drkit ls`` shows them). Patterns are refused: the
    restored tree is compared with exactly what they select."""
    target = config.targets[name]
    if include and target.kind != "files":
        raise BadRequestError(f"--include is for files targets; {name!r} is a {target.kind} "
                              "target (its snapshot is one file)")
    paths = [str(p).rstrip("/") for p in getattr(target, "paths", [])]
    out: list[str] = []
    for item in include:
        parts = [part for part in item.split("/") if part not in ("", ".")]
        if any(ch in item for ch in "*?[\\") or ".." in parts or not parts:
            raise BadRequestError(f"--include {item!r}: give a path in the snapshot (as drkit "
                                  "ls shows it), not a pattern")
        if item.startswith("/"):
            path = "/" + "/".join(parts)
        elif len(paths) == 1:
            path = paths[0] + "/" + "/".join(parts)
        else:
            raise BadRequestError(f"--include {item!r}: target {name!r} does not back up "
                                  "one directory; give the path as drkit ls shows it "
                                  "(absolute)")
        if any(path == p or p.startswith(path + "/") for p in paths):
            raise BadRequestError(f"--include {item!r} is the whole backed-up directory (or "
                                  "above it): restore without --include")
        out.append(path)
    # One path each, none inside another (its parent brings it along).
    unique = sorted(set(out))
    return [p for p in unique if not any(p.startswith(q + "/") for q in unique)]


def restore_target(config: Config, recorder: Recorder, name: str, *, to: Path,
                   repository: str | None = None, snapshot: str | None = None,
                   at: datetime | None = None, overwrite: bool = False,
                   include: Sequence[str] = (), progress: ProgressHook | None = None
                   ) -> RestoreResult:
    """Restore target ``name`` (only ``include``'s paths, when given) into ``to``; record
    it; return what happened."""
    repo_name = holding_repository(config, name, repository)
    target = config.targets[name]
    check_snapshot_id(snapshot)
    included = include_paths(config, name, include)
    to = check_destination(config, to, overwrite=overwrite,
                           only=[_under(config, name, path) for path in included])
    recorder.catalog.start()
    result = RestoreResult(target=name, repository=repo_name, destination=str(to),
                           actor=os_actor(), included=included)
    handle = recorder.journal.open("restore", target=name, repository=repo_name,
                                   restic_version=detect_restic_version(config))
    # On the destination's own filesystem (inside it when it exists: it may be a mount
    # point), so that placing the data is a rename each.
    token = secrets.token_hex(4)
    staging = to / f".drkit-restore-{token}" if to.is_dir() else \
        to.parent / f".{to.name}.drkit-restore-{token}"
    try:
        staging.mkdir(mode=0o700)
        root, _snap = restore_verified(config, recorder, result, name, snapshot, at, staging,
                                      include=included, progress=progress)
        # A new destination gets the restored directory's own mode (the snapshot's), or
        # stays private when the data has no directory of its own (a dump, several paths).
        mode = stat.S_IMODE(root.stat().st_mode) if root != staging else 0o700
        units = [str(Path(path).relative_to("/" + str(root.relative_to(staging))))
                 for path in included] if included else None
        _place(root, to, result, overwrite=overwrite, sidecars=sqlite_sidecars(target),
               mode=mode, units=units)
        result.status = "succeeded"
    except (DrkitError, OSError, KeyboardInterrupt) as exc:
        stopped(result, exc)
    finally:
        try:
            remove_tree(staging)
        except OSError as exc:
            result.error = result.error or f"staging directory {staging} left behind: {exc}"
            result.status = "failed" if result.status == "succeeded" else result.status
        if result.error and (result.placed or result.moved_aside):
            result.error += (f" (already placed: {', '.join(result.placed) or 'nothing'}; "
                             "moved aside: " + (", ".join(
                                 f"{a} -> {b}" for a, b in result.moved_aside.items())
                                 or "nothing") + ")")
        finish(recorder, handle, result)
    return result


def stopped(result: RestoreResult, exc: BaseException) -> None:
    """Put what stopped a restore into its result; an interrupt is re-raised once noted."""
    if isinstance(exc, KeyboardInterrupt):
        result.status, result.error = "interrupted", "interrupted by the user"
        raise exc
    result.error = describe(exc) if isinstance(exc, DrkitError) else f"restore stopped: {exc}"


def finish(recorder: Recorder, handle: Any, result: RestoreResult) -> None:
    """Record the restore's outcome (its result, less what the record holds itself)."""
    evidence = result.to_json()
    for key in ("status", "error", "record_id", "target", "repository"):
        evidence.pop(key)
    record = recorder.catalog.get().finish_run(
        handle, status=result.status, error=result.error, evidence=evidence,
        snapshot_id=result.snapshot_id)
    recorder.journal.close(handle)
    result.record_id = record.id


def sqlite_sidecars(target: Any) -> dict[str, list[str]]:
    """For a sqlite target: its file's journal files, which must never stay beside a
    restored copy (SQLite would replay a stale WAL or hot journal into it)."""
    if not isinstance(target, SqliteTarget):
        return {}
    base = target.path.name
    return {base: [f"{base}-wal", f"{base}-shm", f"{base}-journal"]}


def restore_verified(config: Config, recorder: Recorder, result: RestoreResult, name: str,
                     wanted: str | None, at: datetime | None, staging: Path, *,
                     include: Sequence[str] = (), progress: ProgressHook | None = None
                     ) -> tuple[Path, Snapshot]:
    """Restore and verify into ``staging``; return where the target's data is in it and the
    snapshot restored. Raises :class:`DrillError` (or restic's errors) when it cannot."""
    from drkit.catalog import snapshots as known
    from drkit.drills.choose import newest_by, recorded_fingerprints, recorded_size

    repo = restic_repository(config, result.repository)
    identity = config.identity(name)
    limits = Limits.after(config.timeouts.drill)
    if wanted is not None:
        snap, listing = list_snapshot(repo, identity, wanted, limits=limits)
        with recorder.catalog.get().read_session() as session:
            verdict = known.snapshot_verdict(session, snap.id)
        result.chosen_by = f"--snapshot (backup recorded as {verdict or 'unknown'})"
        if verdict != "succeeded":
            log.warning("restore %s: snapshot %s was asked for; the catalog records its backup "
                        "as %s", name, snap.short_id, verdict or "unknown")
        listing = _included(listing, include, snap)
        ensure_space(staging, listing.total_bytes)
        with size_watch(staging, listing.total_bytes, progress):
            seconds = restore(repo, snap.id, staging, limits=limits, include=include)
    else:
        chosen, result.chosen_by = newest_by(recorder, identity, result.repository, at)
        size = recorded_size(recorder, chosen.snapshot_id, result.repository)
        if size is None or include:  # no size recorded, or only part: list it first
            snap, listing = list_snapshot(repo, identity, chosen.snapshot_id, limits=limits)
            listing = _included(listing, include, snap)
            ensure_space(staging, listing.total_bytes)
            with size_watch(staging, listing.total_bytes, progress):
                seconds = restore(repo, snap.id, staging, limits=limits, include=include)
        else:
            ensure_space(staging, size)
            with size_watch(staging, size, progress):
                snap, listing, seconds = restore_while_listing(
                    repo, identity, chosen.snapshot_id, staging, limits=limits)
    result.snapshot_id, result.snapshot_time = snap.id, snap.time
    result.bytes_restored, result.restore_s = listing.total_bytes, seconds
    tree = compare_tree(listing, staging)
    result.checks.append(tree)
    if not tree.passed:
        raise DrillError(f"the restored tree does not match the snapshot: {tree.detail}")
    root = data_root(snap, staging)
    target = config.targets[name]
    recorded = recorded_fingerprints(recorder, snap.id, result.repository)
    if isinstance(target, SqliteTarget) and recorded:
        # The same check a drill runs: the values taken at backup time, on the restored file.
        check = run_check(FingerprintsCheck(fingerprints=True), StepContext(
            data_dir=root, sandbox=staging, snapshot_time=snap.time,
            default_database=root / target.path.name, fingerprints=recorded, limits=limits))
        result.checks.append(check)
        if not check.passed:
            raise DrillError(f"fingerprints differ: {check.detail}")
    return root, snap


def _under(config: Config, name: str, path: str) -> str:
    """Where ``path`` (absolute in the snapshot) lands under a restore's destination."""
    paths = [str(p).rstrip("/") for p in getattr(config.targets[name], "paths", [])]
    if len(paths) == 1 and path.startswith(paths[0] + "/"):
        return path[len(paths[0]) + 1:]
    return path.lstrip("/")


def _included(listing: Listing, include: Sequence[str], snap: Snapshot) -> Listing:
    """What of ``listing`` a restore of ``include`` writes; every path must be there."""
    if not include:
        return listing
    present = {str(node.get("path")) for node in listing.nodes}
    missing = [path for path in include if path not in present]
    if missing:
        raise DrillError(f"not in snapshot {snap.short_id}: {', '.join(missing)}",
                         hint="drkit ls TARGET shows what it holds")
    return listing.only(include)


def _place(root: Path, to: Path, result: RestoreResult, *, overwrite: bool,
           sidecars: dict[str, list[str]], mode: int, units: list[str] | None = None) -> None:
    """Move every entry of ``root`` (or only ``units``, paths relative to it) into ``to``
    (a rename each: same filesystem). With ``overwrite``, an entry of ``to`` in the way (and
    a restored SQLite file's stale journal files) is first moved aside; without it, one that
    appeared meanwhile stops the restore."""
    if to.is_symlink():
        raise DrillError(f"{to} became a symbolic link meanwhile: nothing placed")
    if not to.exists():
        to.mkdir(mode=0o700)
        os.chmod(to, mode)
    if root.stat().st_dev != to.stat().st_dev:
        raise DrillError(f"{to} is on another filesystem than the staging directory: "
                         "nothing placed")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for unit in units if units is not None else sorted(e.name for e in root.iterdir()):
        entry, parent = root / unit, to
        for part in Path(unit).parts[:-1]:  # the directories above an --include'd path
            parent = parent / part
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise DrillError(f"{parent} is not a directory: stopped")
            if not parent.exists():
                parent.mkdir(mode=0o700)
                os.chmod(parent, stat.S_IMODE((root / parent.relative_to(to)).stat().st_mode))
        for name in [entry.name, *sidecars.get(entry.name, [])]:
            dest = parent / name
            if dest.exists() or dest.is_symlink():
                if not overwrite:
                    raise DrillError(f"{dest} appeared meanwhile (no --overwrite): stopped")
                aside = _free_name(parent, f"{name}.before-restore-{stamp}")
                os.rename(dest, aside)
                result.moved_aside[str(dest.relative_to(to))] = str(aside.relative_to(to))
        os.rename(entry, parent / entry.name)
        result.placed.append(unit)
        log.debug("restore %s: placed %s", result.target, parent / entry.name)


def _free_name(directory: Path, name: str) -> Path:
    """``directory / name``, or with ``.2``, ``.3``... when that exists already."""
    candidate, number = directory / name, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = directory / f"{name}.{number}"
    return candidate
