"""``kind: files`` — directories and files, backed up as they are."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PositiveInt, field_validator

from drkit.config.models import Share, Size, Strict, TargetConfig, resolve_path
from drkit.targets.base import BackupSource, TargetError, iter_missing


class SpotCheck(Strict):
    """``drkit check --spot TARGET``: the source against its newest good snapshot."""

    sample: PositiveInt = 50         # files compared byte for byte
    count_tolerance: Share = 0.05    # the file counts may differ by this share
    content_tolerance: Share = 0.0   # this share of unchanged-looking sampled files may differ
    max_bytes: Size = 1 << 30        # the sample restores and hashes at most this much


class FilesTarget(TargetConfig):
    """Paths to back up (absolute, or relative to the config file) and exclude patterns."""

    kind: Literal["files"]
    paths: list[Annotated[Path, AfterValidator(resolve_path)]] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    # At each backup, read the head of up to N files changed since the last one and record
    # how many look encrypted (high entropy, incompressible): part of the anomaly verdict.
    entropy_sample: int = Field(default=0, ge=0, le=64)

    @field_validator("entropy_sample")
    @classmethod
    def _enough_to_judge(cls, value: int) -> int:
        if 0 < value < 4:
            raise ValueError("sample at least 4 files (fewer say nothing), or 0 for none")
        return value
    spot: SpotCheck = Field(default_factory=SpotCheck)


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
