"""``kind: files`` — directories and files, backed up as they are."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from drkit.config.models import TargetConfig, resolve_path
from drkit.targets.base import BackupSource, TargetError, iter_missing


class FilesTarget(TargetConfig):
    """Paths to back up (absolute, or relative to the config file) and exclude patterns."""

    kind: Literal["files"]
    paths: list[Annotated[Path, AfterValidator(resolve_path)]] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)


class FilesKind:
    name: str = "files"
    config_model: type[TargetConfig] = FilesTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        """Check the paths exist; restic reads them in place."""
        assert isinstance(config, FilesTarget)
        missing = list(iter_missing(config.paths))
        if missing:
            raise TargetError(
                f"target '{name}': path does not exist: {', '.join(str(p) for p in missing)}"
            )
        yield BackupSource(
            paths=[str(p) for p in config.paths],
            excludes=config.exclude,
            description=", ".join(str(p) for p in config.paths),
        )
