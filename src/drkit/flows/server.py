"""The embedded Prefect server ``drkit serve`` runs when no Prefect API is configured.

``prefect server start`` on 127.0.0.1 and a free port, its SQLite database and home under
``state_dir/prefect``, in its own process group so that stopping it stops everything it
started. One ``serve`` a state directory (``serve.lock``); the server's pid, port and start
time are written to ``server.json``, so a server left behind by a ``serve`` killed with -9 is
recognised (its real command line) and stopped by the next one. A watchdog restarts a server
that dies, on the same port, up to ``restarts`` times; past that ``serve`` stops with exit 1.
No Prefect import here: it is a child process and an HTTP health check.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from drkit.errors import BadRequestError, DrkitError
from drkit.processes import free_port

log = logging.getLogger("drkit.serve")
HEALTH_TIMEOUT_S = 180.0
GRACE_S = 30.0  # for serve to stop by itself once its server is gone for good


def configured_api_url() -> str | None:
    """The Prefect API this process would talk to: ``PREFECT_API_URL`` from the environment,
    else what Prefect itself resolves (the active profile, ``prefect.toml``, ``.env``...),
    asked in a child process (importing Prefect here would freeze its settings before an
    embedded server's are set); None when nothing sets one."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    try:
        probe = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", "from prefect.settings import "
             "get_current_settings as s; print(s().api.url or '')"], capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise BadRequestError("cannot read Prefect's settings: no answer in 120 s") from None
    if probe.returncode != 0:
        raise BadRequestError("cannot read Prefect's settings: "
                              + (probe.stderr.strip().splitlines() or ["no output"])[-1])
    return probe.stdout.strip() or None


def prefect_environment(home: Path) -> dict[str, str]:
    """Settings for an embedded server and its clients: everything under ``home``."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no phoning home (and no network here)
        # Concurrency leases on disk beside the database, not in the server's memory: a
        # restarted server still knows who holds a repository's slots (else the slots of a
        # run in flight would stay taken for good, and its lease renewals fail).
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE":
            "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    }


class EmbeddedServer:
    """One ``prefect server start`` child (restartable on the same port)."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {**os.environ, **prefect_environment(self.home)}
        env.pop("PREFECT_API_URL", None)
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.port)], stdin=subprocess.DEVNULL, stdout=sink,
                stderr=sink, env=env, start_new_session=True)
        (self.home / "server.json").write_text(json.dumps(
            {"pid": self.process.pid, "port": self.port, "serve_pid": os.getpid()}))
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        log.info("starting the embedded Prefect server on %s (data in %s)", self.url,
                 self.home)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise DrkitError(f"the embedded Prefect server exited with "
                                 f"{self.process.returncode}; its log ({self.log_path}) "
                                 f"ends:\n{tail}")
            if healthy(self.api_url):
                return
            time.sleep(0.5)
        raise DrkitError(f"the embedded Prefect server did not become healthy within "
                         f"{HEALTH_TIMEOUT_S:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process.pid, self.process)
        (self.home / "server.json").unlink(missing_ok=True)


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to ``pid``'s process group, SIGKILL after 20 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                break
        elif not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # what is left of the group
    if process is not None:
        process.wait(timeout=10)


def _stop_children(parent: int) -> None:
    """SIGTERM to every child of ``parent`` (the flow runs serve started), SIGKILL to those
    still there after 10 s."""
    def children() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
        return found

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        for pid in children():
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and children():
            time.sleep(0.2)


def is_server_process(pid: int, port: int) -> bool:
    """Whether ``pid`` is a live ``prefect server start ... --port PORT`` (by its real command
    line: a recycled pid is never killed)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"prefect" in argv and b"server" in argv and b"start" in argv and \
        b"--port" in argv and argv[argv.index(b"--port") + 1:][:1] == [str(port).encode()]


def stop_orphan(home: Path) -> int | None:
    """Stop the server a killed ``serve`` left behind (per ``server.json``); its pid."""
    try:
        left = json.loads((home / "server.json").read_text())
        pid, port = int(left["pid"]), int(left["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    (home / "server.json").unlink(missing_ok=True)
    if not is_server_process(pid, port):
        return None
    log.warning("stopping the embedded Prefect server (pid %d, port %d) that a stopped "
                "'serve' left running", pid, port)
    _stop_group(pid, None)
    return pid


@contextmanager
def serve_lock(home: Path) -> Iterator[IO[str]]:
    """Held for as long as one ``serve`` runs on this state directory; a second refuses."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "serve.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BadRequestError(f"another 'drkit serve' runs on this state directory "
                                  f"({home.parent}): pid {holder}",
                                  hint="stop it first, or give this one its own "
                                       "state_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield handle


class Watchdog:
    """Restarts the server when it dies, up to ``restarts`` times; then stops ``serve``
    (SIGTERM to this process) with :attr:`failure` set."""

    def __init__(self, server: EmbeddedServer, restarts: int) -> None:
        self.server, self.restarts_left = server, restarts
        self.restarted = 0
        self.deaths = 0  # counted as soon as seen, before any restart
        self._restarting = threading.Event()
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drkit-server-watchdog",
                                        daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=HEALTH_TIMEOUT_S + 30)

    def settle(self) -> None:
        """Wait until the server runs (restarted, if it had died) or serve must stop."""
        deadline = time.monotonic() + HEALTH_TIMEOUT_S + 30
        while time.monotonic() < deadline and self.failure is None:
            process = self.server.process
            if not self._restarting.is_set() and process is not None and \
                    process.poll() is None and healthy(self.server.api_url):
                return
            time.sleep(0.5)

    def _give_up(self, reason: str) -> None:
        """Stop serve (SIGTERM to this process, as Ctrl-C would) with :attr:`failure` set.
        Prefect's runner, stopping, tries to tell the dead server about its runs and may
        retry for minutes: past :data:`GRACE_S`, the runs still going are stopped (their
        records are then written as interrupted) and serve exits 1 here."""
        self.failure = reason
        log.error("%s", reason)
        os.kill(os.getpid(), signal.SIGTERM)
        if self._stopping.wait(GRACE_S):
            return  # serve stopped in time; it reports the failure itself
        _stop_children(os.getpid())
        self.server.stop()
        print(f"drkit: error: {reason}", file=sys.stderr, flush=True)  # the last word
        os._exit(1)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            if code in (0, -signal.SIGTERM, -signal.SIGINT) and self._stopping.wait(GRACE_S):
                return  # stopped with serve (systemctl stop signals the whole group)
            if self._stopping.is_set():
                return
            self._restarting.set()
            self.deaths += 1
            _stop_group(process.pid, process)  # whatever it left of its group
            if self.restarts_left <= 0:
                self._give_up(f"the embedded Prefect server died (exit {code}) and was "
                              f"restarted {self.restarted} times already; serve stops "
                              f"(log: {self.server.log_path})")
                return
            self.restarts_left -= 1
            log.error("the embedded Prefect server died (exit %s); restarting it on %s",
                      code, self.server.url)
            try:
                self.server.start()
            except Exception as exc:
                self._give_up(f"the embedded Prefect server died and did not restart: {exc}")
                return
            self.restarted += 1
            self._restarting.clear()
            log.warning("the embedded Prefect server is back (restart %d)", self.restarted)
            print(f"embedded Prefect server restarted ({self.restarted})", flush=True)


@contextmanager
def embedded_server(state_dir: Path) -> Iterator[EmbeddedServer]:
    """Start ``prefect server start`` (after stopping one a killed ``serve`` left), wait until
    it answers its health check, yield it, and stop it however the block ends."""
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    stop_orphan(home)
    server = EmbeddedServer(home, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        log.info("embedded Prefect server stopped")
