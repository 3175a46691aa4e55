"""``check``: restic's integrity check (structure plus a rotating read-data slice) and the
storage posture of S3 buckets, one catalog record per repository."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from drkit.catalog.inflight import RunJournal
from drkit.catalog.models import Record
from drkit.catalog.store import Catalog
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.common import detect_restic_version, restic_repository, select_names
from drkit.jobs.locks import repository_lock
from drkit.notify import notify_failure
from drkit.restic import commands
from drkit.restic.commands import Snapshot
from drkit.restic.runner import ResticRepository
from drkit.supervise import Limits

log = logging.getLogger("drkit.check")

_SUBSET = re.compile(r"^(?:(\d+)/(\d+)|(\d{1,3}(?:\.\d+)?)%)$")


@dataclass
class CheckRun:
    repository: str
    status: str
    read_data_subset: str | None
    duration_s: float
    errors: list[str] = field(default_factory=list)
    posture: dict[str, Any] | None = None
    record_id: int | None = None
    transient: bool = False  # stopped by something that may pass (storage down, locked)
    freshness: dict[str, Any] | None = None  # the freshness verdict recorded beside it

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def slices_of(setting: str) -> int:
    """How many slices a configured subset cuts the data into: ``5%`` -> 20, ``1/3`` -> 3."""
    match = _SUBSET.match(setting.strip())
    if not match:
        raise BadRequestError(f"read-data subset {setting!r}: write n/m or a percentage")
    if match.group(2):
        return max(1, int(match.group(2)))
    percent = float(match.group(3))
    if not 0 < percent <= 100:
        raise BadRequestError(f"read-data subset {setting!r}: a percentage from 0 to 100")
    return max(1, round(100 / percent))


def next_slice(catalog: Catalog, repository: str, slices: int,
               hosts: tuple[str, ...] = ()) -> int:
    """The slice (1..slices) to read next: the one after the last slice whose data read
    passed, the same again when its read found damage or could not run, 1 when none was read
    yet. Only the data read counts: a storage-posture finding or a snapshot missing from the
    repository fails the check but does not hold the rotation back. State lives in the
    catalog's check records: this host's and those of ``hosts`` (the site's, which may each
    run the site's check)."""
    with catalog.read_session() as session:
        rows = session.execute(
            select(Record.status, Record.evidence)
            .where(Record.kind == "check", Record.repository == repository,
                   Record.hostname.in_({catalog.hostname, *hosts}))
            .order_by(Record.seq.desc()).limit(50)).all()
    for status, evidence in rows:
        data = json.loads(evidence)
        cut = data.get("slice") or {}
        if cut.get("of") == slices:
            last = int(cut["n"])
            # Records before drkit kept the data verdict apart fall back on the status.
            verdict = (data.get("data") or {}).get("status", status)
            return last % slices + 1 if verdict == "passed" else last
    return 1


def run_checks(config: Config, catalog: Catalog, journal: RunJournal,
               names: Sequence[str] = (), *, subset: str | None = None,
               freshness_only: bool = False, now: datetime | None = None) -> list[CheckRun]:
    """Check each named repository (all when empty). ``subset`` (from the command line) reads
    exactly that; otherwise ``checks.read_data_subset`` is read in rotating slices. Every
    check also records the repository's freshness apart (:mod:`drkit.jobs.freshness`, as of
    ``now``: its own record, its own verdict) and measures its stored size
    (:mod:`drkit.jobs.capacity`); ``freshness_only`` does only the freshness.
    Raises :class:`BadRequestError` for unknown names or a malformed subset."""
    from drkit.drills.plans import load_plans
    from drkit.jobs.freshness import target_rpos

    selected = select_names(names, config.repositories, "repository")
    if subset is not None:
        slices_of(subset)  # validate before anything runs
    rpos = target_rpos(load_plans(config))
    if freshness_only:
        return [_freshness_only(config, catalog, name, rpos, now) for name in selected]
    version = detect_restic_version(config)
    return [_check_one(config, catalog, journal, name, subset, version,
                       _Freshness(rpos, now)) for name in selected]


def _freshness_only(config: Config, catalog: Catalog, name: str, rpos: dict[str, float],
                    now: datetime | None) -> CheckRun:
    """``check --freshness``: one snapshot listing, judged and recorded."""
    from drkit.jobs.freshness import record_freshness

    start = time.monotonic()
    listed, error = None, None
    try:
        listed = commands.snapshots(restic_repository(config, name),
                                    action=f"freshness of {name}",
                                    limits=Limits.after(config.timeouts.restic))
    except DrkitError as exc:
        error = exc
    fresh = record_freshness(config, catalog, name, listed, rpos, now=now, error=error)
    return CheckRun(repository=name, status=fresh.status, read_data_subset=None,
                    duration_s=round(time.monotonic() - start, 3), errors=fresh.errors,
                    record_id=fresh.record_id, transient=fresh.transient,
                    freshness=fresh.to_json())


@dataclass(frozen=True)
class _Freshness:
    rpos: dict[str, float]
    now: datetime | None


def _missing_snapshots(catalog: Catalog, repo: ResticRepository, present: list[str],
                       hosts: tuple[str, ...] = ()) -> list[str]:
    """Snapshots the catalog recorded as backed up (and not pruned) that the repository no
    longer has: restic's own check cannot see a deleted snapshot file."""
    from drkit.catalog import snapshots as known

    with catalog.read_session() as session:
        expected = {}  # this host's backups and those of the site's other hosts
        for host in sorted({catalog.hostname, *hosts}):
            expected.update(known.expected_snapshots(session, repo.name, host))
    missing = []
    for snapshot_id, (target, when) in sorted(expected.items(), key=lambda item: item[1][1]):
        if not any(full.startswith(snapshot_id) for full in present):
            missing.append(f"snapshot {snapshot_id} (backup of {target} at "
                           f"{when.isoformat(timespec='seconds')}Z) is missing from the "
                           "repository: deleted outside drkit?")
    return missing


def _check_one(config: Config, catalog: Catalog, journal: RunJournal, name: str,
               subset: str | None, version: str | None, fresh: _Freshness) -> CheckRun:
    handle = journal.open("check", repository=name, restic_version=version)
    repo = restic_repository(config, name)
    evidence: dict[str, Any] = {}
    configured = config.checks.read_data_subset if config.checks else None
    if subset is None and configured and configured.strip() not in ("100%", "1/1"):
        slices = slices_of(configured)
        n = next_slice(catalog, name, slices, tuple(config.site_hosts()))
        subset = f"{n}/{slices}"
        evidence["slice"] = {"n": n, "of": slices}
    elif subset is None:
        subset = configured
    evidence["read_data_subset"] = subset
    start = time.monotonic()
    action = f"check {name}"
    limits = Limits.after(config.timeouts.check)
    try:
        data = _check_data(config, repo, subset, evidence, action=action, limits=limits)
        data_s = round(time.monotonic() - start, 3)
        listed, found = _check_snapshots(catalog, repo, data, action=action, limits=limits,
                                         hosts=tuple(config.site_hosts()))
        posture = _check_posture(repo)
        if data.status != "not_run":
            from drkit.jobs.capacity import measure

            evidence["stats"] = measure(repo, action=action, limits=limits)
    except KeyboardInterrupt:  # recorded as such now, not left for the next start to find
        catalog.finish_run(handle, status="interrupted", error="interrupted by the user",
                           evidence=evidence)
        journal.close(handle)
        raise
    errors = data.errors + listed.errors + posture.errors
    duration = time.monotonic() - start
    status = "failed" if errors else "passed"
    evidence.update({"errors": errors, "posture": posture.found,
                     "data": {"status": data.status, "errors": data.errors,
                              "duration_s": data_s},
                     "snapshots": {"status": listed.status, "errors": listed.errors},
                     "posture_check": {"status": posture.status, "errors": posture.errors},
                     "duration_s": round(duration, 3)})
    if repo.config.posture is not None:
        evidence["posture_demanded"] = repo.config.posture.model_dump()
    record = catalog.finish_run(handle, status=status, evidence=evidence,
                                error="; ".join(errors)[:4000] or None)
    journal.close(handle)
    if errors:
        notify_failure(config, "check", status, repository=name, errors=errors,
                       run_id=handle.run_id, record_id=record.id)
    if "total_size" in (evidence.get("stats") or {}):
        _warn_of_quota(config, catalog, name)
    for error in errors:
        log.error("%s: %s", action, error)
    if not errors:
        log.info("%s: passed (read data: %s, %.1f s)", action, subset or "none", duration)
    freshness = None
    if found is not None:  # judged from the list the check read: recorded apart
        from drkit.jobs.freshness import record_freshness

        freshness = record_freshness(config, catalog, name, found, fresh.rpos,
                                     now=fresh.now).to_json()
    stopped_by = data.transient + listed.transient + posture.transient
    return CheckRun(repository=name, status=status, read_data_subset=subset,
                    duration_s=round(duration, 3), errors=errors, posture=posture.found,
                    record_id=record.id, freshness=freshness,
                    transient=bool(stopped_by) and len(stopped_by) == len(errors)
                    and all(stopped_by))


def _warn_of_quota(config: Config, catalog: Catalog, name: str) -> None:
    """After a check measured the repository: warn (log, webhook) when its growth trend
    reaches its quota within ``warn_before``."""
    from drkit.catalog.capacity import forecast
    from drkit.catalog.inflight import utcnow

    if config.repositories[name].quota is None:
        return
    with catalog.read_session() as session:
        found = forecast(config, session, name, utcnow())
    if found.warn:
        log.warning("%s", found.describe())
        notify_failure(config, "capacity", "warning", repository=name, size=found.size,
                       quota=found.quota, days_to_quota=found.days_to_quota,
                       quota_at=found.quota_at)


@dataclass
class _Part:
    """One part of a check: its verdict (``passed``, ``failed``, or ``not_run`` when it could
    not run at all), errors, whether each error may pass, and what was found."""

    status: str = "passed"
    errors: list[str] = field(default_factory=list)
    transient: list[bool] = field(default_factory=list)
    found: dict[str, Any] | None = None

    def fail(self, error: str, *, transient: bool = False, ran: bool = True) -> None:
        self.status = "failed" if ran else "not_run"
        self.errors.append(error)
        self.transient.append(transient)


def _check_data(config: Config, repo: ResticRepository, subset: str | None,
                evidence: dict[str, Any], *, action: str, limits: Limits) -> _Part:
    """restic's check: the structure and the read-data slice. Its verdict alone moves the
    slice rotation on."""
    part = _Part()
    try:
        with repository_lock(config.state_dir, repo.name, exclusive=True,
                             timeout=config.lock_timeout, action=action):
            outcome = commands.check(repo, read_data_subset=subset, action=action,
                                     limits=limits)
        for error in outcome.errors:
            part.fail(error)
        evidence["restic_output"] = outcome.output_tail[-4000:]
    except DrkitError as exc:
        part.fail(describe(exc), transient=exc.transient, ran=False)
    return part


def _check_snapshots(catalog: Catalog, repo: ResticRepository, data: _Part, *, action: str,
                     limits: Limits, hosts: tuple[str, ...] = ()
                     ) -> tuple[_Part, list[Snapshot] | None]:
    """The snapshots the catalog recorded, against the repository's list (skipped when the
    repository could not be checked at all); and that list (None: not read)."""
    part = _Part()
    if data.status == "not_run":
        part.status = "not_run"
        return part, None
    try:
        present = commands.snapshots(repo, action=action, limits=limits)
        for error in _missing_snapshots(catalog, repo, [snap.id for snap in present], hosts):
            part.fail(error)
    except DrkitError as exc:
        part.fail(describe(exc), transient=exc.transient, ran=False)
        return part, None
    return part, present


def _check_posture(repo: ResticRepository) -> _Part:
    """The bucket under an S3 repository against the declared posture (checked even when the
    repository itself could not be)."""
    part = _Part(status="not_applicable")
    if not repo.config.is_s3:
        return part
    part.status = "passed"
    try:
        from drkit.storage.posture import posture_problems, read_posture

        found = read_posture(repo.config)
        part.found = found.to_json()
        if repo.config.posture is not None:
            for problem in posture_problems(repo.config.posture, found):
                part.fail(problem)
    except DrkitError as exc:
        part.fail(describe(exc), transient=exc.transient, ran=False)
    return part
