"""`drkit serve` against its real embedded Prefect server (`prefect server start`): scheduled
runs, the catch-up after downtime, clean shutdown, a server that dies, a second serve, a serve
killed with -9 and restarted with a changed config. (`drkit deploy` and workers:
tests/e2e/test_sites.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from drkit.flows.server import healthy, is_server_process
from drkit.locals3 import free_port
from tests.conftest import Project
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def backups(project: Project) -> list[dict[str, Any]]:
    result = project.run("report", "--format", "json", "--since", "1d")
    assert result.returncode == 0, result.stderr
    return [r for r in json.loads(result.stdout)["records"] if r["kind"] == "backup"]


def scheduled_project(project: Project) -> None:
    data = project.root / "data"
    data.mkdir()
    (data / "a.txt").write_text("served")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            # backed up just before serve starts: no catch-up; then every minute
            "minutely": {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                         "schedule": "* * * * *"},
            # never backed up, next due in months: exactly one catch-up backup
            "yearly": {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                       "schedule": "0 0 1 1 *"},
        },
    })
    assert project.run("repo", "init").returncode == 0


def server_of(project: Project) -> tuple[int, int]:
    """The embedded server's (pid, port), as serve wrote them down."""
    left = json.loads((project.root / "config" / ".drkit" / "prefect" / "server.json").read_text())
    return int(left["pid"]), int(left["port"])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_serve(project: Project, name: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **project.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(project.root / "no-profile"),  # no user profile's API URL
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # pick scheduled runs up within 2 s
    env.pop("PREFECT_API_URL", None)
    with (project.root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "drkit", "--config", str(project.config_path), "serve",
             *extra], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project.root)


def output(project: Project, name: str) -> str:
    return (project.root / f"{name}.log").read_text(errors="replace")


def test_serve_runs_schedules_catches_up_once_and_stops_cleanly(project: Project) -> None:
    scheduled_project(project)
    assert project.run("backup", "minutely").returncode == 0
    metrics_port = free_port()
    serve = start_serve(project, "serve", "--metrics-port", str(metrics_port))
    try:
        deadline = time.monotonic() + 180
        scheduled = False
        while time.monotonic() < deadline and not scheduled:
            time.sleep(2)
            assert serve.poll() is None, output(project, "serve")
            minutely = [b for b in backups(project) if b["target"] == "minutely"]
            scheduled = len(minutely) >= 2 and minutely[-1]["status"] == "succeeded"
        log = output(project, "serve")
        assert scheduled, log
        assert "Prefect UI: http://127.0.0.1:" in log
        assert "backup/default.backup-minutely" in log and "* * * * *" in log
        yearly = [b for b in backups(project) if b["target"] == "yearly"]
        assert [b["status"] for b in yearly] == ["succeeded"]  # its one catch-up
        pid, port = server_of(project)
        assert log.split("Prefect UI: http://127.0.0.1:", 1)[1].split()[0] == str(port)
        assert is_server_process(pid, port) and listening(port)
        # /metrics, computed at the scrape: the scheduled backups are in it.
        def finished(target: str) -> list[float]:
            return [datetime.fromisoformat(b["finished_at"].replace("Z", "+00:00"))
                    .timestamp() for b in backups(project)
                    if b["target"] == target and b["status"] == "succeeded"]

        before = max(finished("minutely"))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=30) as response:
            families = {f.name: f for f in text_string_to_metric_families(
                response.read().decode())}
        (sample,) = [s for s in families["drkit_backup_last_success_timestamp_seconds"].samples
                     if s.labels["target"] == "minutely"]
        # the newest success at the scrape: the one seen before, or one finished since
        assert sample.value >= before - 1e-3
        assert any(abs(sample.value - at) < 1e-3 for at in finished("minutely"))
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
    log = output(project, "serve")
    assert code == 0, log
    assert "serve stopped" in log and "Traceback" not in log
    # Nothing left: the server process is gone and nothing listens on its port.
    wait_for(lambda: not is_server_process(pid, port) and not listening(port),
             "the embedded server to be gone", 30)
    with pytest.raises(OSError):  # the metrics listener went with serve
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


def test_serve_watches_its_server_refuses_a_twin_and_cleans_up_after_kill_9(
        project: Project) -> None:
    """The embedded server killed: restarted once, then serve stops with exit 1. A second
    serve on the same state directory refuses. serve killed with -9 leaves its server
    running; the next serve stops it and registers its changed config."""
    scheduled_project(project)
    serve = start_serve(project, "watched", "--server-restarts", "1")
    try:
        wait_for(lambda: "serving; Ctrl-C" in output(project, "watched") or serve.poll(),
                 "serve to start", 240)
        assert serve.poll() is None, output(project, "watched")
        twin = start_serve(project, "twin")
        assert twin.wait(timeout=120) == 2
        assert "another 'drkit serve' runs on this state directory" in output(project, "twin")
        pid, port = server_of(project)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "embedded Prefect server restarted (1)" in output(project, "watched"),
                 "the server's restart", 240)
        restarted, same_port = server_of(project)
        assert restarted != pid and same_port == port and healthy(f"http://127.0.0.1:{port}/api")
        os.kill(restarted, signal.SIGKILL)  # past --server-restarts 1: serve stops
        assert serve.wait(timeout=120) == 1
    finally:
        if serve.poll() is None:
            serve.kill()
    # drkit's last word is one error line (Prefect's client and the flow runs it stopped may
    # have printed their own lines too).
    last = [line for line in output(project, "watched").splitlines()
            if line.startswith("drkit:")][-1]
    assert last.startswith("drkit: error: the embedded Prefect server died (exit -9) and was "
                           "restarted 1 times already; serve stops"), last
    assert not listening(port)

    serve = start_serve(project, "killed")
    wait_for(lambda: "serving; Ctrl-C" in output(project, "killed") or serve.poll(),
             "serve to start", 240)
    orphan, port = server_of(project)
    serve.kill()  # -9: no clean-up
    serve.wait(timeout=30)
    assert is_server_process(orphan, port) and listening(port)  # left behind
    # Restarted for real, with a changed config: the next serve stops the orphan, updates
    # the changed schedule and removes the one no longer declared.
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["minutely"]["schedule"] = "*/5 * * * *"
    del config["targets"]["yearly"]
    project.write_config(config)
    serve = start_serve(project, "again")
    try:
        wait_for(lambda: "serving; Ctrl-C" in output(project, "again") or serve.poll(),
                 "serve to start again", 240)
        assert serve.poll() is None, output(project, "again")
        assert not is_server_process(orphan, port)
        _, new_port = server_of(project)
        query = urllib.request.Request(f"http://127.0.0.1:{new_port}/api/deployments/filter",
                                       method="POST", data=b"{}",
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(query, timeout=30) as response:
            found = {d["name"]: d["schedules"][0]["schedule"]["cron"]
                     for d in json.loads(response.read())}
        assert found == {"default.backup-minutely": "*/5 * * * *"}
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, output(project, "again")
