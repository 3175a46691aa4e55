"""The one place a restic process is started.

Arguments go as a list (never a shell); the repository URL, password and S3 keys go through the
child's environment (``RESTIC_REPOSITORY``, ``RESTIC_PASSWORD`` or ``RESTIC_PASSWORD_FILE``,
``AWS_*``), never argv, so ``ps`` shows no secret. The debug log shows the command with the
repository's credentials masked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from drkit.config.models import Repository
from drkit.config.secrets import SecretRef
from drkit.processes import pid_exists, stop_process
from drkit.restic.errors import (
    RepositoryLocked,
    ResticError,
    ResticFailed,
    ResticNotFound,
    classify,
)

log = logging.getLogger("drkit.restic")

# Variables a user's shell may carry that would silently redirect restic; the config decides.
_INHERITED_RESTIC_VARS = (
    "RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND", "RESTIC_KEY_HINT",
)

JsonHandler = Callable[[dict[str, Any]], None]

# restic children still running, so that an interrupt can stop them all (see terminate_all).
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


@dataclass(frozen=True)
class ResticRepository:
    """Everything needed to run restic against one configured repository."""

    name: str
    config: Repository
    binary: str = "restic"
    lock_timeout: float = 300.0  # seconds to wait for a live lock before failing

    @property
    def url(self) -> str:
        return self.config.url

    def environment(self) -> tuple[dict[str, str], list[str]]:
        """The child's environment and the secret values in it (for masking).

        Raises :class:`drkit.errors.SecretError` when a secret cannot be resolved.
        """
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_RESTIC_VARS}
        env["RESTIC_REPOSITORY"] = self.config.url
        secrets: list[str] = []
        password: SecretRef = self.config.password
        value = password.resolve()  # also proves a password file is readable
        secrets.append(value)
        if password.file is not None:
            env["RESTIC_PASSWORD_FILE"] = str(password.file)
        else:
            env["RESTIC_PASSWORD"] = value
        s3 = self.config.s3
        if s3 is not None:
            if s3.access_key is not None and s3.secret_key is not None:
                env["AWS_ACCESS_KEY_ID"] = s3.access_key.resolve()
                env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key.resolve()
                secrets.append(env["AWS_SECRET_ACCESS_KEY"])
            env["AWS_DEFAULT_REGION"] = s3.region
        for match in re.finditer(r"://[^/@:]*:([^/@]+)@", self.config.url):
            secrets.append(match.group(1))
        return env, secrets


@dataclass
class ResticResult:
    """A finished restic run: exit code, JSON messages seen, other stdout lines, stderr."""

    returncode: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    stderr: str = ""

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


def mask(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


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
) -> ResticResult:
    """Run ``restic ARGS`` against ``repo`` and return its result.

    ``on_json`` is called for every JSON line on stdout as it arrives (progress);
    ``on_start`` once restic has started (work to overlap with it).
    Raises a typed :class:`ResticError` (classified from exit code and stderr) when restic
    exits with a code outside ``ok_codes``; ``action`` names the work for that message.

    A repository locked by a process that no longer exists on this host is unlocked
    (``restic unlock`` removes only stale locks) and the command retried; a live lock is
    waited for, with backoff, up to ``repo.lock_timeout`` seconds.
    """
    deadline = time.monotonic() + repo.lock_timeout
    delay = 1.0
    while True:
        try:
            return _run_once(repo, args, action=action, on_json=on_json, cwd=cwd, stdin=stdin,
                             ok_codes=ok_codes, on_start=on_start)
        except RepositoryLocked as locked:
            if stdin is not None:
                raise  # a stream cannot be replayed
            holder = locked.holder
            if holder and holder[1] == socket.gethostname() and not pid_exists(holder[0]):
                log.warning("%s: removing a stale restic lock left by PID %d (no longer "
                            "running)", action, holder[0])
                _run_once(repo, ("unlock",), action=f"unlock {repo.name}", on_json=None,
                          cwd=None, stdin=None, ok_codes=(0,))
                continue
            if time.monotonic() + delay > deadline:
                raise RepositoryLocked(
                    f"{locked.message} - still locked after waiting "
                    f"{repo.lock_timeout:.0f} s", stderr=locked.stderr,
                    returncode=locked.returncode) from None
            log.info("%s: repository is locked by another run; retrying in %.0f s",
                     action, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _run_once(
    repo: ResticRepository,
    args: Sequence[str],
    *,
    action: str,
    on_json: JsonHandler | None,
    cwd: Path | None,
    stdin: IO[bytes] | None,
    ok_codes: Sequence[int],
    on_start: Callable[[], None] | None = None,
) -> ResticResult:
    env, secrets = repo.environment()
    argv = [repo.binary, *args]
    log.debug("running %s (repository %s: %s, cwd %s)", " ".join(mask(a, secrets) for a in argv),
              repo.name, mask_url(repo.url), cwd or ".")
    try:
        proc = subprocess.Popen(
            argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
        )
    except FileNotFoundError:
        raise _not_found(repo.binary) from None
    except PermissionError:
        raise ResticNotFound(f"restic binary {repo.binary!r} is not executable") from None
    with _live_lock:
        _live.add(proc)
    result = ResticResult(returncode=-1)
    stderr_chunks: list[bytes] = []
    assert proc.stdout is not None and proc.stderr is not None
    drain = threading.Thread(target=_drain, args=(proc.stderr, stderr_chunks), daemon=True)
    drain.start()
    try:
        if on_start is not None:
            on_start()
        for raw in proc.stdout:
            _take_line(raw, result, on_json)
        result.returncode = proc.wait()
    except BaseException:
        # Ctrl-C or a failing callback: never leave restic running behind us.
        stop_process(proc)
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
        drain.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    result.stderr = mask(b"".join(stderr_chunks).decode("utf-8", "replace"), secrets)
    if result.returncode not in ok_codes:
        if result.stderr.strip():
            log.debug("restic stderr:\n%s", result.stderr.rstrip())
        raise classify(result.returncode, result.stderr, action=action)
    return result


def terminate_all() -> None:
    """Stop every restic child still running (on Ctrl-C or SIGTERM)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()


def _take_line(raw: bytes, result: ResticResult, on_json: JsonHandler | None) -> None:
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


def _drain(stream: IO[bytes], into: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        into.append(chunk)


def _not_found(binary: str) -> ResticNotFound:
    return ResticNotFound(
        f"restic not found ({binary!r})",
        hint="install it (Debian: apt-get install restic) or set 'restic_binary' in the config",
    )


@functools.cache
def restic_version(binary: str) -> str:
    """The version of the restic at ``binary`` (``"0.14.0"``). Raises :class:`ResticNotFound`."""
    if shutil.which(binary) is None and not Path(binary).is_file():
        raise _not_found(binary)
    try:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (FileNotFoundError, PermissionError):
        raise _not_found(binary) from None
    match = re.search(r"restic (\d+\.\d+\.\d+\S*)", out.stdout)
    if out.returncode != 0 or match is None:
        raise ResticFailed(f"cannot tell the version of {binary!r}: {out.stderr.strip()}")
    return match.group(1)


def json_list(result: ResticResult) -> list[Any]:
    """The JSON array restic printed (``snapshots --json``, ``ls``), or ``[]``."""
    for message in result.messages:
        if message.get("message_type") == "list":
            items = message["items"]
            return items if isinstance(items, list) else []
    return []


__all__ = ["ResticError", "ResticRepository", "ResticResult", "restic_version", "run_restic"]
