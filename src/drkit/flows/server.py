"""The embedded Prefect server ``drkit serve`` runs when no ``PREFECT_API_URL`` is set.

``prefect server start`` on 127.0.0.1 and a free port, its SQLite database and home under
``state_dir/prefect``, in its own process group so that stopping it stops everything it
started. No Prefect import here: it is a child process and an HTTP health check.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drkit.errors import DrkitError
from drkit.processes import free_port

log = logging.getLogger("drkit.serve")
HEALTH_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class EmbeddedServer:
    url: str  # http://127.0.0.1:PORT
    home: Path
    pid: int

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def prefect_environment(home: Path) -> dict[str, str]:
    """Settings for an embedded server and its clients: everything under ``home``."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no phoning home (and no network here)
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    }


@contextmanager
def embedded_server(state_dir: Path) -> Iterator[EmbeddedServer]:
    """Start ``prefect server start``, wait until it answers its health check, yield it, and
    stop it (SIGTERM to its process group, SIGKILL after 20 s) however the block ends."""
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = home / "server.log"
    env = {**os.environ, **prefect_environment(home)}
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
            start_new_session=True)
    server = EmbeddedServer(url=f"http://127.0.0.1:{port}", home=home, pid=process.pid)
    try:
        _wait_healthy(server, process, log_path)
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: EmbeddedServer, process: subprocess.Popen[bytes],
                  log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    log.info("starting the embedded Prefect server on %s (data in %s)", server.url, server.home)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise DrkitError(f"the embedded Prefect server exited with {process.returncode}; "
                             f"its log ({log_path}) ends:\n{tail}")
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise DrkitError(f"the embedded Prefect server did not become healthy within "
                     f"{HEALTH_TIMEOUT_S:.0f} s (log: {log_path})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    log.info("embedded Prefect server stopped")
