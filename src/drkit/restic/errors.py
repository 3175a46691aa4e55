"""Typed restic failures, classified from exit codes (restic >= 0.17) or stderr text (0.14+).

restic 0.14, which Debian 12 ships, exits 1 for nearly everything, so the text is the only
signal there; 0.17 added exit codes 10 (no repository), 11 (locked), 12 (wrong password).
restic >= 0.17 with ``--json`` also writes its fatal error as a JSON line (``exit_error``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from drkit.errors import DrkitError


class ResticError(DrkitError):
    """restic failed. ``transient`` says whether retrying later may help."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.stderr = stderr
        self.returncode = returncode
        self.result: Any = None  # the ResticResult of the failed run, when there was one


class ResticNotFound(ResticError):
    """The restic binary is missing or not executable."""


class RepositoryNotFound(ResticError):
    """There is no restic repository at the URL (not initialised, or a wrong URL)."""


class RepositoryAlreadyExists(ResticError):
    """``restic init`` found a repository already there."""


class WrongPassword(ResticError):
    """The password opens no key of the repository."""


class AccessDenied(ResticError):
    """The storage refused the credentials or the operation (S3 AccessDenied, a signature
    mismatch, an unknown access key, a local permission error). Not retried: waiting does not
    change credentials."""


class RepositoryLocked(ResticError):
    """Another restic process holds a lock that this operation conflicts with."""

    transient = True

    @property
    def holder(self) -> tuple[int, str] | None:
        """(pid, hostname) of the lock's holder, as restic names it, if it does."""
        match = re.search(r"locked (?:exclusively )?by PID (\d+) on (\S+)", self.stderr)
        return (int(match.group(1)), match.group(2)) if match else None


class LockVanished(RepositoryLocked):
    """restic (0.14) was stuck retrying to read a lock file another process had removed;
    drkit stopped it, and starts it again at once."""


class StorageUnreachable(ResticError):
    """The storage backend could not be reached (refused, DNS, timeout, TLS), or stayed
    unreachable for longer than drkit lets restic retry it."""

    transient = True


class TimedOut(ResticError):
    """drkit stopped restic at the job's time limit."""


class Interrupted(ResticError):
    """drkit stopped restic because drkit itself was interrupted (Ctrl-C, SIGTERM)."""


class SourceIncomplete(ResticError):
    """restic made a snapshot but could not read some source files (exit 3)."""

    def __init__(self, message: str, *, snapshot_id: str | None, stderr: str = "",
                 returncode: int | None = None) -> None:
        super().__init__(message, stderr=stderr, returncode=returncode)
        self.snapshot_id = snapshot_id


class ResticFailed(ResticError):
    """Any other restic failure; the message carries restic's own words."""


NETWORK = re.compile(
    r"connection refused|no such host|i/o timeout|dial tcp|connection reset|"
    r"network is unreachable|tls: |x509: |context deadline exceeded|EOF\"?$|"
    r"server misbehaving|timeout awaiting response|no route to host|broken pipe|"
    r"Client\.Timeout exceeded|TLS handshake timeout|503 Service Unavailable|SlowDown",
    re.IGNORECASE | re.MULTILINE,
)
# Refusals by the storage: never retried. "permission denied" only counts in restic's own
# fatal line (a backup also warns about unreadable source files with those words).
ACCESS = re.compile(
    r"AccessDenied|Access Denied|signature we calculated does not match|"
    r"SignatureDoesNotMatch|InvalidAccessKeyId|Access Key Id you provided does not exist|"
    r"403 Forbidden|InvalidToken|ExpiredToken",
    re.IGNORECASE,
)
_PERMISSION = re.compile(r"permission denied|operation not permitted|read-only file system",
                         re.IGNORECASE)
_WRONG_PASSWORD = re.compile(r"wrong password or no key found", re.IGNORECASE)
_LOCKED = re.compile(r"repository is already locked", re.IGNORECASE)
_NO_REPO = re.compile(
    r"Is there a repository at the following location\?|repository does not exist|"
    r"unable to open config file",
    re.IGNORECASE,
)
_EXISTS = re.compile(r"config file already exists|repository master key and config already",
                     re.IGNORECASE)


def _json_message(line: str) -> str | None:
    """The message of a restic >= 0.17 JSON error line (``exit_error``, ``error``)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("message_type") == "exit_error":
        return str(data.get("message", ""))
    error = data.get("error")
    if data.get("message_type") == "error" and isinstance(error, dict):
        return str(error.get("message", ""))
    return None


def fatal_line(stderr: str) -> str:
    """The line of restic's stderr that best says what went wrong (``Fatal:`` first, also
    inside restic >= 0.17's JSON ``exit_error``)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    texts = [(_json_message(line) or "") if line.startswith("{") else line for line in lines]
    for text in texts:
        if text.startswith("Fatal:"):
            return text.removeprefix("Fatal:").strip()
    for text in reversed(texts):
        if text and "returned error, retrying after" not in text:
            return text
    return "no error output"


def classify(returncode: int, stderr: str, *, action: str) -> ResticError:
    """Map a failed restic run to a typed error with one readable message.

    ``action`` names what drkit was doing (``"backup app -> primary"``) for the message.
    Causes are looked for before symptoms: an unreachable S3 endpoint also prints restic's
    "Is there a repository" line, and "unable to create lock" says nothing about why.
    """
    detail = fatal_line(stderr)
    error: ResticError
    if returncode == 12 or _WRONG_PASSWORD.search(stderr):
        error = WrongPassword(f"{action}: wrong repository password (restic: {detail})",
                              hint="check the repository's 'password' secret")
    elif returncode == 11 or _LOCKED.search(detail):
        error = RepositoryLocked(f"{action}: repository is locked by another process ({detail})")
    elif NETWORK.search(stderr):
        error = StorageUnreachable(f"{action}: storage unreachable ({detail})")
    elif ACCESS.search(stderr) or _PERMISSION.search(detail):
        error = AccessDenied(f"{action}: the storage refused access ({detail})",
                             hint="check the repository's credentials and their permissions")
    elif _LOCKED.search(stderr):
        error = RepositoryLocked(f"{action}: repository is locked by another process ({detail})")
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
