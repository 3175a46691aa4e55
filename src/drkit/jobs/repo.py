"""``repo init``: create the bucket (for S3) and the restic repository, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drkit.catalog.inflight import RunJournal
from drkit.catalog.store import Catalog
from drkit.config.models import Config, Repository
from drkit.errors import DrkitError
from drkit.jobs.common import detect_restic_version, restic_repository, select_names
from drkit.restic import commands
from drkit.restic.errors import RepositoryAlreadyExists
from drkit.restic.runner import mask_url

log = logging.getLogger("drkit.repo")


@dataclass
class RepoInitResult:
    repository: str
    status: str  # "created" | "exists" | "failed"
    bucket_created: bool = False
    error: str | None = None
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def init_repositories(config: Config, catalog: Catalog, journal: RunJournal,
                      names: Sequence[str] = ()) -> list[RepoInitResult]:
    """Create each named repository (all when empty); an existing one is verified, not touched.

    Raises :class:`BadRequestError` for unknown names; other failures are recorded and returned.
    """
    selected = select_names(names, config.repositories, "repository")
    # A copy repository takes its source's chunker parameters: the source first.
    selected = sorted(selected, key=lambda n: config.repositories[n].copy_from is not None)
    version = detect_restic_version(config)
    return [_init_one(config, catalog, journal, name, version) for name in selected]


def _require_posture(name: str, repository: Repository) -> None:
    """Refuse a bucket (new or existing) whose settings contradict the declared posture."""
    from drkit.storage.posture import posture_problems, read_posture

    assert repository.posture is not None
    problems = posture_problems(repository.posture, read_posture(repository))
    if problems:
        raise DrkitError(f"repository '{name}': the bucket contradicts the declared posture: "
                         + "; ".join(problems))


def _same_chunker(config: Config, name: str, found: dict[str, Any], action: str) -> None:
    """A copy repository that exists already must chunk as its source does, or copied data
    would not deduplicate."""
    source = config.repositories[name].copy_from
    assert source is not None
    theirs = commands.cat_config(restic_repository(config, source), action=action)
    if found.get("chunker_polynomial") != theirs.get("chunker_polynomial"):
        raise DrkitError(f"repository '{name}' exists but does not chunk as '{source}' does "
                         "(not created with --copy-chunker-params): copied data would not "
                         "deduplicate; create it anew with drkit repo init")


def _init_one(config: Config, catalog: Catalog, journal: RunJournal, name: str,
              version: str | None) -> RepoInitResult:
    handle = journal.open("repo_init", repository=name, restic_version=version)
    repo = restic_repository(config, name, with_source=True)
    result = RepoInitResult(repository=name, status="failed")
    action = f"repo init {name}"
    try:
        if repo.config.is_s3:
            from drkit.storage.s3 import ensure_bucket

            result.bucket_created = ensure_bucket(name, repo.config)
            if repo.config.posture is not None:
                _require_posture(name, repo.config)
        try:
            commands.init(repo, action=action)
            result.status = "created"
        except RepositoryAlreadyExists:
            found = commands.cat_config(repo, action=action)  # the password opens it
            if repo.source is not None:
                _same_chunker(config, name, found, action)
            result.status = "exists"
    except DrkitError as exc:
        result.error = str(exc)
        log.error("%s", exc)
    evidence = {"url": mask_url(repo.url), "outcome": result.status,
                "bucket_created": result.bucket_created}
    record = catalog.finish_run(handle, status="failed" if result.error else "succeeded",
                                error=result.error, evidence=evidence)
    journal.close(handle)
    result.record_id = record.id
    if not result.error:
        log.info("repository %s: %s%s", name, result.status,
                 " (bucket created)" if result.bucket_created else "")
    return result
