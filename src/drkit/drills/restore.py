"""Restoring one step: list the chosen snapshot, check free space, ``restic restore --verify``,
then compare the restored tree with the snapshot's own listing (paths, types, sizes)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drkit.drills.checks import CheckResult
from drkit.errors import DrkitError
from drkit.identity import SnapshotIdentity, target_tag
from drkit.restic.commands import Snapshot
from drkit.restic.errors import ResticFailed
from drkit.restic.runner import ResticRepository, run_restic
from drkit.supervise import NO_LIMITS, Limits, terminate_all
from drkit.units import human_bytes

SPACE_MARGIN = 1.10  # restore needs the data's size plus some room


class DrillError(DrkitError):
    """A step could not be restored (no snapshot, no space, restic failed)."""


@dataclass(frozen=True)
class Listing:
    """What the snapshot holds, from ``restic ls --json``."""

    nodes: list[dict[str, Any]]

    @property
    def files(self) -> list[dict[str, Any]]:
        return [node for node in self.nodes if node.get("type") == "file"]

    @property
    def total_bytes(self) -> int:
        return sum(int(node.get("size", 0)) for node in self.files)

    def only(self, paths: Sequence[str]) -> Listing:
        """The nodes a restore ``--include``-ing ``paths`` (absolute, as in the snapshot)
        writes: each path, everything under it, and the directories above it."""
        if not paths:
            return self
        wanted = [path.rstrip("/") for path in paths]

        def kept(node: dict[str, Any]) -> bool:
            path = str(node.get("path", ""))
            return any(path == p or path.startswith(p + "/") or p.startswith(path + "/")
                       for p in wanted)

        return Listing(nodes=[node for node in self.nodes if kept(node)])


class NotThisTarget(DrillError):
    """The snapshot asked for belongs to another target (``--snapshot`` names another step's
    snapshot)."""


class SnapshotNotFound(DrillError):
    """No snapshot with that id in the repository (``--snapshot`` may name a snapshot of
    another step's repository)."""


def list_snapshot(repo: ResticRepository, identity: SnapshotIdentity, snapshot_id: str, *,
                  limits: Limits = NO_LIMITS) -> tuple[Snapshot, Listing]:
    """Snapshot ``snapshot_id`` of ``identity`` in ``repo`` and every node it holds, in one
    ``restic ls --json`` call.

    One call, not ``snapshots`` then ``ls``: each restic start derives the repository key,
    which costs about half a second. Raises :class:`DrillError` when there is no such snapshot
    or it is another host's, :class:`NotThisTarget` when it is another target's.
    """
    missing = SnapshotNotFound(f"target '{identity.target}': snapshot {snapshot_id[:8]} is not "
                               f"in repository '{repo.name}'")
    try:
        result = run_restic(repo, ("ls", "--json", snapshot_id),
                            action=f"listing {identity.target}'s snapshot {snapshot_id[:8]} in "
                                   f"'{repo.name}'", limits=limits)
    except ResticFailed as exc:  # restic >= 0.17 fails on an unknown id; 0.14 prints nothing
        if re.search(r"no matching ID found|no snapshot|failed to load snapshot", exc.stderr,
                     re.IGNORECASE):
            raise missing from None
        raise
    heads = [m for m in result.messages if m.get("struct_type") == "snapshot"]
    if not heads:
        raise missing
    snapshot = Snapshot.from_json(heads[0])
    if target_tag(identity.target) not in snapshot.tags:
        raise NotThisTarget(f"snapshot {snapshot_id[:8]} in '{repo.name}' is not target "
                            f"'{identity.target}''s")
    if snapshot.hostname != identity.host:
        raise DrillError(f"snapshot {snapshot_id[:8]} in '{repo.name}' was made by host "
                         f"'{snapshot.hostname}', not by this deployment's host "
                         f"'{identity.host}': drills restore only their own host's backups")
    nodes = [m for m in result.messages if m.get("struct_type") == "node"]
    return snapshot, Listing(nodes=nodes)


def ensure_space(directory: Path, needed: int) -> None:
    """Fail before restoring when ``directory``'s filesystem cannot hold ``needed`` bytes."""
    free = shutil.disk_usage(directory).free
    if needed * SPACE_MARGIN > free:
        raise DrillError(f"not enough space in {directory}: the snapshot needs "
                         f"{human_bytes(needed)}, {human_bytes(free)} free",
                         hint="free space or point drills.sandbox_dir at a larger disk")


def restore(repo: ResticRepository, snapshot_id: str, into: Path, *,
            limits: Limits = NO_LIMITS, include: Sequence[str] = ()) -> float:
    """``restic restore --verify`` of ``snapshot_id`` into ``into`` (only ``include``'s
    paths and what is under them, when given); return the seconds it took. restic's own
    verification re-reads every restored file and checks its content."""
    start = time.monotonic()
    only = tuple(arg for path in include for arg in ("--include", path))
    run_restic(repo, ("restore", snapshot_id, "--target", str(into), "--verify", *only),
               action=f"restore of snapshot {snapshot_id[:8]} from '{repo.name}'",
               limits=limits)
    return time.monotonic() - start


@contextmanager
def size_watch(directory: Path, total: int | None,
               hook: Callable[[int, int | None], None] | None) -> Iterator[None]:
    """While the block runs, tell ``hook`` every second how many bytes of files are under
    ``directory`` (out of ``total``): restore progress that works with every restic version
    (0.14 prints none). Nothing happens without a hook."""
    if hook is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            hook(_bytes_under(directory), total)

    worker = threading.Thread(target=watch, name="drkit-progress", daemon=True)
    worker.start()
    try:
        yield
    finally:
        done.set()
        worker.join()
        hook(_bytes_under(directory), total)


def _bytes_under(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def restore_while_listing(repo: ResticRepository, identity: SnapshotIdentity,
                          snapshot_id: str, into: Path, *, limits: Limits = NO_LIMITS,
                          include: Sequence[str] = ()) -> tuple[Snapshot, Listing, float]:
    """Restore ``snapshot_id`` (one the catalog recorded as ``identity``'s good backup) and,
    at the same time, list it (:func:`list_snapshot`): the listing is needed only after the
    restore, to compare the restored tree with, and a separate pass before it would cost a
    second key derivation and tree walk on the drill's critical path. If the listing shows
    the snapshot is not ``identity``'s, that error is raised once the restore has ended (the
    restored data stays in the sandbox, is never checked, and is removed with it).

    A failed restore is raised at once (the listing ends on its own); Ctrl-C or SIGTERM stops
    the listing's restic too."""
    outcome: dict[str, Any] = {}

    def list_it() -> None:
        try:
            outcome["listed"] = list_snapshot(repo, identity, snapshot_id, limits=limits)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=list_it, name="drkit-ls", daemon=True)
    worker.start()
    try:
        seconds = restore(repo, snapshot_id, into, limits=limits, include=include)
    except KeyboardInterrupt:
        terminate_all()  # the listing's restic: nothing will read what it prints
        raise
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    snapshot, listing = outcome["listed"]
    return snapshot, listing, seconds


def compare_tree(listing: Listing, into: Path) -> CheckResult:
    """Compare the restored tree with the snapshot's listing: every node present, of the
    right type, files of the right size, symlinks pointing where they did."""
    from datetime import UTC, datetime

    started_at = datetime.now(UTC).replace(tzinfo=None)
    start = time.monotonic()
    missing: list[str] = []
    wrong: list[str] = []
    for node in listing.nodes:
        rel = str(node.get("path", "")).lstrip("/")
        path = into / rel
        kind = node.get("type")
        if kind == "symlink":
            if not path.is_symlink():
                missing.append(rel)
            elif str(path.readlink()) != node.get("linktarget", str(path.readlink())):
                wrong.append(f"{rel} (link target)")
        elif not path.exists() and not path.is_symlink():
            missing.append(rel)
        elif kind == "dir" and not path.is_dir():
            wrong.append(f"{rel} (not a directory)")
        elif kind == "file":
            size = path.stat().st_size
            if size != int(node.get("size", 0)):
                wrong.append(f"{rel} (size {size}, snapshot {node.get('size')})")
    problems = _summarise("missing", missing) + _summarise("wrong", wrong)
    count = len(listing.nodes)
    files = len(listing.files)
    detail = (f"{count} entr{'y' if count == 1 else 'ies'}, "
              f"{files} file{'' if files == 1 else 's'}, "
              f"{human_bytes(listing.total_bytes)} match the snapshot"
              if not problems else "; ".join(problems))
    return CheckResult(name="restored tree matches snapshot listing",
                       status="failed" if problems else "passed", detail=detail,
                       duration_s=time.monotonic() - start, started_at=started_at)


def _summarise(label: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return [f"{len(items)} {label}: {shown}"]


def data_root(snapshot: Snapshot, into: Path) -> Path:
    """Where the target's data is after restoring: under its one backed-up path, else the
    restore directory itself (several paths, or a staged copy stored under its own name)."""
    if len(snapshot.paths) == 1:
        candidate = into / snapshot.paths[0].lstrip("/")
        # Never through a symlink (a backed-up path that is a link to production's data):
        # the data a drill checks is the restored data, inside the sandbox.
        if candidate.is_dir() and not candidate.is_symlink() and \
                into.resolve() in candidate.resolve().parents:
            return candidate
    return into
