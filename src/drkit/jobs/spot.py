"""``drkit check --spot TARGET``: does the source still match its newest good snapshot?

Like borgmatic's ``spot`` check, from the other side: a random sample of the files the
snapshot holds that the source says have not changed since (same size, same modification
time) is restored into a private staging directory and compared byte for byte with the
source. Such a file must be identical; one that is not changed behind drkit's back (content
rewritten with its timestamp kept, bit rot, a tool that restores mtimes). The file counts of
source and snapshot are compared too. Tolerances are declared per target (``spot:``).
The run is recorded (kind ``spot``); the sample restore never touches the source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.catalog.inflight import RunJournal, utcnow
from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.common import holding_repository, refuse_elsewhere, restic_repository
from drkit.jobs.staging import staging_dir
from drkit.notify import notify_failure
from drkit.restic.commands import parse_restic_time
from drkit.supervise import Limits
from drkit.targets.files import FilesTarget
from drkit.targets.sample import walk

log = logging.getLogger("drkit.spot")
_GLOB = set("*?[]\\")
WALK_BUDGET = 1_000_000


@dataclass
class SpotRun:
    target: str
    repository: str
    status: str
    snapshot_id: str | None = None
    source_files: int | None = None
    snapshot_files: int | None = None
    sampled: int = 0
    differing: list[str] = field(default_factory=list)
    changed_since: int = 0
    errors: list[str] = field(default_factory=list)
    record_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _pick(steady: list[str], source: dict[str, os.stat_result], count: int, max_bytes: int,
          rng: random.Random | None) -> list[str]:
    """Up to ``count`` random paths of ``steady`` holding at most ``max_bytes`` together."""
    order = list(steady)
    (rng or random.SystemRandom()).shuffle(order)
    chosen: list[str] = []
    total = 0
    for path in order:
        if len(chosen) >= count:
            break
        if total + source[path].st_size <= max_bytes:
            chosen.append(path)
            total += source[path].st_size
    return chosen


def _moved(before: os.stat_result, path: str) -> bool:
    """Whether the file changed since it was first looked at (size, mtime, ctime)."""
    try:
        now = os.lstat(path)
    except OSError:
        return True
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
        (before.st_size, before.st_mtime_ns, before.st_ctime_ns)


def spot_check(config: Config, catalog: Catalog, journal: RunJournal, name: str, *,
               repository: str | None = None, rng: random.Random | None = None) -> SpotRun:
    """Spot-check target ``name`` (a files target) against its newest good snapshot in
    ``repository`` (default: its first). Recorded; a bad request for other kinds."""
    from drkit.catalog.snapshots import newest_good_snapshot
    from drkit.drills.restore import list_snapshot, restore

    if name not in config.targets:
        raise BadRequestError(f"unknown target {name!r}",
                              hint="known targets: " + ", ".join(config.targets))
    target = config.targets[name]
    if not isinstance(target, FilesTarget):
        raise BadRequestError(f"target {name!r} is a {target.kind} target: --spot compares "
                              "a files target's source tree with its snapshot")
    refuse_elsewhere(config, name)  # the source tree is on the target's host
    repo_name = holding_repository(config, name, repository)
    handle = journal.open("spot", target=name, repository=repo_name)
    run = SpotRun(target=name, repository=repo_name, status="failed")
    evidence: dict[str, Any] = {"tolerances": target.spot.model_dump(),
                                "host": config.host_of(name)}
    try:
        with catalog.read_session() as session:
            good = newest_good_snapshot(session, target=name, repository=repo_name,
                                        host=config.host_of(name))
        if good is None:
            raise BadRequestError(f"no good backup of {name!r} in {repo_name!r} is recorded")
        run.snapshot_id = good.snapshot_id
        repo = restic_repository(config, repo_name)
        limits = Limits.after(config.timeouts.restic)
        snapshot, listing = list_snapshot(repo, config.identity(name),
                                          good.snapshot_id, limits=limits)
        files = {str(node["path"]): node for node in listing.files}
        walked = walk([str(p) for p in target.paths], budget=WALK_BUDGET,
                      exclude=target.exclude)
        source = {path: info for path, info in walked.files}
        run.source_files, run.snapshot_files = len(source), len(files)
        evidence["walk_truncated"] = walked.truncated
        gap = abs(len(source) - len(files)) / max(1, len(files))
        if walked.truncated:  # a partial count says nothing; the content sample still does
            evidence["count_not_compared"] = f"the walk stopped after {WALK_BUDGET} entries"
        elif gap > target.spot.count_tolerance:
            run.errors.append(f"the source holds {len(source)} files, the snapshot "
                              f"{len(files)}: {gap:.1%} apart, more than the "
                              f"{target.spot.count_tolerance:.1%} tolerated")
        steady = []
        for path, node in files.items():
            info = source.get(path)
            if info is None or _GLOB & set(path):
                continue
            mtime = parse_restic_time(str(node.get("mtime"))).timestamp()
            if info.st_size == int(node.get("size", -1)) and abs(info.st_mtime - mtime) < 1e-3:
                steady.append(path)
            else:
                run.changed_since += 1
        chosen = _pick(steady, source, target.spot.sample, target.spot.max_bytes, rng)
        run.sampled = len(chosen)
        if chosen:
            with staging_dir(config.state_dir, f"spot-{name}") as into:
                restore(repo, snapshot.id, into, include=chosen, limits=limits)
                for path in chosen:
                    if _sha256(into / path.lstrip(os.sep)) == _sha256(Path(path)):
                        continue
                    if _moved(source[path], path):  # written while we read it: a change
                        run.changed_since += 1
                        continue
                    run.differing.append(path)
        share = len(run.differing) / max(1, run.sampled)
        if share > target.spot.content_tolerance:
            run.errors.append(
                f"{len(run.differing)} of {run.sampled} sampled files that look unchanged "
                f"since the backup (same size and time) differ from the snapshot "
                f"(changed behind drkit's back?): {', '.join(run.differing[:5])}")
    except DrkitError as exc:
        if isinstance(exc, BadRequestError):
            journal.close(handle)
            raise
        run.errors.append(describe(exc))
    run.status = "failed" if run.errors else "passed"
    evidence.update({"source_files": run.source_files, "snapshot_files": run.snapshot_files,
                     "sampled": run.sampled, "differing": run.differing[:50],
                     "changed_since_backup": run.changed_since, "errors": run.errors,
                     "checked_at": utcnow()})
    record = catalog.finish_run(handle, status=run.status, snapshot_id=run.snapshot_id,
                                evidence=evidence, error="; ".join(run.errors)[:4000] or None)
    journal.close(handle)
    run.record_id = record.id
    if run.errors:
        for error in run.errors:
            log.error("spot check %s: %s", name, error)
        notify_failure(config, "spot", run.status, target=name, repository=repo_name,
                       errors=run.errors, record_id=record.id)
    return run
