"""Typed restic failures, classified from exit codes (restic >= 0.17) or stderr text (0.14+).

restic 0.14, which Debian 12 ships, exits 1 for nearly everything, so the text is the only
signal there; 0.17 added exit codes 10 (no repository), 11 (locked), 12 (wrong password).
"""

from __future__ import annotations

import re

from drkit.errors import DrkitError


class ResticError(DrkitError):
    """restic failed. ``transient`` says whether retrying later may help."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.stderr = stderr
        self.returncode = returncode


class ResticNotFound(ResticError):
    """The restic binary is missing or not executable."""


class RepositoryNotFound(ResticError):
    """There is no restic repository at the URL (not initialised, or a wrong URL)."""


class RepositoryAlreadyExists(ResticError):
    """``restic init`` found a repository already there."""


class WrongPassword(ResticError):
    """The password opens no key of the repository."""


class RepositoryLocked(ResticError):
    """Another restic process holds an exclusive lock."""

    transient = True

    @property
    def holder(self) -> tuple[int, str] | None:
        """(pid, hostname) of the lock's holder, as restic names it, if it does."""
        match = re.search(r"locked (?:exclusively )?by PID (\d+) on (\S+)", self.stderr)
        return (int(match.group(1)), match.group(2)) if match else None


class StorageUnreachable(ResticError):
    """The storage backend could not be reached (refused, DNS, timeout, TLS)."""

    transient = True


class SourceIncomplete(ResticError):
    """restic made a snapshot but could not read some source files (exit 3)."""

    def __init__(self, message: str, *, snapshot_id: str | None, stderr: str = "",
                 returncode: int | None = None) -> None:
        super().__init__(message, stderr=stderr, returncode=returncode)
        self.snapshot_id = snapshot_id


class ResticFailed(ResticError):
    """Any other restic failure; the message carries restic's own words."""


_NETWORK = re.compile(
    r"connection refused|no such host|i/o timeout|dial tcp|connection reset|"
    r"network is unreachable|tls: |x509: |context deadline exceeded|EOF\"?$|"
    r"server misbehaving|timeout awaiting response|no route to host",
    re.IGNORECASE | re.MULTILINE,
)
_WRONG_PASSWORD = re.compile(r"wrong password or no key found", re.IGNORECASE)
_LOCKED = re.compile(r"repository is already locked|unable to create lock", re.IGNORECASE)
_NO_REPO = re.compile(
    r"Is there a repository at the following location\?|repository does not exist|"
    r"unable to open config file",
    re.IGNORECASE,
)
_EXISTS = re.compile(r"config file already exists|repository master key and config already",
                     re.IGNORECASE)


def fatal_line(stderr: str) -> str:
    """The line of restic's stderr that best says what went wrong (``Fatal:`` first)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Fatal:"):
            return line.removeprefix("Fatal:").strip()
    for line in reversed(lines):
        if not line.startswith("{"):
            return line
    return "no error output"


def classify(returncode: int, stderr: str, *, action: str) -> ResticError:
    """Map a failed restic run to a typed error with one readable message.

    ``action`` names what drkit was doing (``"backup app -> primary"``) for the message.
    Network causes are looked for first: an unreachable S3 endpoint also prints restic's
    "Is there a repository" line.
    """
    detail = fatal_line(stderr)
    error: ResticError
    if returncode == 12 or _WRONG_PASSWORD.search(stderr):
        error = WrongPassword(f"{action}: wrong repository password (restic: {detail})",
                              hint="check the repository's 'password' secret")
    elif returncode == 11 or _LOCKED.search(stderr):
        error = RepositoryLocked(f"{action}: repository is locked by another process ({detail})")
    elif _NETWORK.search(stderr):
        error = StorageUnreachable(f"{action}: storage unreachable ({detail})")
    elif _EXISTS.search(stderr):
        error = RepositoryAlreadyExists(f"{action}: repository already exists")
    elif returncode == 10 or _NO_REPO.search(stderr):
        error = RepositoryNotFound(f"{action}: no restic repository there ({detail})",
                                   hint="create it with 'drkit repo init'")
    else:
        error = ResticFailed(f"{action}: restic exited {returncode}: {detail}")
    error.stderr = stderr
    error.returncode = returncode
    return error
