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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from drkit.owned import abandoned, owned_name, remove_tree

log = logging.getLogger("drkit.backup")


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the staging directories under ``root`` whose process is gone; return them."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if not abandoned(entry.name):
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
    path = root / owned_name(target)
    path.mkdir(mode=0o700)  # exclusive: fails if it exists
    (path / "data").mkdir(mode=0o700)
    try:
        yield path
    finally:
        try:
            remove_tree(path)
        except OSError as exc:
            log.warning("cannot remove staging directory %s: %s", path, exc)
