"""Lock handling in the restic choke point, with a fake restic that reports a lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from drkit.config.models import Repository
from drkit.config.secrets import SecretRef
from drkit.restic.errors import RepositoryLocked
from drkit.restic.runner import ResticRepository, run_restic

# Reports "locked by PID $RESTIC_FAKE_LOCK_PID on this host" until $STATE/unlocked exists; `unlock`
# creates it. Every call is appended to $STATE/calls.
FAKE = textwrap.dedent('''\
    #!{python}
    import os, sys, pathlib
    state = pathlib.Path(os.environ["RESTIC_FAKE_STATE"])
    with open(state / "calls", "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
    if sys.argv[1] == "unlock":
        (state / "unlocked").touch()
        sys.exit(0)
    if not (state / "unlocked").exists():
        print("unable to create lock in backend: repository is already locked exclusively "
              f"by PID {{os.environ['RESTIC_FAKE_LOCK_PID']}} on {host} by root (UID 0, GID 0)",
              file=sys.stderr)
        sys.exit(1)
    print("ok")
''')


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ResticRepository, Path]:
    binary = tmp_path / "restic"
    binary.write_text(FAKE.format(python=sys.executable, host=socket.gethostname()))
    binary.chmod(0o755)
    monkeypatch.setenv("RESTIC_FAKE_STATE", str(tmp_path))
    monkeypatch.setenv("FAKE_PW", "pw-123")
    repo = ResticRepository(
        name="r", binary=str(binary), lock_timeout=2.5,
        config=Repository(url="/r", password=SecretRef(env="FAKE_PW")))
    return repo, tmp_path


def test_stale_lock_is_removed_and_the_command_retried(
        fake: tuple[ResticRepository, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    repo, state = fake
    dead = subprocess.Popen(["true"])
    dead.wait()
    monkeypatch.setenv("RESTIC_FAKE_LOCK_PID", str(dead.pid))
    result = run_restic(repo, ("snapshots",), action="snapshots of r")
    assert result.stdout_lines == ["ok"]
    assert (state / "calls").read_text().split("\n")[:3] == ["snapshots", "unlock", "snapshots"]
    assert f"stale restic lock left by PID {dead.pid}" in caplog.text


def test_live_lock_is_waited_for_then_fails_clearly(
        fake: tuple[ResticRepository, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, state = fake
    monkeypatch.setenv("RESTIC_FAKE_LOCK_PID", str(os.getpid()))  # alive: never removed
    start = time.monotonic()
    with pytest.raises(RepositoryLocked, match="still locked after waiting 2 s"):
        run_restic(repo, ("backup",), action="backup t -> r")
    assert 1.0 <= time.monotonic() - start < 10
    calls = (state / "calls").read_text().split()
    assert "unlock" not in calls and calls.count("backup") >= 2  # retried, never unlocked


def test_no_unlock_when_the_repository_holds_no_lock(fake: tuple[ResticRepository, Path]
                                                     ) -> None:
    """restic's unlock sends SIGHUP to the pid of every lock of this host: drkit runs it only
    when there is a lock to remove."""
    from dataclasses import replace

    from drkit.restic.locks import sweep

    repo, state = fake
    local = state / "local-repo"
    (local / "locks").mkdir(parents=True)
    repo = replace(repo, config=Repository(url=str(local), password=SecretRef(env="FAKE_PW")),
                   state_dir=state)
    assert sweep(repo, reason="test")
    assert not (state / "calls").exists()  # restic never started
    (local / "locks" / "0123abcd").write_text("a lock")
    assert sweep(repo, reason="test")
    assert (state / "calls").read_text().split() == ["unlock"]
