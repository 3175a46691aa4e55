"""Drill sandboxes: where restores go, safe from other local users, always removed.

The sandbox root (``drills.sandbox_dir``, default ``STATE_DIR/drills``) must be a real
directory (not a symlink) owned by drkit's user and writable by nobody else; drkit creates it
0700 when missing and refuses to use one that fails these checks (a local user who created it
first could otherwise redirect a restore run as root into a directory they own). Each drill
gets its own sandbox under it, created 0700 with exclusive creation, named after the process
that owns it (:mod:`drkit.owned`).

Before a drill creates a scratch database, it writes down in its sandbox (``scratch.json``)
which database on which server (the DSN's source, never the DSN). A drill killed with -9
leaves both behind: :func:`sweep` (run by the next drill and by the other catalog-opening
commands) drops those databases, removes the sandbox and records a ``cleanup`` record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.catalog.inflight import fsync_directory
from drkit.drills.restore import DrillError
from drkit.owned import abandoned, owned_name, remove_tree
from drkit.supervise import Limits

if TYPE_CHECKING:
    from drkit.catalog.store import Catalog
    from drkit.config.models import Config

log = logging.getLogger("drkit.drill")
MARKER = "scratch.json"
SWEEP_LIMIT_S = 60.0  # dropping one leftover scratch database, server unreachable included


def sandbox_root(config: Config) -> Path:
    """Where drill sandboxes go."""
    return config.drills.sandbox_dir or config.state_dir / "drills"


def checked_root(root: Path) -> Path:
    """``root``, created 0700 when missing; raise :class:`DrillError` when it is a symlink,
    not a directory, not owned by this user or writable by group or others."""
    if not root.is_symlink() and not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
            root.mkdir(mode=0o700)
    info = root.lstat()
    hint = ("remove it and let drkit create it, or point drills.sandbox_dir at a private "
            "directory (owned by this user, mode 0700)")
    if stat.S_ISLNK(info.st_mode):
        raise DrillError(f"refusing to restore into the sandbox root {root}: it is a symbolic "
                         "link", hint=hint)
    if not stat.S_ISDIR(info.st_mode):
        raise DrillError(f"refusing to restore into the sandbox root {root}: not a directory",
                         hint=hint)
    if info.st_uid != os.geteuid():
        raise DrillError(f"refusing to restore into the sandbox root {root}: it is owned by "
                         f"uid {info.st_uid}, not by this user (uid {os.geteuid()})", hint=hint)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DrillError(f"refusing to restore into the sandbox root {root}: writable by "
                         f"others (mode {stat.S_IMODE(info.st_mode):04o})", hint=hint)
    return root


@dataclass
class Sandbox:
    """One drill's sandbox and the scratch databases it is about to create or created."""

    path: Path
    plan: str
    scratch: list[dict[str, Any]] = field(default_factory=list)
    removal_error: str | None = None
    drop_failed: bool = False  # a scratch database could not be dropped: keep its marker

    def will_create(self, kind: str, database: str, server_source: dict[str, str]) -> None:
        """Write down, before creating it, a scratch database this drill makes."""
        self.scratch.append({"kind": kind, "database": database, "server": server_source})
        temporary = self.path / (MARKER + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"plan": self.plan, "scratch": self.scratch}, out)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.path / MARKER)
        fsync_directory(self.path)


@contextmanager
def sandbox(config: Config, plan: str, *, keep: bool) -> Iterator[Sandbox]:
    """A fresh private sandbox for one drill, removed on exit (unless ``keep``); a failure
    to remove it is kept in :attr:`Sandbox.removal_error`, not ignored."""
    root = checked_root(sandbox_root(config))
    path = root / owned_name(plan)
    path.mkdir(mode=0o700)  # exclusive: fails if anything is there
    os.chmod(path, 0o700)  # whatever the umask
    box = Sandbox(path=path, plan=plan)
    try:
        yield box
    finally:
        if keep:  # renamed so that no later sweep takes it for a killed drill's
            box.path = path.rename(path.with_name(path.name + ".kept"))
        elif box.drop_failed:
            # The restored data goes; the marker stays, so that the next drkit command
            # (once this process is gone) drops the scratch database and records it.
            try:
                for entry in path.iterdir():
                    if entry.name != MARKER:
                        remove_tree(entry)
            except OSError as exc:
                box.removal_error = f"sandbox {path} could not be emptied: {exc}"
        else:
            try:
                remove_tree(path)
            except OSError as exc:
                box.removal_error = f"sandbox {path} could not be removed: {exc}"
                log.error("drill %s: %s", plan, box.removal_error)


def sweep(config: Config, catalog: Catalog) -> list[dict[str, Any]]:
    """Drop the scratch databases and remove the sandboxes of drills on this machine whose
    process is gone; record each as a ``cleanup`` record. Returns what was cleaned. Never
    raises: a command's own work does not depend on it (problems are logged)."""
    root = sandbox_root(config)
    if not root.is_symlink() and not root.exists():
        return []
    try:
        checked_root(root)  # a root someone else controls is not read, let alone trusted
        entries = [entry for entry in root.iterdir() if abandoned(entry.name)]
    except (DrillError, OSError) as exc:
        log.error("not cleaning up drill sandboxes: %s", exc)
        return []
    cleaned = []
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        try:
            cleaned.append(_clean(catalog, entry))
        except Exception as exc:
            log.error("cannot clean up after a killed drill (sandbox %s): %s: %s", entry,
                      type(exc).__name__, exc)
    return cleaned


def _read_marker(path: Path) -> tuple[dict[str, Any], str | None]:
    """The sandbox's marker and, when it cannot be trusted, why."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None  # killed before it created any scratch database
    except (OSError, ValueError) as exc:
        return {}, f"{MARKER} unreadable ({type(exc).__name__})"
    items = marker.get("scratch") if isinstance(marker, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return {}, f"{MARKER} is not what drkit writes"
    return marker, None


def _clean(catalog: Catalog, path: Path) -> dict[str, Any]:
    from drkit.catalog.inflight import utcnow
    from drkit.catalog.store import NewRecord

    started = utcnow()
    marker, unreadable = _read_marker(path)
    problems: list[str] = [unreadable] if unreadable else []
    dropped: list[str] = []
    for item in marker.get("scratch", []):
        try:
            _drop(item, path)
            dropped.append(str(item.get("database")))
        except DrillErrorLike as exc:
            problems.append(f"scratch database {item.get('database')}: {exc}")
    if not problems:
        try:
            remove_tree(path)
        except FileNotFoundError:
            pass  # another command cleaned it meanwhile
        except OSError as exc:
            problems.append(f"sandbox {path} could not be removed: {exc}")
    else:
        problems.append(f"sandbox {path} kept (the next drkit command tries again)")
    if problems:
        if marker.get("failure_recorded"):
            log.error("still cannot clean up after a killed drill: %s", "; ".join(problems))
            return {"sandbox": str(path), "problems": problems}
        if not unreadable:
            _rewrite(path, {**marker, "failure_recorded": True})
    evidence = {"sandbox": str(path), "sandbox_removed": not path.exists(),
                "scratch_databases_dropped": dropped, "problems": problems,
                "left_by": "a drill whose process is gone (killed, crashed or host restarted)"}
    record = catalog.append(NewRecord(
        kind="cleanup", status="failed" if problems else "succeeded", started_at=started,
        finished_at=utcnow(), plan=str(marker.get("plan") or path.name.split(".", 1)[0]),
        error="; ".join(problems) or None, evidence=evidence))
    log.warning("cleaned up after a drill that was killed: sandbox %s%s (record %s)%s", path,
                f", scratch databases {', '.join(dropped)}" if dropped else "", record.id,
                f": {'; '.join(problems)}" if problems else "")
    return evidence


def _rewrite(path: Path, marker: dict[str, Any]) -> None:
    temporary = path / (MARKER + ".tmp")
    try:
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(marker, out)
        temporary.replace(path / MARKER)
    except OSError as exc:
        log.error("drill sandbox %s: cannot update %s: %s", path, MARKER, exc)


class DrillErrorLike(Exception):
    """Raised by :func:`_drop` (wraps DrkitError and OSError alike)."""


def _drop(item: dict[str, Any], workdir: Path) -> None:
    from drkit.config.secrets import SecretRef
    from drkit.drills.databases import scratch_for
    from drkit.drills.livedb import STAGING_PREFIX
    from drkit.errors import DrkitError, describe
    from drkit.targets.dsn import parse_dsn

    name = str(item.get("database", ""))
    if not name.startswith(("drkit_drill_", STAGING_PREFIX)):
        raise DrillErrorLike(f"not a drill or restore database name: {name!r}; left alone")
    server_item = dict(item.get("server") or {})
    # A restore's staging database is dropped from the server's `postgres` database: the
    # DSN's own may not exist (a restore into a new database).
    connect = server_item.pop("connect_database", None)
    try:
        if set(server_item) == {"dsn"}:
            text = str(server_item["dsn"])  # given on the command line: holds no password
        else:
            text = SecretRef.model_validate(server_item).resolve()
    except ValueError:  # never echo what was there: it may be a secret
        raise DrillErrorLike("the scratch server's source is not valid") from None
    except DrkitError as exc:
        raise DrillErrorLike(describe(exc)) from None
    try:
        server = parse_dsn(text, what="scratch server")
        if isinstance(connect, str):
            server = server.with_database(connect)
        scratch_for(str(item.get("kind")), server, name, workdir / "cleanup",
                    limits=Limits.after(SWEEP_LIMIT_S)).drop()
    except DrkitError as exc:
        raise DrillErrorLike(describe(exc)) from None
    except OSError as exc:
        raise DrillErrorLike(f"{type(exc).__name__}: {exc.strerror}") from None
