"""Watching restic retry its storage.

restic retries a failing storage request by itself and says so on stderr (``Save(<data/...>)
returned error, retrying after 1.5s: ... connection refused``) — restic 0.14 for about a minute
per request, restic >= 0.17 for up to 15 minutes, and both also "retry" a storage that refuses
the credentials. :class:`StorageWatch` reads those lines: a refusal stops restic at once (it
will not pass), an outage longer than the repository's ``storage_timeout`` stops it as
unreachable (a transient failure the scheduler retries later), and an outage that ends (no new
retry line once restic's announced back-off has passed) is forgotten.

One retry is no outage: restic 0.14 lists the lock files, and when one vanishes before it is
read (another process just finished), it retries reading it for about 45 s. drkit stops such a
restic at once and starts it again (``vanished_lock``); nothing was written yet but its own
lock, which the clean-up after a stopped run removes.
"""

from __future__ import annotations

import re
import threading
import time

from drkit.restic.errors import ACCESS

_RETRY = re.compile(r"returned error, retrying after ([0-9.hmsuµn]+): (.*)$")
_LOCK_LOAD = re.compile(r"^Load\(<lock/")
_NOT_FOUND = re.compile(r"no such file|does not exist|NoSuchKey|not found|404", re.IGNORECASE)
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GRACE_S = 30.0  # a retry takes a while itself before the next line can come


def go_duration(text: str) -> float:
    """Seconds of a Go duration string (``1m0.5s``, ``552.3ms``); 0 when unreadable."""
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(h|ms|us|µs|ns|m|s)", text):
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return 0.0
    return total


class StorageWatch:
    """Fed restic's stderr lines (:meth:`see`), polled by the supervisor (:meth:`verdict`)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.retries = 0  # retries of real storage failures (vanished lock files not counted)
        self.cause = ""
        self.kind: str | None = None  # why it was stopped: refused, unreachable, vanished_lock
        self._vanished: str | None = None
        self._started: float | None = None
        self._quiet_after = 0.0
        self._refused: str | None = None
        self._lock = threading.Lock()

    def see(self, line: str) -> None:
        """Take one line of restic's stderr."""
        match = _RETRY.search(line)
        if match is None:
            return
        cause = match.group(2).strip()
        now = time.monotonic()
        with self._lock:
            if _LOCK_LOAD.search(line) and _NOT_FOUND.search(cause):
                self._vanished = cause
                return
            self.retries += 1
            self.cause = cause
            if ACCESS.search(cause):
                self._refused = cause
                return
            if self._started is None or now > self._quiet_after:
                self._started = now
            self._quiet_after = now + go_duration(match.group(1)) + _GRACE_S

    def verdict(self) -> str | None:
        """Why restic must be stopped now, or None."""
        now = time.monotonic()
        with self._lock:
            if self._refused is not None:
                self.kind = "refused"
                return f"the storage refused access ({self._refused})"
            if self._vanished is not None:
                self.kind = "vanished_lock"
                return f"a lock file vanished while restic read it ({self._vanished})"
            if self._started is None:
                return None
            if now > self._quiet_after:  # the last retry went through
                self._started = None
                return None
            if now - self._started >= self.timeout_s:
                self.kind = "unreachable"
                return (f"storage unreachable for {now - self._started:.0f} s, restic still "
                        f"retrying (last error: {self.cause})")
        return None
