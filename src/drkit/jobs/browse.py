"""``drkit ls TARGET [PATH]``: what a snapshot holds, without restoring it.

The snapshot is the one a drill or a restore would take: the catalog's newest good backup of
the target by this host in the repository (or ``--snapshot``, checked to be the target's and
this host's). Read-only: nothing is restored and nothing is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drkit.config.models import Config
from drkit.drills.choose import choose_snapshot
from drkit.drills.restore import list_snapshot
from drkit.errors import BadRequestError
from drkit.jobs.common import Recorder, holding_repository, restic_repository
from drkit.restic.commands import Snapshot
from drkit.supervise import Limits


@dataclass
class Browse:
    snapshot: Snapshot
    repository: str
    chosen_by: str
    nodes: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot.id, "snapshot_time": self.snapshot.time.isoformat(),
                "repository": self.repository, "chosen_by": self.chosen_by,
                "paths": self.snapshot.paths,
                "entries": [{key: node.get(key) for key in
                             ("path", "type", "size", "mode", "mtime", "linktarget")
                             if node.get(key) is not None} for node in self.nodes]}


def browse(config: Config, recorder: Recorder, name: str, *, path: str | None = None,
           snapshot: str | None = None, repository: str | None = None) -> Browse:
    """The entries of ``name``'s snapshot under ``path`` (absolute as in the snapshot, or
    relative to the target's one backed-up path)."""
    repo_name = holding_repository(config, name, repository)
    repo = restic_repository(config, repo_name)
    identity = config.identity(name)
    limits = Limits.after(config.timeouts.restic)
    choice = choose_snapshot(recorder, repo, identity, snapshot, "newest", limits)
    if choice.snapshot is not None and choice.listing is not None:
        snap, listing = choice.snapshot, choice.listing
    else:
        snap, listing = list_snapshot(repo, identity, choice.snapshot_id, limits=limits)
    nodes = listing.nodes
    if path:
        base = path if path.startswith("/") or len(snap.paths) != 1 else \
            f"{snap.paths[0].rstrip('/')}/{path}"
        base = "/" + base.strip("/")
        nodes = [n for n in nodes if str(n.get("path")) == base
                 or str(n.get("path", "")).startswith(base + "/")]
        if not nodes:
            raise BadRequestError(f"{base} is not in snapshot {snap.short_id} of {name}")
    return Browse(snapshot=snap, repository=repo_name, chosen_by=choice.reason, nodes=nodes)
