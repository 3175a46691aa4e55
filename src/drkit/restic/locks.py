"""No restic lock outlives the run that took it.

restic removes its lock when it ends normally. It may not when drkit had to stop it (time
limit, storage watchdog, Ctrl-C: restic 0.14 leaves the lock of an interrupted backup of
files, check, forget or restore behind, even on SIGINT) or when the storage vanished under it
(the delete of its lock fails, as seen with restic 0.14 on ``rclone serve s3`` stopped for
8 s): the lock then stays for restic's 30-minute staleness window, and every exclusive
operation of every other host waits and fails meanwhile. So after such a run drkit runs
``restic unlock``, which removes exactly the locks of processes that no longer run on this
host (that run's among them; a live process's lock is never touched). When the storage does
not answer yet, a marker file remembers it, and the next restic run on that repository from
this host does it first.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from drkit.errors import DrkitError
from drkit.restic.errors import NETWORK
from drkit.supervise import Limits, stopping

if TYPE_CHECKING:
    from drkit.restic.runner import ResticRepository, ResticResult

log = logging.getLogger("drkit.restic")
UNLOCK_LIMIT_S = 60.0
STOPPING_LIMIT_S = 15.0  # while drkit stops (Ctrl-C), the clean-up gets this long


def _marker(repo: ResticRepository) -> Path | None:
    if repo.state_dir is None:
        return None
    return repo.state_dir / "locks" / f"{repo.name}.unlock-pending"


def needs_sweep(result: ResticResult, *, failed: bool) -> bool:
    """Whether the run may have left its lock behind: drkit stopped it, or the storage failed
    during it."""
    return bool(result.stopped or result.storage_retries
                or (failed and NETWORK.search(result.stderr)))


def sweep_after(repo: ResticRepository, result: ResticResult, *, failed: bool,
                action: str) -> None:
    """After a restic run on ``repo``: remove the lock it may have left (see the module)."""
    if needs_sweep(result, failed=failed):
        why = f"restic was stopped ({result.stopped})" if result.stopped else \
            "the storage failed during the run"
        sweep(repo, reason=f"{action}: {why}")


def clear_pending(repo: ResticRepository) -> None:
    """Before a restic run: finish a lock clean-up an earlier run had to leave for later."""
    marker = _marker(repo)
    if marker is not None and marker.exists() and not stopping():
        sweep(repo, reason=f"an earlier run on '{repo.name}' may have left its lock")


def mark_pending(repo: ResticRepository, reason: str) -> None:
    """Remember that the next restic run on ``repo`` from this host must run ``unlock`` first."""
    marker = _marker(repo)
    if marker is not None:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(reason + "\n")


def after_interrupt(repo: ResticRepository, reason: str) -> None:
    """Ctrl-C stopped a restic: remember, then try at once, to remove what it left."""
    mark_pending(repo, reason)
    with contextlib.suppress(Exception):
        sweep(repo, reason=reason)


def sweep(repo: ResticRepository, *, reason: str) -> bool:
    """``restic unlock`` (stale locks of this host only), also while drkit is stopping (a
    clean-up, kept short then); remember it when the storage does not answer. Returns
    whether it ran."""
    from drkit.restic.runner import _run_once

    marker = _marker(repo)
    limit = min(STOPPING_LIMIT_S if stopping() else UNLOCK_LIMIT_S, repo.storage_timeout)
    try:
        # restic's unlock sends SIGHUP to the pid of every lock of this host (younger than
        # 30 minutes) to see whether it still runs: never run it when there is no lock.
        if not _has_locks(repo, limit):
            if marker is not None:
                marker.unlink(missing_ok=True)
            return True
        for _ in range(3):  # a lock file vanishing while unlock reads it is no failure
            result, exit_ = _run_once(
                repo, ("unlock",), action=f"unlock {repo.name}", on_json=None, cwd=None,
                stdin=None, limits=Limits.after(limit), cleanup=True)
            if result.watch_kind != "vanished_lock":
                break
        done = result.returncode == 0 and exit_.stopped is None
    except DrkitError:
        done = False
    if done:
        log.info("%s; removed the locks it left in '%s' (restic unlock: %s)", reason,
                 repo.name, " ".join(result.stdout_lines) or "done")
        if marker is not None:
            marker.unlink(missing_ok=True)
        return True
    log.warning("%s; its lock in '%s' cannot be removed yet (the storage does not answer); "
                "the next run there removes it", reason, repo.name)
    mark_pending(repo, reason)
    return False


def _has_locks(repo: ResticRepository, limit: float) -> bool:
    """Whether the repository holds any lock file (a local one is looked at directly).
    Raises :class:`DrkitError` when the storage cannot be read."""
    from drkit.restic.runner import _run_once, error_of

    url = repo.url.removeprefix("local:")
    if not re.match(r"^[a-z0-9]+:", url):
        locks = Path(url) / "locks"
        return locks.is_dir() and any(locks.iterdir())
    result, exit_ = _run_once(repo, ("--no-lock", "list", "locks"), action=f"locks of "
                              f"{repo.name}", on_json=None, cwd=None, stdin=None,
                              limits=Limits.after(limit), cleanup=True)
    if result.returncode != 0 or exit_.stopped is not None:
        raise error_of(exit_, result, action=f"locks of {repo.name}", limits=Limits.after(limit))
    return bool(result.stdout_lines)
