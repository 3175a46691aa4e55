"""The one place drkit starts and supervises the children of its jobs: restic, dumps, database
clients and check commands.

Every child runs in its own process group with an explicit, minimal environment (see
:func:`base_env`: never drkit's whole environment, so a child sees only the secrets given to it),
under a deadline. A watchdog thread stops a child whose deadline passed, or whose ``watch``
callback names a reason (restic's storage watchdog), by terminating its whole process group
(SIGTERM, then SIGKILL after a grace period). When a child ends, whatever it left running in
its group is killed too. :func:`terminate_all` stops every live child (Ctrl-C, SIGTERM).

A producer piped into a consumer (a dump into ``restic backup --stdin``) is watched as one unit
by :func:`drkit.pipeline.run_pipeline`, built on this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from drkit.errors import DrkitError
from drkit.units import human_duration

# What every child may inherit from drkit's own environment: nothing secret, only what tools
# need to find programs, certificates, proxies, caches and the locale.
BASE_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
    "https_proxy", "no_proxy", "XDG_CACHE_HOME",
)
BASE_ENV_PREFIXES = ("LC_",)
STOP_GRACE_S = 10.0  # the stop signal, then SIGKILL this much later
ESCAPE_GRACE_S = 2.0  # after a child ends, how long its output may stay open
OUTPUT_LIMIT = 1 << 20  # bytes of a stream kept (the end of it)
_TICK_S = 0.2
_stopping = threading.Event()  # set by terminate_all: no new child may start


class ChildError(DrkitError):
    """A child could not be started (program missing, not executable)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def base_env(allow: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """A minimal environment: :data:`BASE_ENV` from drkit's own, the ``allow``-listed names
    (the config's explicit ``env:`` lists) and ``extra`` values."""
    env = {name: value for name, value in os.environ.items()
           if name in BASE_ENV or name.startswith(BASE_ENV_PREFIXES) or name in allow}
    env.update(extra)
    return env


MIN_SECRET = 4  # shorter values are not masked: masking "ab" everywhere garbles evidence


def mask(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of each secret (:data:`MIN_SECRET` characters or more) in
    ``text`` by ``***``."""
    for secret in sorted((s for s in secrets if len(s) >= MIN_SECRET), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class ChildSpec:
    """A child to run: argv (never a shell), environment (None: :func:`base_env`), working
    directory, the secrets to mask in its output, what it is (for messages), and the signal
    that asks it to stop (restic cleans its lock up on SIGINT; 0.14 does not on SIGTERM)."""

    argv: Sequence[str]
    what: str
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    secrets: Sequence[str] = ()
    stop_signal: int = signal.SIGTERM


@dataclass(frozen=True)
class Limits:
    """A deadline (``time.monotonic()``) and the limit it came from, for the message."""

    deadline: float | None = None
    timeout_s: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Limits:
        """A deadline ``seconds`` from now (None: no limit)."""
        if seconds is None:
            return cls()
        return cls(deadline=time.monotonic() + seconds, timeout_s=seconds)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def message(self) -> str:
        return f"timed out after {human_duration(self.timeout_s)}"


NO_LIMITS = Limits()


@dataclass
class Exit:
    """How a child ended: its exit code (negative: killed by that signal), what it wrote
    (masked; the end of it when long), when it ended, and why drkit stopped it, if it did."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    ended_at: float = 0.0
    stopped: str | None = None  # "timeout", "interrupt" or the watch callback's reason
    stop_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.stopped is None



class _Buffer:
    """The end of a stream, bounded."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.cut = False

    def add(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size > OUTPUT_LIMIT and len(self.chunks) > 1:
            self.size -= len(self.chunks.pop(0))
            self.cut = True

    def text(self, secrets: Sequence[str]) -> str:
        text = b"".join(self.chunks).decode("utf-8", "replace")
        if self.cut:  # the first line may start inside a secret: drop it, then mask
            text = "[... cut ...]\n" + text.partition("\n")[2]
        return mask(text, secrets)


_live: set[Supervised] = set()
_live_lock = threading.Lock()


class Supervised:
    """A running child, in its own process group, with its watchdog and output readers."""

    def __init__(self, spec: ChildSpec, proc: subprocess.Popen[bytes], limits: Limits,
                 watch: Callable[[], str | None] | None,
                 on_stderr_line: Callable[[str], None] | None,
                 capture_stdout: bool, stdout_is_ours: bool = True) -> None:
        self.spec = spec
        self.proc = proc
        self.limits = limits
        self._watch = watch
        self._on_stderr_line = on_stderr_line
        self._stderr = _Buffer()
        self._stdout = _Buffer()
        self._exited = threading.Event()
        self._reaped = threading.Event()
        self._stderr_done = threading.Event()
        self.stdout_done = threading.Event()  # set at EOF by whoever reads stdout
        if not stdout_is_ours or proc.stdout is None:
            self.stdout_done.set()  # another child reads it: not ours to wait for
        self._pipes = _pipe_inodes(proc.stderr, proc.stdout if stdout_is_ours else None)
        self.stopped: str | None = None
        self.stop_detail: str | None = None
        self.ended_at = 0.0
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._wait, daemon=True),
                         threading.Thread(target=self._watchdog, daemon=True)]
        if capture_stdout:
            self._threads.append(threading.Thread(target=self._read_stdout, daemon=True))
        for thread in self._threads:
            thread.start()

    # -- threads --------------------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.add(raw)
            if self._on_stderr_line is not None:
                with contextlib.suppress(Exception):  # a broken callback never stops reading
                    self._on_stderr_line(raw.decode("utf-8", "replace").rstrip("\n"))
        self._stderr_done.set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read(65536), b""):  # type: ignore[union-attr]
            self._stdout.add(chunk)
        self.stdout_done.set()

    def _wait(self) -> None:
        # See the exit without reaping, kill what the child left in its group (the group id
        # cannot be reused before the leader is reaped), then reap.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        self.ended_at = time.monotonic()
        self._exited.set()
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        self._reaped.set()
        # A process that left the group (setsid) but still holds the child's output would
        # keep drkit waiting past any deadline: after a short grace, it is killed too.
        grace = time.monotonic() + ESCAPE_GRACE_S
        if not (self._stderr_done.wait(ESCAPE_GRACE_S)
                and self.stdout_done.wait(max(0.0, grace - time.monotonic()))):
            _kill_holders(self._pipes)

    def _watchdog(self) -> None:
        while not self._exited.wait(_TICK_S):
            reason: str | None = None
            detail: str | None = None
            if self.limits.expired():
                reason, detail = "timeout", self.limits.message()
            elif self._watch is not None:
                detail = self._watch()
                reason = "watch" if detail else None
            if reason is not None:
                self.stop(reason, detail)
                return

    # -- control --------------------------------------------------------------------------
    def _signal_group(self, sig: int) -> None:
        if self._reaped.is_set():  # its group id may belong to someone else by now
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, reason: str, detail: str | None = None, grace: float | None = None) -> None:
        """Stop the child and its group: its stop signal, SIGKILL after ``grace`` seconds
        (default :data:`STOP_GRACE_S`)."""
        grace = STOP_GRACE_S if grace is None else grace
        if self._exited.is_set():
            return
        if self.stopped is None:
            self.stopped, self.stop_detail = reason, detail
        self._signal_group(self.spec.stop_signal)
        if not self._exited.wait(grace):
            self._signal_group(signal.SIGKILL)

    def wait(self) -> Exit:
        """Wait for the child (and its output readers); return how it ended."""
        self._reaped.wait()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        with _live_lock:
            _live.discard(self)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return Exit(returncode=self.proc.returncode, stdout=self._stdout.text(self.spec.secrets),
                    stderr=self._stderr.text(self.spec.secrets), ended_at=self.ended_at,
                    stopped=self.stopped, stop_detail=self.stop_detail)


def start(spec: ChildSpec, *, stdin: int | IO[bytes] | None = None,
          stdout: int | None = subprocess.PIPE, capture_stdout: bool = True,
          limits: Limits = NO_LIMITS, watch: Callable[[], str | None] | None = None,
          on_stderr_line: Callable[[str], None] | None = None,
          stdout_is_ours: bool = True, cleanup: bool = False) -> Supervised:
    """Start ``spec`` in its own process group; return it supervised.

    ``stdin`` defaults to /dev/null. With ``capture_stdout`` False the caller reads
    ``proc.stdout`` itself (line by line, or as another child's stdin).
    Raises :class:`ChildError` when the program cannot be started, or when drkit is
    stopping (after :func:`terminate_all`) unless the child is a ``cleanup`` (removing a lock).
    """
    if _stopping.is_set() and not cleanup:
        raise ChildError(f"{spec.what}: not started, drkit is stopping", missing=False)
    env = dict(spec.env) if spec.env is not None else base_env()
    try:
        proc = subprocess.Popen(
            list(spec.argv), stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=spec.cwd,
            start_new_session=True, close_fds=True)
    except FileNotFoundError:
        raise ChildError(f"{spec.what}: {spec.argv[0]!r} not found", missing=True) from None
    except PermissionError:
        raise ChildError(f"{spec.what}: {spec.argv[0]!r} is not executable",
                         missing=True) from None
    except OSError as exc:
        raise ChildError(f"{spec.what}: cannot run {spec.argv[0]!r}: {exc.strerror}",
                         missing=False) from None
    child = Supervised(spec, proc, limits, watch, on_stderr_line,
                       capture_stdout=capture_stdout and stdout == subprocess.PIPE,
                       stdout_is_ours=stdout_is_ours)
    with _live_lock:
        _live.add(child)
        late = _stopping.is_set() and not cleanup  # terminate_all ran while it started
    if late:
        threading.Thread(target=child.stop, args=("interrupt",), daemon=True).start()
    return child


def run(spec: ChildSpec, *, stdin: int | IO[bytes] | None = None, limits: Limits = NO_LIMITS,
        on_stdout_line: Callable[[bytes], None] | None = None,
        watch: Callable[[], str | None] | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
        on_started: Callable[[], None] | None = None, cleanup: bool = False) -> Exit:
    """Run ``spec`` to its end under ``limits``; return how it ended (never raises for a
    failing child; raises :class:`ChildError` if it cannot start). ``on_stdout_line`` gets each
    line of stdout as it arrives (then stdout is not kept); ``on_started`` runs once the child
    runs (work to overlap with it). An exception from a callback, or Ctrl-C, stops the child
    before it propagates."""
    child = start(spec, stdin=stdin, capture_stdout=on_stdout_line is None, limits=limits,
                  watch=watch, on_stderr_line=on_stderr_line, cleanup=cleanup)
    try:
        follow_output(child, on_started, on_stdout_line)
        return child.wait()
    except BaseException:
        stop_surely(child)
        raise


def stop_surely(child: Supervised) -> None:
    """Stop ``child`` while an exception unwinds; a second Ctrl-C meanwhile still kills it."""
    try:
        child.stop("interrupt")
    finally:
        if not child._exited.is_set():
            child._signal_group(signal.SIGKILL)
        child.wait()


def follow_output(child: Supervised, on_started: Callable[[], None] | None,
                  on_line: Callable[[bytes], None] | None) -> None:
    """Run ``on_started``, then hand each line of the child's stdout to ``on_line``."""
    if on_started is not None:
        on_started()
    if on_line is not None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            on_line(raw)
        child.stdout_done.set()


def terminate_all() -> None:
    """Stop every live child (Ctrl-C or SIGTERM reached drkit): SIGTERM to each group now,
    SIGKILL to those still there :data:`STOP_GRACE_S` later (in the background: the caller
    goes on unwinding)."""
    with _live_lock:
        _stopping.set()
        children = list(_live)
    for child in children:
        threading.Thread(target=child.stop, args=("interrupt",), daemon=True).start()


def stopping() -> bool:
    """Whether :func:`terminate_all` was called (work should not start anything new)."""
    return _stopping.is_set()


def resume() -> None:
    """Allow children again after :func:`terminate_all` (a long-lived process that goes on)."""
    _stopping.clear()


def pause(seconds: float) -> None:
    """Sleep ``seconds``, or less when drkit starts stopping meanwhile."""
    _stopping.wait(max(0.0, seconds))


def _pipe_inodes(*streams: IO[bytes] | None) -> set[int]:
    inodes = set()
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                inodes.add(os.fstat(stream.fileno()).st_ino)
    return inodes


def _kill_holders(inodes: set[int]) -> None:
    """SIGKILL every other process holding one of these pipes open (Linux /proc)."""
    links = {f"pipe:[{inode}]" for inode in inodes}
    me = str(os.getpid())
    for entry in Path("/proc").glob("[0-9]*"):
        if entry.name == me:
            continue
        try:
            held = any(os.readlink(fd) in links for fd in (entry / "fd").iterdir())
        except OSError:
            continue
        if held:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


__all__ = ["ChildError", "ChildSpec", "Exit", "Limits", "base_env", "mask", "run", "start",
           "terminate_all"]
