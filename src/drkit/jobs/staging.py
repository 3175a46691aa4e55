"""Staging directories: one private directory per backup run, never shared, always removed.

A run prepares its target under
``state_dir/staging/<target>.<machine>.<pid>-<start>.<random>/data`` (the SQLite copy, the
MySQL options file) and keeps its stream's producer spec under ``.../stream``. The name
carries the machine, the process's id and its start time, so a directory left by a killed
process is recognised (and removed) by the next run on that machine, while a live process's,
or another machine's (a shared state directory), is never touched.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from drkit.catalog.inflight import process_alive, process_start_token

log = logging.getLogger("drkit.backup")
_OWNER = re.compile(r"\.([A-Za-z0-9-]+)\.(\d+)-(\w+)\.[0-9a-f]+$")


def _machine() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown"


def remove_tree(path: Path) -> None:
    """Remove ``path`` entirely, read-only directories included; raise if that fails."""
    def make_writable(function: object, failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
            shutil.rmtree(failed)
        else:
            os.unlink(failed)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=make_writable)


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the staging directories under ``root`` whose process is gone; return them."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        match = _OWNER.search(entry.name)
        if match is None or match.group(1) != _machine() or \
                process_alive(int(match.group(2)), match.group(3)):
            continue
        try:
            remove_tree(entry)
        except OSError as exc:
            log.warning("cannot remove abandoned staging directory %s: %s", entry, exc)
            continue
        removed.append(entry)
        log.info("removed staging directory %s left by a run that was killed", entry)
    return removed


@contextmanager
def staging_dir(state_dir: Path, target: str) -> Iterator[Path]:
    """A fresh private (0700) staging directory for one run of ``target``, with an empty
    ``data`` directory in it; removed on exit."""
    root = state_dir / "staging"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_abandoned(root)
    pid = os.getpid()
    token = process_start_token(pid) or "0"
    path = root / f"{target}.{_machine()}.{pid}-{token}.{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)  # exclusive: fails if it exists
    (path / "data").mkdir(mode=0o700)
    try:
        yield path
    finally:
        try:
            remove_tree(path)
        except OSError as exc:
            log.warning("cannot remove staging directory %s: %s", path, exc)
