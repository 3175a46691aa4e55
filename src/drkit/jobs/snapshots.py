"""``snapshots``: list drkit's snapshots in every repository the selected targets use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drkit.catalog.chain import canonical_time
from drkit.config.models import Config
from drkit.errors import DrkitError
from drkit.identity import TAG, target_of
from drkit.jobs.common import restic_repository, select_names
from drkit.restic import commands
from drkit.supervise import Limits


@dataclass(frozen=True)
class SnapshotRow:
    id: str
    target: str | None
    repository: str
    time: str
    hostname: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    # A snapshot ``restic copy`` made: the repository it was copied from and its id there.
    copy_of: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "repository": self.repository,
                "time": self.time, "hostname": self.hostname, "paths": list(self.paths),
                "tags": list(self.tags),
                "copy_of": {"repository": self.copy_of[0], "snapshot_id": self.copy_of[1]}
                if self.copy_of else None}


def list_snapshots(config: Config, names: Sequence[str] = (), *, all_hosts: bool = False
                   ) -> tuple[list[SnapshotRow], list[str]]:
    """drkit's snapshots of ``names`` (all targets when empty) made by this deployment's
    host (every host's with ``all_hosts``), oldest first, and the errors. A snapshot in a
    copy repository names the one it is a copy of (restic keeps its original's id).

    A repository that cannot be read adds an error and does not hide the others' snapshots.
    Raises :class:`BadRequestError` for unknown target names.
    """
    selected = select_names(names, config.targets, "target")
    repos = list(dict.fromkeys(
        repo for name in selected for repo in config.holding(name)))
    if not names:
        repos += [name for name in config.repositories if name not in repos]
    rows: list[SnapshotRow] = []
    errors: list[str] = []
    for repo_name in repos:
        repo = restic_repository(config, repo_name)
        try:
            found = commands.snapshots(repo, tags=(TAG,),
                                       host=None if all_hosts else config.host,
                                       action=f"snapshots of {repo_name}",
                                       limits=Limits.after(config.timeouts.restic))
        except DrkitError as exc:
            errors.append(str(exc))
            continue
        source = config.repositories[repo_name].copy_from
        for snap in found:
            target = target_of(snap.tags)
            if names and target not in selected:
                continue
            rows.append(SnapshotRow(
                id=snap.id, target=target, repository=repo_name,
                time=canonical_time(snap.time), hostname=snap.hostname, paths=snap.paths,
                tags=snap.tags,
                # restic also keeps `original` through `tag` and `rewrite`: only a copy
                # repository's snapshots are copies.
                copy_of=(source, snap.original) if source and snap.original else None))
    rows.sort(key=lambda row: row.time)
    return rows, errors
