"""The one place a restic process is started (through :mod:`drkit.supervise`).

Arguments go as a list (never a shell); the repository URL, password and S3 keys go through the
child's environment (``RESTIC_REPOSITORY``, ``RESTIC_PASSWORD`` or ``RESTIC_PASSWORD_FILE``,
``AWS_*``), never argv, so ``ps`` shows no secret; restic gets only its own repository's
secrets. The debug log shows the command with the repository's credentials masked.

Around every run: a lock held by another live process is waited for (up to the repository's
``lock_timeout``), one left by a dead process on this host is removed; restic retrying an
unreachable storage is given ``storage_timeout`` (restic >= 0.17 would otherwise retry for 15
minutes) and a storage that refuses the credentials stops it at once; and no lock outlives the
run that took it (see :mod:`drkit.restic.locks`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from drkit.config.models import Repository
from drkit.config.secrets import SecretRef
from drkit.processes import pid_exists
from drkit.restic.errors import (
    AccessDenied,
    Interrupted,
    LockVanished,
    RepositoryLocked,
    ResticError,
    ResticFailed,
    ResticNotFound,
    StorageUnreachable,
    TimedOut,
    classify,
)
from drkit.restic.watch import StorageWatch
from drkit.supervise import (
    NO_LIMITS,
    ChildError,
    ChildSpec,
    Exit,
    Limits,
    base_env,
    pause,
    run,
    stopping,
)

log = logging.getLogger("drkit.restic")

# restic's own tuning variables a user may set for drkit's restic (cache, pack size...); the
# repository, its password and the host identity are the config's business, never inherited.
_NOT_INHERITED = ("RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD",
                  "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_KEY_HINT",
                  "RESTIC_HOST", "RESTIC_FROM_REPOSITORY", "RESTIC_FROM_PASSWORD",
                  "RESTIC_FROM_PASSWORD_FILE", "RESTIC_FROM_PASSWORD_COMMAND")
_TUNING = ("GOMAXPROCS", "GOGC", "GODEBUG")
# What each backend's credentials are called in the environment (restic's documentation):
# they belong to the repository, so restic gets them.
_BACKEND_VARS: dict[str, tuple[str, ...]] = {
    "sftp": ("SSH_AUTH_SOCK", "SSH_AGENT_PID"), "b2": ("B2_",), "azure": ("AZURE_",),
    "gs": ("GOOGLE_",), "swift": ("OS_", "ST_", "SWIFT_"), "rclone": ("RCLONE_",),
}

JsonHandler = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ResticRepository:
    """Everything needed to run restic against one configured repository."""

    name: str
    config: Repository
    binary: str = "restic"
    lock_timeout: float = 300.0  # seconds to wait for a live lock before failing
    storage_timeout: float = 300.0  # seconds restic may retry an unreachable storage
    state_dir: Path | None = None  # where a lock clean-up that must wait is remembered
    call_timeout: float | None = None  # the limit of a call that names none (listing, init)
    # restic copy / init --copy-chunker-params: the repository copied from (its location and
    # password reach only those calls, as RESTIC_FROM_*).
    source: Repository | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def environment(self) -> tuple[dict[str, str], list[str]]:
        """The child's environment and the secret values in it (for masking).

        Raises :class:`drkit.errors.SecretError` when a secret cannot be resolved.
        """
        backend = _BACKEND_VARS.get(self.config.url.partition(":")[0], ())
        inherited = [name for name in os.environ
                     if (name.startswith("RESTIC_") and name not in _NOT_INHERITED)
                     or name in _TUNING or name.startswith(backend)] + self.config.env
        s3 = self.config.s3
        if self.config.is_s3 and (s3 is None or s3.access_key is None):
            # No keys in the config: restic uses the ambient AWS credentials, as boto3 does.
            inherited += [name for name in os.environ if name.startswith("AWS_")]
        env = base_env(inherited, RESTIC_REPOSITORY=self.config.url)
        secrets: list[str] = []
        password: SecretRef = self.config.password
        value = password.resolve()  # also proves a password file is readable
        secrets.append(value)
        if password.file is not None:
            env["RESTIC_PASSWORD_FILE"] = str(password.file)
        else:
            env["RESTIC_PASSWORD"] = value
        if s3 is not None:
            if s3.access_key is not None and s3.secret_key is not None:
                env["AWS_ACCESS_KEY_ID"] = s3.access_key.resolve()
                env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key.resolve()
                secrets.append(env["AWS_SECRET_ACCESS_KEY"])
            env["AWS_DEFAULT_REGION"] = s3.region
        if self.source is not None:
            secrets += _source_environment(self.source, env)
        if "AWS_SECRET_ACCESS_KEY" in env:
            secrets.append(env["AWS_SECRET_ACCESS_KEY"])
        for match in re.finditer(r"://[^/@:]*:([^/@]+)@", self.config.url):
            secrets.append(match.group(1))
        return env, secrets


def _source_environment(source: Repository, env: dict[str, str]) -> list[str]:
    """Add the repository copied from to ``env`` (``RESTIC_FROM_*``; its S3 keys when the
    destination has none: restic gives both the same). Returns the secrets added."""
    env["RESTIC_FROM_REPOSITORY"] = source.url
    backend = _BACKEND_VARS.get(source.url.partition(":")[0], ())
    ambient_s3 = source.is_s3 and (source.s3 is None or source.s3.access_key is None)
    for name, value in os.environ.items():
        if name in source.env or (backend and name.startswith(backend)) or \
                (ambient_s3 and name.startswith("AWS_")):
            env.setdefault(name, value)
    value = source.password.resolve()
    if source.password.file is not None:
        env["RESTIC_FROM_PASSWORD_FILE"] = str(source.password.file)
    else:
        env["RESTIC_FROM_PASSWORD"] = value
    added = [value]
    s3 = source.s3
    if s3 is not None and s3.access_key is not None and s3.secret_key is not None and \
            "AWS_ACCESS_KEY_ID" not in env:
        env["AWS_ACCESS_KEY_ID"] = s3.access_key.resolve()
        env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key.resolve()
        added.append(env["AWS_SECRET_ACCESS_KEY"])
    if s3 is not None:
        env.setdefault("AWS_DEFAULT_REGION", s3.region)
    added += [m.group(1) for m in re.finditer(r"://[^/@:]*:([^/@]+)@", source.url)]
    return added


@dataclass
class ResticResult:
    """A finished restic run: exit code, JSON messages seen, other stdout lines, stderr."""

    returncode: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    stderr: str = ""
    stopped: str | None = None  # why drkit stopped restic, if it did
    storage_retries: int = 0  # how often restic said it retried a storage request
    watch_kind: str | None = None  # why the storage watch stopped it, if it did

    def last(self, message_type: str) -> dict[str, Any] | None:
        """The last JSON message of ``message_type`` (e.g. ``"summary"``), if any."""
        for message in reversed(self.messages):
            if message.get("message_type") == message_type:
                return dict(message)
        return None


def mask_url(url: str) -> str:
    """Hide the password of a URL's user-info (``rest:https://u:p@host`` -> ``u:***@host``)."""
    prefix, sep, rest = url.partition(":") if url.startswith(("s3:", "rest:", "sftp:")) else (
        "", "", url)
    parts = urlsplit(rest)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        rest = urlunsplit(parts._replace(netloc=netloc))
    return f"{prefix}{sep}{rest}"


def run_restic(
    repo: ResticRepository,
    args: Sequence[str],
    *,
    action: str,
    on_json: JsonHandler | None = None,
    cwd: Path | None = None,
    stdin: IO[bytes] | None = None,
    ok_codes: Sequence[int] = (0,),
    on_start: Callable[[], None] | None = None,
    limits: Limits = NO_LIMITS,
) -> ResticResult:
    """Run ``restic ARGS`` against ``repo`` and return its result.

    ``on_json`` is called for every JSON line on stdout as it arrives (progress); ``on_start``
    once restic has started (work to overlap with it); ``limits`` bounds the whole call.
    Raises a typed :class:`ResticError` (classified from exit code and stderr) when restic
    exits with a code outside ``ok_codes``; ``action`` names the work for that message; the
    error's ``result`` holds what restic printed before failing.

    A repository locked by a process that no longer exists on this host is unlocked
    (``restic unlock`` removes only stale locks) and the command retried; a live lock is
    waited for, with backoff, up to ``repo.lock_timeout`` seconds (and never past ``limits``).
    """
    from drkit.restic.locks import clear_pending, sweep_after

    if limits.deadline is None and repo.call_timeout is not None:
        limits = Limits.after(repo.call_timeout)
    clear_pending(repo)
    deadline = time.monotonic() + repo.lock_timeout
    delay = 1.0
    while True:
        result, exit_ = _run_once(repo, args, action=action, on_json=on_json, cwd=cwd,
                                  stdin=stdin, on_start=on_start, limits=limits)
        ok = result.returncode in ok_codes and exit_.stopped is None
        sweep_after(repo, result, failed=not ok, action=action)
        if ok:
            return result
        error = error_of(exit_, result, action=action, limits=limits)
        if not isinstance(error, RepositoryLocked) or stdin is not None:
            raise error  # a stream cannot be replayed; the caller restarts the whole unit
        if isinstance(error, LockVanished) and time.monotonic() < deadline:
            log.info("%s; starting restic again", error.message)
            continue
        if remove_stale_lock(repo, error, action=action):
            continue
        wait = min(delay, max(0.0, deadline - time.monotonic()))
        remaining = limits.remaining()
        if wait <= 0 or (remaining is not None and remaining <= wait):
            raise RepositoryLocked(
                f"{error.message} - still locked after waiting {repo.lock_timeout:.0f} s",
                stderr=error.stderr, returncode=error.returncode) from None
        log.info("%s: repository is locked by another run; retrying in %.0f s", action, wait)
        pause(wait)
        if stopping():
            raise Interrupted(f"{action}: interrupted while waiting for the lock")
        delay = min(delay * 2, 15.0)


def remove_stale_lock(repo: ResticRepository, locked: RepositoryLocked, *, action: str) -> bool:
    """If ``locked`` names a lock of a process that no longer runs on this host, remove it
    (``restic unlock`` removes stale locks only) and return True."""
    holder = locked.holder
    if not holder or holder[1] != socket.gethostname() or pid_exists(holder[0]):
        return False
    log.warning("%s: removing a stale restic lock left by PID %d (no longer running)",
                action, holder[0])
    result, exit_ = _run_once(repo, ("unlock",), action=f"unlock {repo.name}", on_json=None,
                              cwd=None, stdin=None, limits=Limits.after(60.0))
    if result.returncode != 0 or exit_.stopped is not None:
        raise error_of(exit_, result, action=f"unlock {repo.name}", limits=Limits.after(60.0))
    return True


def error_of(exit_: Exit, result: ResticResult, *, action: str, limits: Limits
              ) -> ResticError:
    error = _classify_exit(exit_, result, action=action, limits=limits)
    error.result = result
    return error


def _classify_exit(exit_: Exit, result: ResticResult, *, action: str, limits: Limits
                   ) -> ResticError:
    if exit_.stopped == "timeout":
        return TimedOut(f"{action}: {limits.message()} (restic stopped)",
                        stderr=result.stderr, returncode=result.returncode)
    if exit_.stopped == "interrupt":
        return Interrupted(f"{action}: interrupted", stderr=result.stderr,
                           returncode=result.returncode)
    if exit_.stopped == "watch":
        kinds: dict[str | None, type[ResticError]] = {
            "refused": AccessDenied, "vanished_lock": LockVanished}
        cls = kinds.get(result.watch_kind, StorageUnreachable)
        return cls(f"{action}: {exit_.stop_detail}", stderr=result.stderr,
                   returncode=result.returncode)
    return classify(result.returncode, result.stderr, action=action)


def restic_child(repo: ResticRepository, args: Sequence[str], *, action: str,
                 cwd: Path | None = None) -> tuple[ChildSpec, StorageWatch]:
    """The child spec of ``restic ARGS`` on ``repo`` and the watch over its storage retries.
    Raises :class:`drkit.errors.SecretError` when a secret cannot be resolved."""
    env, secrets = repo.environment()
    argv = [repo.binary, *args]
    log.debug("running %s (repository %s: %s, cwd %s)", " ".join(argv), repo.name,
              mask_url(repo.url), cwd or ".")
    # SIGINT, not SIGTERM: restic 0.14 removes its lock on SIGINT only.
    spec = ChildSpec(argv=argv, what=f"restic ({action})", env=env, cwd=cwd, secrets=secrets,
                     stop_signal=signal.SIGINT)
    return spec, StorageWatch(repo.storage_timeout)


def finish_result(result: ResticResult, exit_: Exit, watch: StorageWatch) -> ResticResult:
    """Complete ``result`` from how restic ended."""
    result.returncode = exit_.returncode
    result.stderr = exit_.stderr
    result.stopped = exit_.stopped
    result.storage_retries = watch.retries
    result.watch_kind = watch.kind if exit_.stopped == "watch" else None
    if result.returncode != 0 and result.stderr.strip():
        log.debug("restic stderr:\n%s", result.stderr.rstrip())
    return result


def _run_once(repo: ResticRepository, args: Sequence[str], *, action: str,
              on_json: JsonHandler | None, cwd: Path | None, stdin: IO[bytes] | None,
              limits: Limits, on_start: Callable[[], None] | None = None,
              cleanup: bool = False) -> tuple[ResticResult, Exit]:
    from drkit.restic.locks import after_interrupt

    spec, watch = restic_child(repo, args, action=action, cwd=cwd)
    result = ResticResult(returncode=-1)
    try:
        exit_ = run(spec, stdin=stdin, limits=limits, watch=watch.verdict,
                    on_stderr_line=watch.see, on_started=on_start, cleanup=cleanup,
                    on_stdout_line=lambda raw: take_line(raw, result, on_json))
    except ChildError as exc:
        if stopping():
            raise Interrupted(f"{action}: interrupted") from None
        raise not_found(repo.binary) if exc.missing else ResticFailed(str(exc)) from None
    except BaseException:  # Ctrl-C: restic was stopped; no lock of it may stay
        if not cleanup:
            after_interrupt(repo, f"{action}: interrupted")
        raise
    return finish_result(result, exit_, watch), exit_


def take_line(raw: bytes, result: ResticResult, on_json: JsonHandler | None) -> None:
    """Parse one line of restic's stdout into ``result`` (JSON messages, or plain lines)."""
    line = raw.decode("utf-8", "replace").rstrip("\n")
    if line.startswith(("{", "[")):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            result.stdout_lines.append(line)
            return
        if isinstance(parsed, dict):
            if parsed.get("message_type") != "status":
                result.messages.append(parsed)
            if on_json is not None:
                on_json(parsed)
            return
        result.messages.append({"message_type": "list", "items": parsed})
        return
    if line:
        result.stdout_lines.append(line)


def not_found(binary: str) -> ResticNotFound:
    return ResticNotFound(
        f"restic not found ({binary!r})",
        hint="install it (Debian: apt-get install restic) or set 'restic_binary' in the config",
    )


@functools.cache
def restic_version(binary: str, cache_dir: Path | None = None) -> str:
    """The version of the restic at ``binary`` (``"0.14.0"``). Raises :class:`ResticNotFound`.

    With ``cache_dir`` the answer is kept there, keyed by the binary's identity (path, inode,
    size, modification time), so most runs need not start ``restic version`` at all.
    """
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if found is None:
        raise not_found(binary)
    key = _binary_key(found)
    cache = cache_dir / "restic-version.json" if cache_dir is not None else None
    if cache is not None and key is not None:
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(cache.read_text())
            if known.get("key") == key:
                return str(known["version"])
    try:
        exit_ = run(ChildSpec(argv=[binary, "version"], what="restic version"),
                    limits=Limits.after(30))
    except ChildError:
        raise not_found(binary) from None
    match = re.search(r"restic (\d+\.\d+\.\d+\S*)", exit_.stdout)
    if exit_.returncode != 0 or match is None:
        raise ResticFailed(f"cannot tell the version of {binary!r}: {exit_.stderr.strip()}")
    if cache is not None and key is not None:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"key": key, "version": match.group(1)}))
            temporary.replace(cache)
    return match.group(1)


def _binary_key(path: str) -> str | None:
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
    except OSError:
        return None
    return f"{real}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def version_tuple(version: str | None) -> tuple[int, int, int]:
    """``"0.18.0"`` -> ``(0, 18, 0)``; unknown -> ``(0, 0, 0)``."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else (0, 0, 0)


def json_list(result: ResticResult) -> list[Any]:
    """The JSON array restic printed (``snapshots --json``, ``ls``), or ``[]``."""
    for message in result.messages:
        if message.get("message_type") == "list":
            items = message["items"]
            return items if isinstance(items, list) else []
    return []


__all__ = ["ResticError", "ResticRepository", "ResticResult", "restic_version", "run_restic"]
