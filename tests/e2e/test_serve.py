"""`drkit serve` and `drkit deploy` against real Prefect servers (`prefect server start`):
scheduled runs, the catch-up after downtime, a worker picking a run up, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drkit.locals3 import free_port
from tests.conftest import Project

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


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line or environment contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def test_serve_runs_schedules_catches_up_once_and_stops_cleanly(project: Project) -> None:
    scheduled_project(project)
    assert project.run("backup", "minutely").returncode == 0
    env = {**os.environ, **project.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # pick scheduled runs up within 2 s
    env.pop("PREFECT_API_URL", None)
    log = (project.root / "serve.log").open("w")
    metrics_port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "serve",
         "--metrics-port", str(metrics_port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project.root)
    try:
        deadline = time.monotonic() + 180
        scheduled = False
        while time.monotonic() < deadline and not scheduled:
            time.sleep(2)
            assert serve.poll() is None, (project.root / "serve.log").read_text()
            minutely = [b for b in backups(project) if b["target"] == "minutely"]
            scheduled = len(minutely) >= 2 and minutely[-1]["status"] == "succeeded"
        output = (project.root / "serve.log").read_text()
        assert scheduled, output
        assert "Prefect UI: http://127.0.0.1:" in output
        assert "backup/backup-minutely" in output and "* * * * *" in output
        yearly = [b for b in backups(project) if b["target"] == "yearly"]
        assert [b["status"] for b in yearly] == ["succeeded"]  # one catch-up, not a burst
        port = output.split("Prefect UI: http://127.0.0.1:", 1)[1].split()[0]
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
        log.close()
    output = (project.root / "serve.log").read_text()
    assert code == 0, output
    assert "serve stopped" in output and "Traceback" not in output
    time.sleep(1)
    assert processes_mentioning(f"127.0.0.1:{port}") == [], "orphan processes left"
    with pytest.raises(OSError):  # the metrics listener went with serve
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """A real `prefect server start` (what a site would run on PostgreSQL); its API URL."""
    from drkit.flows.server import embedded_server

    with embedded_server(tmp_path / "server") as server:
        yield server.api_url


def test_deploy_registers_on_a_work_pool_and_a_worker_runs_it(
        project: Project, prefect_server: str, tmp_path: Path) -> None:
    scheduled_project(project)
    env = {**os.environ, **project.env, "PREFECT_API_URL": prefect_server,
           "PREFECT_HOME": str(tmp_path / "client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deploy = subprocess.run(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "deploy",
         "--work-pool", "site-a"], capture_output=True, text=True, env=env, timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "created process work pool 'site-a'" in deploy.stdout
    assert "prefect worker start --pool site-a" in deploy.stdout

    run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                          "backup/backup-minutely"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                             "site-a", "--run-once"], capture_output=True, text=True, env=env,
                            timeout=300, cwd=tmp_path)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    records = backups(project)
    assert [(b["target"], b["status"]) for b in records] == [("minutely", "succeeded")]

    query = urllib.request.Request(f"{prefect_server}/flow_runs/filter", method="POST",
                                   data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(query, timeout=30) as response:
        runs = json.loads(response.read())
    # The one the worker ran (the schedule has queued more, waiting for a worker).
    assert [r["name"] for r in runs if r["state_type"] != "SCHEDULED"] == [
        "backup minutely -> r"]
    assert [r["state_type"] for r in runs if r["name"] == "backup minutely -> r"] == [
        "COMPLETED"]

    # Without a server to register on, deploy is a bad request (exit 2), not a traceback.
    env.pop("PREFECT_API_URL")
    lonely = subprocess.run(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "deploy",
         "--work-pool", "site-a"], capture_output=True, text=True, env=env, timeout=60)
    assert lonely.returncode == 2 and "PREFECT_API_URL" in lonely.stderr
