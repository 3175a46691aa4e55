"""One writer per repository across hosts: Prefect global concurrency limits.

Each repository has one limit of :data:`SLOTS` slots, named after a hash of the repository's
URL (so two sites, or two names, for one URL share it; spell the URL the same way). A backup
occupies one slot (backups run beside each other, as restic allows); prune and check occupy
every slot, so they run alone, whichever hosts the runs are on. A run that cannot get its
slots within the config's ``lock_timeout`` fails as "busy" (transient: retried with
``retries``), recorded like any failed run. Leases expire when a holder dies (kill -9, host
lost), so a crash frees the repository after the lease duration. A lease that cannot be
renewed (the Prefect API away for a while) is logged, not fatal: the run goes on without the
cross-host exclusion, with restic's lock guarding each restic command only.

Installed as the gate of :func:`drkit.jobs.locks.repository_lock` while a flow run's task
works; the CLI, which has no Prefect server, never uses it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from drkit.config.models import Config
from drkit.jobs.locks import Gate, RepositoryBusy

log = logging.getLogger("drkit.slots")
SLOTS = 100  # shared holders per repository at most; an exclusive holder takes them all
LEASE_S = 300.0  # a dead holder's slots come back after this


def limit_name(config: Config, repository: str) -> str:
    """The global concurrency limit of ``repository`` (by its URL: one per real repository,
    whatever each config calls it)."""
    url = config.repositories[repository].url.rstrip("/")
    return f"drkit-repository-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def ensure_limits(config: Config, repositories: list[str]) -> None:
    """Create the limits of ``repositories`` that do not exist yet (another host may create
    one at the same moment: that is fine)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for repository in repositories:
            name = limit_name(config, repository)
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=SLOTS))
                    log.info("created global concurrency limit %s (%d slots)", name, SLOTS)
                except ObjectAlreadyExists:
                    pass


def prefect_gate(config: Config) -> Gate:
    """The gate for :func:`drkit.jobs.locks.install_gate`."""

    @contextmanager
    def gate(repository: str, exclusive: bool, timeout: float, action: str) -> Iterator[None]:
        from prefect.concurrency.sync import concurrency

        name = limit_name(config, repository)
        log.info("%s: asks for repository '%s' %s across hosts (limit %s)", action, repository,
                 "alone" if exclusive else "shared", name)
        held = concurrency(name, occupy=SLOTS if exclusive else 1,
                           timeout_seconds=max(timeout, 1.0), strict=True,
                           lease_duration=LEASE_S, raise_on_lease_renewal_failure=False)
        try:  # only the wait for the slots is caught here, never the body's errors
            ensure_limits(config, [repository])
            held.__enter__()
        except TimeoutError:
            raise RepositoryBusy(
                f"{action}: repository '{repository}' is held by another run, here or on "
                f"another host (Prefect concurrency limit {name}; waited {timeout:.0f} s)"
            ) from None
        except Exception as exc:  # the API away, the limit deleted or changed
            raise RepositoryBusy(
                f"{action}: cannot take repository '{repository}' across hosts: Prefect "
                f"concurrency limit {name}: {type(exc).__name__}: {exc}") from None
        log.info("%s: holds repository '%s' %s across hosts", action, repository,
                 "alone" if exclusive else "shared")
        try:
            yield
        except BaseException:
            with suppress(Exception):  # the body's error is the one to tell
                held.__exit__(*sys.exc_info())
            raise
        try:
            held.__exit__(None, None, None)
        except Exception as exc:  # the API away: the lease lapses by itself
            log.warning("%s: could not give repository '%s' back across hosts (%s: %s); "
                        "its slots free themselves within %.0f s", action, repository,
                        type(exc).__name__, exc, LEASE_S)

    return gate
