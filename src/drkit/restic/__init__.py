"""The restic wrapper. Every restic process starts in :func:`drkit.restic.runner.run_restic`."""

from drkit.restic.errors import (
    RepositoryAlreadyExists,
    RepositoryLocked,
    RepositoryNotFound,
    ResticError,
    ResticFailed,
    ResticNotFound,
    SourceIncomplete,
    StorageUnreachable,
    WrongPassword,
)
from drkit.restic.runner import ResticRepository, restic_version, run_restic

__all__ = [
    "RepositoryAlreadyExists",
    "RepositoryLocked",
    "RepositoryNotFound",
    "ResticError",
    "ResticFailed",
    "ResticNotFound",
    "ResticRepository",
    "SourceIncomplete",
    "StorageUnreachable",
    "WrongPassword",
    "restic_version",
    "run_restic",
]
