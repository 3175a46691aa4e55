"""``drkit restore TARGET --into-dsn DSN``: a database target's dump loaded into a database
the operator names (a new one, an empty one, or, with ``--overwrite``, production itself).

The dump is restored into a private sandbox and verified like a drill's (``restic restore
--verify``, the tree against the snapshot's listing). PostgreSQL: it is loaded into a staging
database on the destination server with its owners and grants, the fingerprints taken at
backup time are compared there, and only then is it swapped in under the database's name
(:mod:`drkit.drills.livedb`): what it replaces is kept, renamed aside and closed to
connections, never dropped. MySQL/MariaDB: loaded into the database when it is missing or
empty; one that holds anything is refused. A restore killed with -9 leaves its sandbox and
staging database; the next drkit command removes both (the drill sweep).

``DSN`` is ``env:NAME`` or ``file:PATH`` (where the DSN is, password and all), or a DSN
without a password (a command line is visible to every local user).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from typing import Any

from drkit.config.models import Config
from drkit.config.secrets import SecretRef
from drkit.drills.checks import CheckResult, StepContext, run_check
from drkit.drills.databases import ScratchError
from drkit.drills.livedb import (
    DatabaseState,
    LiveDatabase,
    PostgresLive,
    live_database,
    refuse_unreplaceable,
)
from drkit.drills.plans import DATABASE_KINDS, FingerprintsCheck
from drkit.drills.restore import DrillError
from drkit.drills.sandbox import sandbox
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.identity import os_actor
from drkit.jobs.common import Recorder, detect_restic_version, holding_repository
from drkit.jobs.restore import (
    ProgressHook,
    RestoreResult,
    check_snapshot_id,
    finish,
    restore_verified,
    stopped,
)
from drkit.supervise import Limits
from drkit.targets.dsn import Dsn, parse_dsn

log = logging.getLogger("drkit.restore")


def dsn_reference(text: str) -> tuple[Dsn, dict[str, str]]:
    """``--into-dsn``'s value: the DSN, and where it comes from as the sandbox's marker
    records it (for the next command to drop a staging database a killed restore left).
    A password on the command line is a bad request."""
    if text.startswith(("env:", "file:")):
        kind, _, where = text.partition(":")
        if kind == "file":
            where = os.path.abspath(where)  # the sweep may run from another directory
        ref = SecretRef.model_validate({kind: where})
        return parse_dsn(ref.resolve(), what=f"--into-dsn {text}"), \
            ref.model_dump(mode="json", exclude_none=True)
    dsn = parse_dsn(text, what="--into-dsn")
    if dsn.password is not None or any(key == "password" for key, _ in dsn.params):
        raise BadRequestError("--into-dsn: a password on the command line is visible to "
                              "every local user",
                              hint="put the DSN in an environment variable or a file and pass "
                                   "--into-dsn env:NAME (or file:PATH)")
    return dsn, {"dsn": text}


def restore_database(config: Config, recorder: Recorder, name: str, *, into: str,
                     repository: str | None = None, snapshot: str | None = None,
                     at: datetime | None = None, overwrite: bool = False,
                     progress: ProgressHook | None = None) -> RestoreResult:
    """Restore database target ``name``'s dump into the database ``into`` names; record it;
    return what happened. A destination that holds anything is a bad request without
    ``overwrite`` (nothing ran); a server that cannot be reached is a recorded failure."""
    repo_name = holding_repository(config, name, repository)
    target = config.targets[name]
    if target.kind not in DATABASE_KINDS:
        raise BadRequestError(f"--into-dsn is for database targets; {name!r} is a "
                              f"{target.kind} target", hint="restore it with --to DIR")
    check_snapshot_id(snapshot)
    dsn, source = dsn_reference(into)
    if dsn.scheme.startswith("postgres") != (target.kind == "postgres"):
        raise BadRequestError(f"--into-dsn {dsn.describe()} is not a {target.kind} server")
    limits = Limits.after(config.timeouts.drill)
    result = RestoreResult(target=name, repository=repo_name, destination=dsn.describe(),
                           actor=os_actor())
    with sandbox(config, f"restore-{name}", keep=False) as box:
        live = live_database(target.kind, dsn, box.path / "client", limits)
        try:
            state: DatabaseState | None = live.state()
        except ScratchError as exc:
            state, result.error = None, f"cannot reach {dsn.describe()}: {describe(exc)}"
        if state is not None:
            refuse_unreplaceable(live, state)
            if not state.empty and not overwrite:
                raise BadRequestError(
                    f"database {live.name} on {dsn.describe()} is not empty: nothing restored",
                    hint="restore into a new database name, or add --overwrite (the database "
                         "it replaces is renamed aside, not dropped)")
        recorder.catalog.start()
        handle = recorder.journal.open("restore", target=name, repository=repo_name,
                                       restic_version=detect_restic_version(config))
        try:
            if state is not None:
                _restore_into(config, recorder, result, live, state, box, source,
                              snapshot=snapshot, at=at, overwrite=overwrite,
                              progress=progress)
                result.status = "succeeded"
        except (DrkitError, OSError, KeyboardInterrupt) as exc:
            stopped(result, exc)
        finally:
            finish(recorder, handle, result)
    if box.removal_error and result.status == "succeeded":
        log.error("restore %s: %s", name, box.removal_error)
    return result


def _restore_into(config: Config, recorder: Recorder, result: RestoreResult,
                  live: LiveDatabase, state: DatabaseState, box: Any,
                  source: dict[str, str], *, snapshot: str | None, at: datetime | None,
                  overwrite: bool, progress: ProgressHook | None) -> None:
    """Restore the dump into the sandbox, load it, verify it, put it in place."""
    from drkit.drills.choose import recorded_fingerprints

    restored = box.path / "restored"
    restored.mkdir(mode=0o700)
    root, snap = restore_verified(config, recorder, result, result.target, snapshot, at,
                                  restored, progress=progress)
    dumps = [p for p in root.rglob("*") if p.is_file()]
    if len(dumps) != 1:
        raise DrillError(f"snapshot {snap.short_id} holds {len(dumps)} files, not one dump")
    started = time.monotonic()
    if not isinstance(live, PostgresLive):
        live.load(dumps[0])  # checked again right before: still missing or empty
        result.placed.append(f"database {live.name}")
        result.restore_s = (result.restore_s or 0.0) + time.monotonic() - started
        return
    staging = live.staging()
    # Dropped by the next command if this one is killed (connecting to `postgres`: the
    # DSN's own database may not exist).
    box.will_create("postgres", staging.name, {**source, "connect_database": "postgres"})
    swapped = False
    try:
        live.create_staging(staging, state)
        staging.restore(dumps[0], as_production=True)
        recorded = recorded_fingerprints(recorder, snap.id, result.repository)
        if recorded:
            check = run_check(FingerprintsCheck(fingerprints=True), StepContext(
                data_dir=root, sandbox=box.path, snapshot_time=snap.time, database=staging,
                fingerprints=recorded, limits=live.limits))
            result.checks.append(check)
            if not check.passed:
                raise DrillError(f"fingerprints differ: {check.detail}: nothing replaced")
        else:
            result.checks.append(CheckResult(
                name="fingerprints equal to the backup's", status="passed",
                detail="not compared: the backup of this snapshot recorded none"))
        done = live.swap_in(staging.name, overwrite=overwrite)
        swapped = True
        result.placed.append(f"database {live.name}")
        if done.aside is not None:
            result.moved_aside[live.name] = done.aside
            log.warning("restore %s: the database it replaced is kept as %s (closed to "
                        "connections)%s", result.target, done.aside,
                        f"; {len(done.ended)} session(s) ended" if done.ended else "")
        if done.ended:
            result.checks.append(CheckResult(name="sessions ended before the swap",
                                             status="passed", detail="; ".join(done.ended)))
        for warning in done.warnings:
            log.warning("restore %s: %s", result.target, warning)
            result.checks.append(CheckResult(name="left with the replaced database",
                                             status="passed", detail=warning))
    finally:
        if not swapped:
            try:
                staging.drop()
            except DrkitError as exc:
                box.drop_failed = True  # its marker stays: the next command drops it
                log.error("restore %s: staging database %s not dropped: %s", result.target,
                          staging.name, describe(exc))
    result.restore_s = (result.restore_s or 0.0) + time.monotonic() - started
