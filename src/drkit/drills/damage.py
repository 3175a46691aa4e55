"""``drkit drill --prove-checks``: damage the restored copy on purpose and require the plan's
checks to notice.

A plan whose checks pass on damaged data cannot detect loss: the drill is ``checks_too_weak``.
Only the drill's own copy is damaged: the scratch database (one row deleted from each of its
plain tables, their triggers off; no foreign, FEDERATED or rule-bearing table), the restored
SQLite file of a sqlite target (the same, in the sandbox), or else one file of the snapshot's
listing as restored in the sandbox (bytes flipped in its middle; never a file a check created,
a hard link or a file on another device). Only a check that failed with a verdict on the data
counts as noticing: one that raised or ran out of time proves nothing. What was damaged is
recorded with the checks' results on the damaged copy.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.drills.checks import CheckResult, StepContext, inside, run_check
from drkit.drills.databases import ScratchDatabase, ScratchError
from drkit.drills.plans import Check

FLIP_BYTES = 16
MAX_TABLES = 200  # tables damaged in one database (one statement each)


@dataclass
class Proof:
    """What was damaged and whether the plan's checks noticed."""

    damage: str | None
    failed_checks: list[str] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    reason: str | None = None  # why no damage could be made, or why it proves nothing

    @property
    def detected(self) -> bool:
        return self.damage is not None and self.reason is None and bool(self.failed_checks)

    def describe(self) -> str:
        if self.damage is None or self.reason is not None:
            return f"no proof: {self.reason}"
        if self.detected:
            return f"{self.damage}: detected by {', '.join(self.failed_checks)}"
        return f"{self.damage}: every check still passed"

    def to_json(self) -> dict[str, Any]:
        return {"damage": self.damage, "detected": self.detected,
                "failed_checks": self.failed_checks, "reason": self.reason,
                "checks": [check.to_json() for check in self.checks]}


def prove(checks: list[Check], context: StepContext, scratch: ScratchDatabase | None,
          restored: list[Path]) -> Proof:
    """Damage the step's restored copy, run ``checks`` again, return whether any failed.

    ``restored``: the files of the snapshot's listing, where they were restored. Call only
    after ``checks`` passed on the undamaged copy.
    """
    if not checks:
        return Proof(None, reason="the step declares no checks")
    try:
        if scratch is not None:
            damage = _delete_rows(scratch)
        elif context.default_database is not None:
            damage = _delete_sqlite_rows(inside(
                context.data_dir, str(context.default_database.relative_to(context.data_dir))))
        else:
            damage = _flip_bytes(context.data_dir, context.sandbox, restored)
    except (OSError, ValueError, sqlite3.Error, ScratchError) as exc:
        return Proof(None, reason=f"could not damage the restored copy: {exc}")
    if damage is None:
        return Proof(None, reason="nothing restored that could be damaged (no rows, no "
                                  "file with content)")
    results = [run_check(check, context) for check in checks]
    noticed = [r.name for r in results if not r.passed and not r.inconclusive]
    unsure = [r.name for r in results if r.inconclusive]
    reason = None
    if context.limits.expired():
        reason = "the drill's time limit ran out while the checks ran on the damaged copy"
    elif unsure and not noticed:
        reason = (f"{', '.join(unsure)} could not reach a verdict on the damaged copy (an "
                  "error or its time limit), which proves nothing")
    return Proof(damage, noticed, results, reason=reason)


def _delete_rows(scratch: ScratchDatabase) -> str | None:
    deleted: list[str] = []
    refused: list[str] = []
    tables = scratch.tables()
    for table in tables[:MAX_TABLES]:
        try:
            if scratch.delete_one_row(table):
                deleted.append(table)
        except ScratchError:  # a foreign key kept the row (or the table could not be
            refused.append(table)  # changed): the other tables still lose one
    if not deleted:
        return None
    more = f" (the first {MAX_TABLES} of {len(tables)} tables)" \
        if len(tables) > MAX_TABLES else ""
    kept = f"; not damaged (refused): {', '.join(refused)}" if refused else ""
    return (f"deleted one row from each of {len(deleted)} table(s) of scratch database "
            f"{scratch.name}{more}: {', '.join(deleted)}{kept}")


def _delete_sqlite_rows(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    deleted: list[str] = []
    with closing(sqlite3.connect(path, timeout=30)) as db:
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
            "'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        for name in names[:MAX_TABLES]:
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                cursor = db.execute(f"DELETE FROM {quoted} WHERE rowid = "
                                    f"(SELECT rowid FROM {quoted} LIMIT 1)")
            except sqlite3.OperationalError:  # a WITHOUT ROWID table
                continue
            if cursor.rowcount == 1:
                deleted.append(name)
        db.commit()
    if not deleted:
        return None
    return (f"deleted one row from each of {len(deleted)} table(s) of the restored "
            f"{path.name}: {', '.join(deleted)}")


def _inside_without_links(path: Path, sandbox: Path) -> bool:
    """``path`` lies in ``sandbox`` with no symlink between them."""
    for parent in path.parents:
        if parent == sandbox:
            return True
        if parent.is_symlink():
            return False
    return False


def _flip_bytes(data_dir: Path, sandbox: Path, restored: list[Path]) -> str | None:
    """Flip bytes in the middle of one restored file of the snapshot, chosen at random
    (among those under ``data_dir``, what the checks see, when there are any)."""
    device = data_dir.lstat().st_dev
    candidates: list[Path] = []
    for path in restored:
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size > 0 and info.st_nlink == 1 and \
                info.st_dev == device and _inside_without_links(path, sandbox):
            candidates.append(path)
    seen = [p for p in candidates if data_dir in p.parents]
    candidates = seen or candidates
    if not candidates:
        return None
    path = random.SystemRandom().choice(sorted(candidates))
    info = path.lstat()
    if not info.st_mode & stat.S_IWUSR:  # restored read-only: it is the drill's own copy
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_IWUSR)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        offset = info.st_size // 2
        data = os.pread(fd, FLIP_BYTES, offset)
        os.pwrite(fd, bytes(b ^ 0xFF for b in data), offset)
    finally:
        os.close(fd)
    where = path.relative_to(data_dir) if data_dir in path.parents else path.name
    return f"flipped {len(data)} byte(s) at offset {offset} of restored file {where}"
