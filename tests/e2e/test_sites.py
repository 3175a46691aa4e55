"""A site of two hosts on Prefect, for real: one `prefect server start` on PostgreSQL, the
catalog on PostgreSQL, and two `drkit worker` processes, each in its own UTS + mount namespace
(hostnames host-a and host-b; each sees only its own data and state directory).

Host-bound backups run only on their host, prune waits for a backup of the same repository
on the other host (Prefect's global concurrency limit, not restic's lock), both hosts' records
form one chain, a drill run publishes its artifact, and late runs of a worker that was down
back up once and are skipped after that."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drkit.processes import free_port
from tests.conftest import Project
from tests.helpers import wait_for

pytestmark = pytest.mark.slow
namespaces = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="two hosts need root for unshare (UTS + mount namespaces)")


@pytest.fixture(scope="module")
def prefect_on_postgres(postgres: Any, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[str]:
    """`prefect server start` on a PostgreSQL database; its API URL."""
    from drkit.flows.server import healthy

    name = f"prefect_{uuid.uuid4().hex[:8]}"
    postgres.sql(f"create database {name}")
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL":
               postgres.dsn(name).replace("postgresql://", "postgresql+asyncpg://"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # a run waiting for its deployment's slot is looked at again after 1 s, not 30
           "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: healthy(api) or server.poll() is not None, "the Prefect server", 180)
        assert server.poll() is None, (home / "server.log").read_text()[-3000:]
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


class Site:
    """The site's files: one config for both hosts, per-host data and state behind the same
    paths (bind-mounted in each host's namespace)."""

    def __init__(self, project: Project, api: str, catalog: str) -> None:
        self.project, self.api, self.root = project, api, project.root
        self.mnt = self.root / "mnt"  # data/ and state/: each host's own, mounted here
        self.hosts = self.root / "hosts"  # hidden in every namespace once mounted
        self.env = {**os.environ, **project.env, "PREFECT_API_URL": api,
                    "PREFECT_HOME": str(self.root / "prefect-client"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        for host in ("host-a", "host-b"):
            (self.hosts / host / "data").mkdir(parents=True)
            (self.hosts / host / "state").mkdir()
            (self.hosts / host / "data" / "owner.txt").write_text(f"data of {host}\n")
        (self.mnt / "data").mkdir(parents=True)
        (self.mnt / "state").mkdir()
        plans = self.root / "recovery_plans"
        plans.mkdir()
        (plans / "p.yaml").write_text(
            "name: p\nobjectives: {rpo: 1h, rto: 10m}\nschedule: '0 0 1 1 *'\nsteps:\n"
            "  - target: a-files\n    checks:\n      - files_exist: [owner.txt]\n")
        yearly = "0 0 1 1 *"
        slow = ["sh", "-c", f"touch {self.root}/slow.started; "
                f"while [ ! -e {self.root}/slow.release ]; do sleep 0.05; done; echo slow"]
        project.write_config({
            "site": "two",
            "catalog": catalog,
            "state_dir": str(self.mnt / "state"),
            "repositories": {"r": {"url": str(self.root / "repo"),
                                   "password": {"env": "DRKIT_TEST_PASSWORD"}}},
            "targets": {
                "a-files": {"kind": "files", "paths": [str(self.mnt / "data")],
                            "repositories": ["r"], "host": "host-a", "schedule": yearly},
                "a-slow": {"kind": "command", "command": slow, "repositories": ["r"],
                           "host": "host-a", "schedule": yearly,
                           "retention": {"keep_last": 1}},
                "b-files": {"kind": "files", "paths": [str(self.mnt / "data")],
                            "repositories": ["r"], "host": "host-b", "schedule": yearly},
            },
            "prune": {"schedule": yearly},
            "lock_timeout": "10m",
            "retries": {"attempts": 0, "delays": ["1s"]},
        })

    def drkit(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drkit", "--config",
                               str(self.project.config_path), *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout, cwd=self.root)

    def start_worker(self, host: str) -> None:
        """`drkit worker --limit 1` as host ``host``: its hostname, its data and state."""
        script = (f"hostname {host} && mount --bind {self.hosts / host / 'data'} "
                  f"{self.mnt / 'data'} && mount --bind {self.hosts / host / 'state'} "
                  f"{self.mnt / 'state'} && mount -t tmpfs hidden {self.hosts} && "
                  f"exec {sys.executable} -m drkit --config {self.project.config_path} "
                  f"worker --limit 1")
        log = open(self.root / f"worker-{host}.log", "ab")  # noqa: SIM115 (the worker's)
        self.workers[host] = subprocess.Popen(
            ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
            start_new_session=True)
        log.close()

    def stop_worker(self, host: str) -> None:
        worker = self.workers.pop(host)
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)

    def log(self, host: str) -> str:
        return (self.root / f"worker-{host}.log").read_text(errors="replace")[-4000:]

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A client of this site's server (whatever server an earlier test in this process
        pointed Prefect's settings at, which it read once, at import)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api}), \
                get_client(sync_client=True) as client:
            yield client

    def run(self, deployment: str) -> str:
        """Queue one run of ``deployment`` now; its id."""
        with self.client() as client:
            found = client.read_deployment_by_name(f"{deployment.split('.')[1].split('-')[0]}/"
                                                   f"{deployment}")
            return str(client.create_flow_run_from_deployment(found.id).id)

    def state(self, run_id: str) -> tuple[str, str]:
        with self.client() as client:
            run = client.read_flow_run(uuid.UUID(run_id))
            assert run.state is not None
            return run.state.type.value, str(run.state.message or "")

    def finished(self, run_id: str, *, timeout: float = 240) -> str:
        state = wait_for(lambda: (s := self.state(run_id))[0] in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, f"flow run {run_id}",
                         timeout)
        return str(state[0])

    def logged(self, run_id: str, text: str) -> bool:
        """Whether the run's logs in Prefect have a line containing ``text``."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with self.client() as client:
            logs = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
        return any(text in log.message for log in logs)

    def records(self, kind: str) -> list[dict[str, Any]]:
        result = self.drkit("report", "--format", "json", "--since", "1d")
        assert result.returncode == 0, result.stderr
        return [r for r in json.loads(result.stdout)["records"] if r["kind"] == kind]

    def close(self) -> None:
        for host in list(self.workers):
            self.stop_worker(host)


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def site(project: Project, postgres: Any, prefect_on_postgres: str,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    name = f"catalog_{uuid.uuid4().hex[:10]}"
    postgres.sql(f"create database {name}")
    catalog = postgres.dsn(name).replace("postgresql://", "postgresql+psycopg://")
    monkeypatch.setenv("PREFECT_API_URL", prefect_on_postgres)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    built = Site(project, prefect_on_postgres, catalog)
    try:
        yield built
    finally:
        built.close()


@namespaces
def test_two_hosts_one_site(site: Site) -> None:
    assert site.drkit("repo", "init").returncode == 0
    deployed = site.drkit("deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "registered on work pool 'drkit-two'" in deployed.stdout
    for name in ("two.backup-a-files", "two.backup-b-files", "two.prune", "two.drill-p"):
        assert name in deployed.stdout
    site.start_worker("host-a")
    site.start_worker("host-b")

    # host-a busy (at its limit of one run) with a backup that holds repository r ...
    slow = site.run("two.backup-a-slow")
    wait_for(lambda: (site.root / "slow.started").exists(), "a-slow's backup to start", 240)
    # ... a-files, bound to host-a, waits for host-a, although host-b is idle: b-files,
    # queued after it, runs on host-b, and a-files is still waiting when it has finished.
    a_files = site.run("two.backup-a-files")
    b_files = site.run("two.backup-b-files")
    assert site.finished(b_files) == "COMPLETED", site.log("host-b")
    assert site.state(a_files)[0] == "SCHEDULED", site.state(a_files)
    # A prune (any host: host-b takes it, host-a is busy) waits for the backup on host-a.
    prune = site.run("two.prune")
    wait_for(lambda: site.logged(prune, "prune a-slow in r: asks for repository 'r' alone"),
             "the prune to ask for r on host-b", 120)
    assert site.state(slow)[0] == "RUNNING"
    (site.root / "slow.release").touch()
    assert site.finished(slow) == "COMPLETED", site.log("host-a")
    assert site.finished(prune) == "COMPLETED", site.log("host-b")
    assert site.finished(a_files) == "COMPLETED", site.log("host-a")

    backups = {b["target"]: b for b in site.records("backup")}
    assert {t: (b["status"], b["hostname"]) for t, b in backups.items()} == {
        "a-slow": ("succeeded", "host-a"), "a-files": ("succeeded", "host-a"),
        "b-files": ("succeeded", "host-b")}
    assert " on host-a" in backups["a-files"]["actor"]
    assert " on host-b" in backups["b-files"]["actor"]
    (pruned,) = site.records("prune")
    assert pruned["target"] == "a-slow" and pruned["status"] == "succeeded"
    assert " on host-b" in pruned["actor"]
    # The prune started while a-slow's backup held r and got r only once it was recorded:
    # before that, nothing of it ran (restic's lock alone would have let it start restic).
    held_until = stamp(backups["a-slow"]["finished_at"])
    assert stamp(pruned["started_at"]) < held_until
    assert stamp(pruned["evidence"]["lock_acquired_at"] + "+00:00") >= held_until

    # Each host backed up its own data (the other's is not even visible there).
    for target, host in (("a-files", "host-a"), ("b-files", "host-b")):
        snapshot = backups[target]["snapshot_id"]
        out = site.project.restic(str(site.root / "repo"), "dump", snapshot,
                                  f"{site.mnt}/data/owner.txt")
        assert out.stdout == f"data of {host}\n", out.stderr

    # A drill through its deployment (any host) publishes its table artifact.
    drill = site.run("two.drill-p")
    assert site.finished(drill) == "COMPLETED", site.log("host-a") + site.log("host-b")
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with site.client() as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(drill)])))
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert artifact.key == "drill-p" and artifact.type == "table"
    assert {"what": "verdict", "result": "passed"}.items() <= rows[-1].items()
    assert any(r["what"].startswith("RPO") and r["result"] == "met" for r in rows)
    # drkit's own log lines are in the runs' logs.
    assert site.logged(slow, "backup a-slow -> r: holds repository 'r' shared across hosts")

    # Worker down while a-files was due three times; back, it backs up once, skips the rest.
    site.stop_worker("host-a")
    since = stamp(backups["a-files"]["started_at"])
    late = []
    from prefect.states import Scheduled

    with site.client() as client:
        found = client.read_deployment_by_name("backup/two.backup-a-files")
        for offset in (1, 2, 3):
            late.append(str(client.create_flow_run_from_deployment(
                found.id, state=Scheduled(scheduled_time=since + timedelta(seconds=offset))
            ).id))
    assert since + timedelta(seconds=3) < datetime.now(UTC)  # all three were due already
    site.start_worker("host-a")
    assert [site.finished(run) for run in late] == ["COMPLETED"] * 3, site.log("host-a")
    new = [b for b in site.records("backup") if b["target"] == "a-files"
           and stamp(b["started_at"]) > since]
    assert [b["status"] for b in new] == ["succeeded"]
    skips = site.records("skip")
    assert [(s["target"], s["status"]) for s in skips] == [("a-files", "skipped")] * 2
    assert all(s["evidence"]["newer_backup"]["snapshot_id"] == new[0]["snapshot_id"]
               for s in skips)

    # Both hosts' records (and the test host's) form one chain.
    verified = site.drkit("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_deploy_refuses_what_cannot_work(project: Project, prefect_on_postgres: str) -> None:
    """A SQLite catalog for a site of two hosts; no Prefect server at all."""
    data = project.root / "data"
    data.mkdir()
    config = {"site": "two", "repositories": {"r": {"url": str(project.root / "repo"),
                                                     "password": {"env": "DRKIT_TEST_PASSWORD"}}},
              "targets": {name: {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                                 "host": name, "schedule": "0 0 1 1 *"}
                          for name in ("host-a", "host-b")}}
    project.write_config(config)
    env = {**os.environ, **project.env, "PREFECT_API_URL": prefect_on_postgres,
           "PREFECT_HOME": str(project.root / "client")}
    def deploy() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drkit", "--config",
                               str(project.config_path), "deploy"], capture_output=True,
                              text=True, env=env, timeout=120)

    shared = deploy()
    assert shared.returncode == 2
    assert "SQLite catalog" in shared.stderr and "host-a, host-b" in shared.stderr
    # No site of its own: it would overwrite another config's deployments.
    project.write_config({k: v for k, v in config.items() if k != "site"})
    nameless = deploy()
    assert nameless.returncode == 2 and "needs 'site:'" in nameless.stderr
    # A scheduled target with no host beside bound ones would wait for this host forever.
    unbound = {**config, "catalog": "postgresql+psycopg://drkit@db.invalid/drkit",
               "targets": {**config["targets"], "loose": {
                   "kind": "files", "paths": [str(data)], "repositories": ["r"],
                   "schedule": "0 0 1 1 *"}}}
    project.write_config(unbound)
    loose = deploy()
    assert loose.returncode == 2 and "targets loose name no 'host:'" in loose.stderr
    project.write_config(config)
    env.pop("PREFECT_API_URL")
    lonely = subprocess.run([sys.executable, "-m", "drkit", "--config",
                             str(project.config_path), "deploy"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert lonely.returncode == 2 and "PREFECT_API_URL" in lonely.stderr
    # A Prefect profile's PREFECT_API_URL counts as set: deploy gets as far as the catalog.
    (project.root / "client").mkdir(exist_ok=True)
    (project.root / "client" / "profiles.toml").write_text(
        f'active = "site"\n[profiles.site]\nPREFECT_API_URL = "{prefect_on_postgres}"\n')
    profiled = subprocess.run([sys.executable, "-m", "drkit", "--config",
                               str(project.config_path), "deploy"], capture_output=True,
                              text=True, env=env, timeout=120)
    assert profiled.returncode == 2 and "SQLite catalog" in profiled.stderr
