"""drkit's own per-repository lock on this host: backups share it, check and prune take it
alone, so they never run beside each other here. Across hosts, a *gate* keeps the same
promise when one is installed (Prefect's global concurrency limits, for runs of deployments:
:mod:`drkit.flows.slots`), and restic's repository locks (waited for by
:func:`drkit.restic.runner.run_restic`) always do."""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from drkit.catalog.inflight import utcnow
from drkit.errors import DrkitError

log = logging.getLogger("drkit.locks")


class RepositoryBusy(DrkitError):
    """Another drkit run on this host holds the repository for too long."""

    transient = True


# (repository, exclusive, timeout_s, action) -> held for the body; raises RepositoryBusy.
Gate = Callable[[str, bool, float, str], AbstractContextManager[None]]
_gate: Gate | None = None


def install_gate(gate: Gate | None) -> Gate | None:
    """Make every repository lock also pass ``gate`` (shared by all hosts); return the one it
    replaces. Installed by a flow run's tasks, never by the CLI."""
    global _gate
    previous, _gate = _gate, gate
    return previous


@contextmanager
def repository_lock(state_dir: Path, repository: str, *, exclusive: bool, timeout: float,
                    action: str) -> Iterator[str]:
    """Hold the repository's lock (shared or exclusive) for the body; yield when it was got.

    With a gate installed, the gate first (so that waiting for another host never holds this
    host's lock), then this host's lock: always in that order, so two runs never wait for
    each other in a circle. Waits up to ``timeout`` seconds in all, then raises
    :class:`RepositoryBusy`.
    """
    deadline = time.monotonic() + timeout
    gate = _gate
    with gate(repository, exclusive, timeout, action) if gate else nullcontext(), \
            _host_lock(state_dir, repository, exclusive=exclusive, deadline=deadline,
                       timeout=timeout, action=action):
        yield utcnow().isoformat()


@contextmanager
def _host_lock(state_dir: Path, repository: str, *, exclusive: bool, deadline: float,
               timeout: float, action: str) -> Iterator[None]:
    path = state_dir / "locks" / f"{repository}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(path, "a+") as handle:
        told = False
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RepositoryBusy(
                        f"{action}: repository '{repository}' is busy with another drkit run "
                        f"on this host (waited {timeout:.0f} s)") from None
                if not told:
                    log.info("%s: waiting for another run on repository '%s'", action,
                             repository)
                    told = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
