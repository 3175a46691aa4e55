"""Helpers for tests that put two things in conflict: a real restic holding a lock, waiting
on a condition (never on a sleep), gates that stop a child at a known point."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what`` after
    ``timeout`` seconds (a bound for a broken test, not a timing the test relies on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def restic_env(url: str, password: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RESTIC_REPOSITORY": url, "RESTIC_PASSWORD": password, **extra}


def locks(binary: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The locks in the repository, each as restic decodes it (pid, hostname, exclusive)."""
    listed = subprocess.run([binary, "--no-lock", "list", "locks"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    found = []
    for lock_id in listed.stdout.split():
        shown = subprocess.run([binary, "--no-lock", "cat", "lock", lock_id], env=env,
                               capture_output=True, text=True, timeout=120)
        if shown.returncode == 0:  # a lock file still being written is not a lock yet
            found.append({"id": lock_id, **json.loads(shown.stdout)})
    return found


@contextmanager
def restic_holding_lock(binary: str, env: dict[str, str], *, exclusive: bool
                        ) -> Iterator[subprocess.Popen[bytes]]:
    """A real restic holding a lock on the repository until the block ends (or the test kills
    it): ``backup --stdin`` (shared) or ``key passwd`` (exclusive), both waiting on a stdin
    that the test holds open. Yields once the lock is written and readable."""
    argv = [binary, "key", "passwd"] if exclusive else \
        [binary, "backup", "--stdin", "--stdin-filename", "held"]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: any(lock["pid"] == holder.pid for lock in locks(binary, env)),
                 "the lock holder's lock")
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def gated_restic(path: Path, real: str, *, subcommand: str, gate_dir: Path) -> Path:
    """A restic wrapper that, for ``subcommand``, says so (``gate_dir/<subcommand>-started``)
    and waits for ``gate_dir/go`` before running the real restic: the test acts at that
    exact point. ``forget ... --prune`` (one command in older drkit) is split the same way
    restic does it internally: forget, then the gate, then prune."""
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        gate={gate_dir}
        wait_gate() {{
            touch "$gate/{subcommand}-started"
            while [ ! -e "$gate/go" ]; do sleep 0.02; done
        }}
        case " $* " in
          *" forget "*"--prune"*)
            if [ "{subcommand}" = prune ]; then
              args=$(printf '%s\\n' "$@" | grep -v -- '--prune')
              {real} $args || exit $?
              wait_gate
              exec {real} prune
            fi ;;
        esac
        if [ "$1" = "{subcommand}" ]; then wait_gate; fi
        exec {real} "$@"
        """))
    path.chmod(0o755)
    return path


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of the live processes whose environment has ``name=value`` (e.g. every restic
    working on one repository: its URL is in RESTIC_REPOSITORY, not on its command line)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def unique_sleep() -> str:
    """``sleep N`` with an N no other test uses, so that a test can look for its own."""
    return f"sleep {300000 + uuid.uuid4().int % 600000}"
