"""Helpers shared by jobs: resolving names from the config, building restic handles."""

from __future__ import annotations

import contextvars
import difflib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drkit.catalog.inflight import RunJournal
from drkit.config.models import Config
from drkit.errors import BadRequestError
from drkit.restic.errors import ResticError
from drkit.restic.runner import ResticRepository, restic_version

if TYPE_CHECKING:
    from drkit.catalog.store import Catalog

log = logging.getLogger("drkit")


def select_names(requested: Sequence[str], declared: Iterable[str], what: str) -> list[str]:
    """``requested`` names (all ``declared`` when empty), checked; unknown ones are a bad request.

    Raises :class:`BadRequestError` naming every unknown name, with a close match if any.
    """
    known = list(declared)
    if not requested:
        return known
    problems = []
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(f"unknown {what} {name!r}" + (f" (did you mean {close[0]!r}?)"
                                                          if close else ""))
    if problems:
        listing = ", ".join(known) if known else "none declared"
        raise BadRequestError("; ".join(problems) + f"; declared {what}s: {listing}")
    return list(dict.fromkeys(requested))


def detect_restic_version(config: Config) -> str | None:
    """restic's version for the records, or None (logged) when restic cannot run: then every
    run fails on its own, and each failure is recorded."""
    try:
        return restic_version(config.restic_binary, config.state_dir)
    except ResticError as exc:
        log.error("%s", exc)
        return None


def holding_repository(config: Config, target: str, repository: str | None) -> str:
    """``repository`` (default: the target's first), checked to hold ``target``'s snapshots
    (its own repositories or their copies); a bad request otherwise."""
    from drkit.errors import BadRequestError

    if target not in config.targets:
        raise BadRequestError(f"unknown target {target!r}",
                              hint="known targets: " + ", ".join(config.targets))
    holding = config.holding(target)  # its own repositories, then their copies
    name = repository or holding[0]
    if name not in holding:
        raise BadRequestError(f"target {target!r} is not backed up to {name!r}",
                              hint="its repositories: " + ", ".join(holding))
    return name


def restic_repository(config: Config, name: str, *, with_source: bool = False
                      ) -> ResticRepository:
    """The restic handle for repository ``name`` of ``config`` (``with_source``: also the
    repository it copies from, for ``restic copy`` and its ``init``)."""
    repo = config.repositories[name]
    source = config.repositories[repo.copy_from] \
        if with_source and repo.copy_from is not None else None
    return ResticRepository(name=name, config=repo, source=source,
                            binary=config.restic_binary, lock_timeout=config.lock_timeout,
                            storage_timeout=config.timeouts.storage,
                            state_dir=config.state_dir, call_timeout=config.timeouts.restic)


def open_config_catalog(config: Config, *, recover: RunJournal | None = None) -> Catalog:
    """The catalog of ``config`` (its records carry the config's ``host`` identity); with
    ``recover``, runs of that journal cut short by a crash are recorded as interrupted."""
    from drkit.catalog.store import open_catalog
    from drkit.jobs.evidence import prepare_catalog

    _remember_url_password(config.catalog)  # masked wherever it turns up, like a secret
    catalog = open_catalog(config.catalog, base_dir=config.base_dir, hostname=config.host,
                           secrets=config_secrets(config))
    prepare_catalog(catalog, config)
    if recover is not None:
        catalog.recover_interrupted(recover)
    return catalog


def _remember_url_password(url: str) -> None:
    from urllib.parse import unquote, urlsplit

    from drkit.config.secrets import remember

    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        remember(password)
        remember(unquote(password))


def config_secrets(config: Config) -> list[str]:
    """Every secret value the config references that can be resolved here (for masking)."""
    from drkit.config.secrets import collect_secrets

    return collect_secrets(config)


@dataclass(frozen=True)
class Recorder:
    """Where runs are journaled while in flight and recorded when done."""

    journal: RunJournal
    catalog: CatalogOpener
    config: Config

    @classmethod
    def for_config(cls, config: Config) -> Recorder:
        journal = RunJournal(config.state_dir)
        return cls(journal=journal, catalog=CatalogOpener(config, journal), config=config)


class CatalogOpener:
    """Opens the catalog in a background thread while the caller starts its real work.

    Importing SQLAlchemy and connecting take about half a second; a backup journals its runs
    in files (:class:`RunJournal`), starts restic, and only then calls :meth:`start`, so the
    import runs while restic works instead of competing with the start-up for the GIL.
    :meth:`get` (which starts it if nobody did) returns the catalog or raises its error.
    """

    def __init__(self, config: Config, journal: RunJournal) -> None:
        self._config = config
        self._journal = journal
        self._result: Catalog | None = None
        self._error: BaseException | None = None
        # In the caller's context: the catalog belongs to whoever made the recorder (a flow
        # task checkpoints and closes its own catalogs).
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._open,), name="drkit-catalog", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin opening the catalog in the background (once)."""
        with self._lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    def _open(self) -> None:
        try:
            self._result = open_config_catalog(self._config, recover=self._journal)
        except BaseException as exc:
            self._error = exc

    def get(self) -> Catalog:
        """The open catalog (waits for it). Raises whatever opening it raised."""
        self.start()
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def refuse_elsewhere(config: Config, name: str) -> None:
    """A target bound to another host is never backed up (or spot-checked) here: its data is
    not here, or is this host's, which would be recorded as the target's."""
    if not config.runs_here(name):
        raise BadRequestError(f"target '{name}' runs on host '{config.host_of(name)}'; "
                              f"this is '{config.host}'",
                              hint="run it there (drkit backup, or a worker started for that "
                                   "host: drkit worker)")
