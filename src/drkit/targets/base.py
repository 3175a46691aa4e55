"""What a target kind provides: a config model and a way to present its data to restic."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drkit.config.models import TargetConfig
from drkit.errors import DrkitError
from drkit.supervise import ChildSpec


class TargetError(DrkitError):
    """The target's data could not be prepared for backup (missing path, unreadable DB...)."""


@dataclass(frozen=True)
class StreamSource:
    """A command (``producer``) whose stdout restic stores as one file, ``filename``.

    The producer's environment is its own (base variables plus what it needs, e.g. the DSN's
    libpq variables): it never sees the repository's secrets; its ``secrets`` are masked.
    """

    producer: ChildSpec
    filename: str


@dataclass(frozen=True)
class BackupSource:
    """What restic backs up for a target: ``paths`` read from ``cwd`` (None = as given), or
    a ``stream`` (one run of a command's output per repository).

    Paths relative to ``cwd`` are stored relative in the snapshot, so a staged copy restores
    as ``invoices.sqlite``, not under a temporary directory's name.
    """

    paths: Sequence[str] = ()
    stream: StreamSource | None = None
    cwd: Path | None = None
    excludes: Sequence[str] = ()
    description: str = ""
    evidence: dict[str, object] = field(default_factory=dict)


class TargetKind(Protocol):
    """A kind of target (``files``, ``sqlite``...). One module under ``drkit.targets`` each."""

    name: str
    config_model: type[TargetConfig]

    def prepare(self, name: str, config: TargetConfig, staging: Path
                ) -> AbstractContextManager[BackupSource]:
        """Make the target's data ready for restic; clean up on exit.

        ``staging`` is an empty private directory of this run alone, which the kind may use
        and drkit removes. The target is prepared once per run and the result backed up to
        each of its repositories. Raises :class:`TargetError` when it cannot be prepared.
        """
        ...


def iter_missing(paths: Sequence[Path]) -> Iterator[Path]:
    """The paths of ``paths`` that do not exist (broken symlinks count as existing)."""
    for path in paths:
        if not path.exists() and not path.is_symlink():
            yield path
