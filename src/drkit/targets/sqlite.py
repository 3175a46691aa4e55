"""``kind: sqlite`` — a consistent copy made with SQLite's online backup API, then backed up.

A live database file is never copied as it is: a copy taken while a writer commits can be torn
(and a WAL database keeps recent commits outside the main file). The backup API copies a
consistent state while other connections keep reading and writing.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from drkit.config.models import Name, TargetConfig, resolve_path
from drkit.targets.base import BackupSource, TargetError
from drkit.targets.fingerprints import recorded, sqlite_fingerprints


class SqliteTarget(TargetConfig):
    """One SQLite database file."""

    kind: Literal["sqlite"]
    path: Annotated[Path, AfterValidator(resolve_path)]
    # Named queries run on the consistent copy that is backed up; their values are recorded
    # with the backup and compared by a drill's `fingerprints: true` check.
    fingerprints: dict[Name, str] = Field(default_factory=dict)


def online_copy(source: Path, destination: Path) -> int:
    """Copy the database at ``source`` to ``destination`` with the backup API; return its pages.

    The source is opened read-only. Raises :class:`sqlite3.Error` on failure.
    """
    uri = f"file:{source}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=60)) as src, \
            closing(sqlite3.connect(destination)) as dst:
        # One step (pages=-1) copies under a single read transaction: a consistent state.
        src.backup(dst, pages=-1)
        (pages,) = dst.execute("PRAGMA page_count").fetchone()
        (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"copy failed quick_check: {verdict}")
        return int(pages)


class SqliteKind:
    name: str = "sqlite"
    config_model: type[TargetConfig] = SqliteTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        """Copy the database into ``staging``; restic backs the copy up under its own name."""
        assert isinstance(config, SqliteTarget)
        if not config.path.is_file():
            raise TargetError(f"target '{name}': database file does not exist: {config.path}")
        copy = staging / config.path.name
        try:
            pages = online_copy(config.path, copy)
        except sqlite3.Error as exc:
            raise TargetError(f"target '{name}': cannot copy {config.path}: {exc}") from None
        evidence: dict[str, object] = {"source_path": str(config.path), "pages": pages,
                                       "copy_bytes": copy.stat().st_size}
        if config.fingerprints:
            values = sqlite_fingerprints(copy, config.fingerprints)
            evidence["fingerprints"] = recorded(config.fingerprints, values)
        try:
            yield BackupSource(paths=[copy.name], cwd=staging, description=str(config.path),
                               evidence=evidence)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
