"""Seams in conflict with the real parts: two deployments sharing a repository, a prune whose
storage dies in its prune phase, a backup whose storage hangs, a check that prints its
environment, a catalog someone holds the write lock of, a webhook that answers garbage, and a
journal file that cannot be read."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.locals3 import LocalS3, local_s3
from tests.conftest import Project
from tests.helpers import gated_restic, locks, processes_with_env, restic_env, wait_for


def records(project: Project, kind: str | None = None) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("select * from records order by seq")]
    return [r for r in rows if kind is None or r["kind"] == kind]


def files_config(project: Project, repository: dict[str, Any], **extra: Any) -> Path:
    data = project.root / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("a")
    project.write_config({
        "repositories": {"r": repository},
        "targets": {"app": {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                            "retention": {"keep_last": 1}}},
        **extra,
    })
    return data


def s3_repository(s3: LocalS3, project: Project) -> dict[str, Any]:
    project.env.update({"AK": s3.access_key, "SK": s3.secret_key})
    return {"url": s3.restic_url("bucket", "repo"), "password": {"env": "DRKIT_TEST_PASSWORD"},
            "s3": {"access_key": {"env": "AK"}, "secret_key": {"env": "SK"}}}


@pytest.mark.every_restic
def test_two_hosts_share_a_repository_and_a_target_name(project: Project,
                                                        tmp_path_factory: pytest.TempPathFactory
                                                        ) -> None:
    shared = project.root / "shared-repo"
    sites = {}
    for host in ("alpha", "beta"):
        site = Project(root=tmp_path_factory.mktemp(host), env=dict(project.env),
                       restic_binary=project.restic_binary)
        data = site.root / "data"
        data.mkdir()
        (data / f"{host}.txt").write_text(host)
        site.write_config({
            "host": host,
            "repositories": {"r": {"url": str(shared), "password": {"env": "DRKIT_TEST_PASSWORD"}}},
            "targets": {"app": {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                                "retention": {"keep_last": 1}}},
        })
        plans = site.root / "recovery_plans"
        plans.mkdir()
        (plans / "app.yaml").write_text(yaml.safe_dump({
            "name": "app", "objectives": {"rpo": "1h", "rto": "15m"},
            "steps": [{"target": "app", "checks": [{"files_exist": [f"{host}.txt"]}]}]}))
        sites[host] = site
    assert sites["alpha"].run("repo", "init").returncode == 0
    for _ in range(2):
        for host in ("alpha", "beta"):
            result = sites[host].run("backup")
            assert result.returncode == 0, result.stderr

    def hosts_of_snapshots() -> list[str]:
        listed = sites["alpha"].run_json("snapshots", "--all-hosts")
        return sorted(row["hostname"] for row in listed)

    assert hosts_of_snapshots() == ["alpha", "alpha", "beta", "beta"]
    assert {row["hostname"] for row in sites["beta"].run_json("snapshots")} == {"beta"}
    # Beta's newest backup is the newest in the repository: alpha must still drill its own.
    drill = sites["alpha"].run("drill", "app", "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert json.loads(drill.stdout)["status"] == "passed"
    prune = sites["alpha"].run_json("prune")["prunes"][0]
    assert prune["status"] == "succeeded" and len(prune["removed"]) == 1
    assert hosts_of_snapshots() == ["alpha", "beta", "beta"]  # beta's are untouched
    assert sites["beta"].run("drill", "app").returncode == 0
    assert sites["beta"].run_json("prune")["prunes"][0]["removed"] != []
    assert hosts_of_snapshots() == ["alpha", "beta"]
    for site in sites.values():  # neither sees the other's snapshots as missing
        check = site.run_json("check")["checks"][0]
        assert check["status"] == "passed", check["errors"]


@pytest.mark.every_restic
def test_prune_failing_in_its_prune_phase_leaves_no_phantom_missing_snapshots(
        project: Project, tmp_path: Path) -> None:
    gates = project.root / "gates"
    gates.mkdir()
    data_dir = tmp_path / "s3"
    with local_s3(data_dir) as s3:
        port, keys = int(s3.endpoint.rsplit(":", 1)[1]), (s3.access_key, s3.secret_key)
        files_config(project, s3_repository(s3, project), timeouts={"storage": "3s"})
        assert project.run("repo", "init").returncode == 0
        for index in range(3):
            (project.root / "data" / f"n{index}").write_text(str(index))
            assert project.run("backup").returncode == 0
        config = yaml.safe_load(project.config_path.read_text())
        config["restic_binary"] = str(gated_restic(project.root / "gated-restic",
                                                   project.restic_binary, subcommand="prune",
                                                   gate_dir=gates))
        project.write_config(config)
        prune = subprocess.Popen(
            [sys.executable, "-m", "drkit", "--config", str(project.config_path), "prune",
             "--json"], env={**os.environ, **project.env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        wait_for((gates / "prune-started").exists, "restic prune to start", 120)
    (gates / "go").touch()  # the storage is gone now: the prune phase fails
    out, err = prune.communicate(timeout=300)
    assert prune.returncode == 1, err
    (run,) = json.loads(out)["prunes"]
    assert run["status"] == "failed" and len(run["removed"]) == 2
    (record,) = records(project, "prune")
    assert record["status"] == "failed"
    assert len(json.loads(record["evidence"])["removed"]) == 2  # what forget really removed
    with local_s3(data_dir, port=port, keys=keys):
        check = project.run("check", "--json")
        assert check.returncode == 0, check.stdout
        assert json.loads(check.stdout)["checks"][0]["errors"] == []
        again = project.run_json("prune")["prunes"][0]
        assert again["status"] == "succeeded" and again["removed"] == []
        # ... and finishes the prune phase the failed run could not (frees the data).
        assert "prune_summary" in json.loads(records(project, "prune")[-1]["evidence"])


@pytest.mark.every_restic
def test_hung_storage_times_the_backup_out_and_no_lock_outlives_it(project: Project,
                                                                   tmp_path: Path) -> None:
    """The endpoint hangs (SIGSTOP) while restic holds its lock mid-stream: the run is stopped
    at its time limit, restic cannot remove its lock from a storage that does not answer, and
    the next run, once the storage answers, removes it before anything else."""
    produced, gate = project.root / "produced", project.root / "gate"
    command = (f"head -c 4000000 /dev/urandom; touch {produced}; "
               f"while [ ! -e {gate} ]; do sleep 0.05; done; head -c 4000000 /dev/urandom")
    with local_s3(tmp_path / "s3") as s3:
        project.write_config({
            "repositories": {"r": s3_repository(s3, project)},
            "targets": {"stream": {"kind": "command", "command": ["sh", "-c", command],
                                   "repositories": ["r"], "timeout": "6s"}},
            "timeouts": {"storage": "3s"},
        })
        assert project.run("repo", "init").returncode == 0
        backup = subprocess.Popen(
            [sys.executable, "-m", "drkit", "--config", str(project.config_path), "backup",
             "--json"], env={**os.environ, **project.env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        wait_for(produced.exists, "restic to be reading the stream, its lock taken", 120)
        os.kill(s3.pid, signal.SIGSTOP)  # the endpoint hangs: requests are never answered
        gate.touch()
        try:
            out, err = backup.communicate(timeout=120)
        finally:
            os.kill(s3.pid, signal.SIGCONT)
        assert backup.returncode == 1, err
        (run,) = json.loads(out)["runs"]
        assert "timed out after 6.0s" in run["error"], run["error"]
        assert processes_with_env("RESTIC_REPOSITORY", s3.restic_url("bucket", "repo")) == []
        pending = project.root / "config" / ".drkit" / "locks" / "r.unlock-pending"
        env = restic_env(s3.restic_url("bucket", "repo"), project.env["DRKIT_TEST_PASSWORD"],
                         AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        assert pending.exists()  # drkit could not remove the lock yet, and says so
        # The storage answers again: the next run first removes what the killed one left.
        assert project.run("snapshots").returncode == 0
        assert locks(project.restic_binary, env) == [] and not pending.exists()


def test_a_check_that_prints_its_environment_leaks_no_secret(project: Project) -> None:
    secret_file = project.root / "webhook-secret"
    secret_file.write_text("https://hooks.example/T0KEN-in-a-file-123\n")
    project.env.update({"S3SECRET": "s3-secret-key-never-shown", "PGDSN":
                        "postgresql://app:pg-pass-never-shown@db.example/app"})
    files_config(project, {"url": str(project.root / "repo"),
                           "password": {"env": "DRKIT_TEST_PASSWORD"}},
                 notify={"webhook": {"url": {"file": str(secret_file)}}})
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["db"] = {"kind": "postgres", "dsn": {"env": "PGDSN"},
                               "repositories": ["r"]}
    project.write_config(config)
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "app.yaml").write_text(yaml.safe_dump({
        "name": "app", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "app", "checks": [{"command": [
            "sh", "-c", f"env; cat {secret_file}; echo $PGDSN; exit 1"]}]}]}))
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup", "app").returncode == 0
    drill = project.run("drill", "app", "--json")
    assert drill.returncode == 1
    report = project.run("report", "--format", "html", "--output", str(project.root / "r.html"))
    assert report.returncode == 0, report.stderr
    output = json.loads(drill.stdout)["steps"][0]["checks"][-1]["output"]["stdout"]
    assert "PATH=" in output and "***" in output  # it ran; the file's secret was masked
    homes = [line for line in output.splitlines() if line.startswith("HOME=")]
    assert len(homes) == 1 and homes[0].endswith("/tmp")  # the sandbox's, not the operator's
    assert f"HOME={os.environ['HOME']}\n" not in output
    evidence = "".join([drill.stdout, drill.stderr, report.stderr,
                        (project.root / "r.html").read_text()])
    catalog = b"".join(p.read_bytes() for p in project.catalog_path.parent.glob("catalog*"))
    for secret in (project.env["DRKIT_TEST_PASSWORD"], "s3-secret-key-never-shown",
                   "pg-pass-never-shown", "T0KEN-in-a-file-123"):
        assert secret not in evidence and secret.encode() not in catalog, secret


def test_read_only_commands_never_take_the_catalogs_write_lock(project: Project) -> None:
    files_config(project, {"url": str(project.root / "repo"),
                           "password": {"env": "DRKIT_TEST_PASSWORD"}})
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    report = project.root / "report.json"
    with closing(sqlite3.connect(project.catalog_path, isolation_level=None)) as holder:
        holder.execute("begin immediate")  # a long writer (or a stuck one) holds the lock
        try:
            for command in (("status", "--json"), ("audit", "verify", "--json")):
                # Blocked by the lock, each would wait 60 s (busy_timeout) and fail.
                result = project.run(*command, timeout=30)
                assert result.returncode == 0, (command, result.stderr)
            # A report is built from a read snapshot while the lock is held; only appending
            # its own record at the end waits for the writer.
            building = subprocess.Popen(
                [sys.executable, "-m", "drkit", "--config", str(project.config_path), "report",
                 "--format", "json", "--output", str(report)], env={**os.environ, **project.env},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_for(report.exists, "the report to be written while the lock is held", 30)
        finally:
            holder.execute("rollback")
    _, err = building.communicate(timeout=60)
    assert building.returncode == 0, err
    assert json.loads(report.read_text())["summary"]["totals"]
    assert [r["kind"] for r in records(project)][-1] == "report"


@pytest.fixture
def garbage_webhook() -> Iterator[tuple[str, list[bytes]]]:
    """A webhook that reads the request and answers with no valid HTTP at all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 two hundred OK\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook", seen
    finally:
        server.close()


def test_a_malformed_webhook_reply_never_doubles_a_record(
        project: Project, garbage_webhook: tuple[str, list[bytes]]) -> None:
    url, seen = garbage_webhook
    project.env["HOOK"] = url
    files_config(project, {"url": str(project.root / "no-repo-here"),
                           "password": {"env": "DRKIT_TEST_PASSWORD"}},
                 notify={"webhook": {"url": {"env": "HOOK"}}})
    result = project.run("backup", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert seen, "the webhook was not called"
    (run,) = json.loads(result.stdout)["runs"]
    assert "no restic repository" in run["error"]
    (record,) = records(project, "backup")  # one run, one record
    assert record["id"] == run["record_id"]
    assert project.run("audit", "verify").returncode == 0


def test_an_unreadable_journal_file_is_recorded_once(project: Project) -> None:
    files_config(project, {"url": str(project.root / "repo"),
                           "password": {"env": "DRKIT_TEST_PASSWORD"}})
    runs = project.root / "config" / ".drkit" / "runs"
    runs.mkdir(parents=True)
    (runs / "0d2c1e2a-torn.json").write_bytes(b'{"run_id": "0d2c1e2a", "kind": "back')
    assert project.run("status").returncode == 1  # nothing backed up yet
    config, record = records(project)
    assert config["kind"] == "config"  # the config in force, recorded with the first record
    assert record["kind"] == "unknown" and record["status"] == "interrupted"
    assert "0d2c1e2a-torn.json" in record["error"] and "unreadable" in record["error"]
    assert (runs / "0d2c1e2a-torn.json.unreadable").exists()
    project.run("status")
    assert len(records(project)) == 2  # reported once, not skipped (or repeated) forever


@pytest.mark.every_restic
def test_ctrl_c_during_a_check_leaves_no_lock(project: Project) -> None:
    """restic is stopped with SIGINT (0.14 removes its lock on SIGINT, not on SIGTERM)."""
    data = files_config(project, {"url": str(project.root / "repo"),
                                  "password": {"env": "DRKIT_TEST_PASSWORD"}})
    (data / "big").write_bytes(os.urandom(30 * 1024 * 1024))
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    check = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "check",
         "--read-data-subset", "100%"], env={**os.environ, **project.env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock_dir = project.root / "repo" / "locks"
    wait_for(lambda: any(lock_dir.iterdir()), "restic check to take its lock")
    restic = processes_with_env("RESTIC_REPOSITORY", str(project.root / "repo"))
    for pid in restic:
        os.kill(pid, signal.SIGSTOP)  # frozen holding its exclusive lock
    check.send_signal(signal.SIGINT)
    for pid in restic:
        os.kill(pid, signal.SIGCONT)
    _, stderr = check.communicate(timeout=120)
    assert check.returncode == 130, stderr
    env = restic_env(str(project.root / "repo"), project.env["DRKIT_TEST_PASSWORD"])
    assert locks(project.restic_binary, env) == []  # other hosts are not held up 30 minutes
    assert records(project, "check")[-1]["status"] == "interrupted"


@pytest.mark.every_restic
def test_drill_snapshot_option_across_two_repositories(project: Project) -> None:
    """--snapshot names one step's snapshot; the step in the other repository takes its
    newest good backup from the catalog."""
    for name in ("a", "b"):
        (project.root / name).mkdir()
        (project.root / name / f"{name}.txt").write_text(name)
    project.write_config({
        "repositories": {repo: {"url": str(project.root / f"repo-{repo}"),
                                "password": {"env": "DRKIT_TEST_PASSWORD"}}
                         for repo in ("one", "two")},
        "targets": {"a": {"kind": "files", "paths": [str(project.root / "a")],
                          "repositories": ["one"]},
                    "b": {"kind": "files", "paths": [str(project.root / "b")],
                          "repositories": ["two"]}},
        "drills": {"sandbox_dir": str(project.root / "sandboxes")},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "p.yaml").write_text(yaml.safe_dump({
        "name": "p", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "a", "checks": [{"files_exist": ["a.txt"]}]},
                  {"target": "b", "checks": [{"files_exist": ["b.txt"]}]}]}))
    assert project.run("repo", "init").returncode == 0
    first = {r["target"]: r["snapshot_id"] for r in project.run_json("backup")["runs"]}
    assert project.run("backup").returncode == 0
    drill = project.run("drill", "p", "--snapshot", first["a"], "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    steps = {s["target"]: s for s in json.loads(drill.stdout)["steps"]}
    assert steps["a"]["snapshot_id"].startswith(first["a"])
    assert steps["a"]["chosen_by"].startswith("--snapshot")
    assert steps["b"]["chosen_by"].startswith("the catalog's newest good backup")
    assert not steps["b"]["snapshot_id"].startswith(first["b"])  # the newer one


def _snapshot_ids(project: Project, repo: Path) -> list[str]:
    listed = project.restic(str(repo), "snapshots", "--json")
    return [s["id"] for s in json.loads(listed.stdout)]


@pytest.mark.every_restic
def test_retention_waits_while_an_incomplete_backup_is_newer_than_the_good_one(
        project: Project) -> None:
    """keep_last 1 must not drop the only good snapshot for a newer incomplete one."""
    from drkit.catalog.inflight import utcnow
    from drkit.catalog.store import NewRecord, open_catalog

    data = files_config(project, {"url": str(project.root / "repo"),
                                  "password": {"env": "DRKIT_TEST_PASSWORD"}})
    assert project.run("repo", "init").returncode == 0
    (good,) = project.run_json("backup")["runs"]
    # An incomplete run (restic exit 3): its snapshot exists, its record says so.
    (data / "more").write_text("more")
    made = project.restic(str(project.root / "repo"), "backup", "--json", "--host",
                          socket.gethostname(), "--tag", "drkit", "--tag",
                          "drkit-target=app", str(data))
    incomplete = json.loads(made.stdout.splitlines()[-1])["snapshot_id"]
    now = utcnow()
    open_catalog(f"sqlite:///{project.catalog_path}", hostname=socket.gethostname()).append(
        NewRecord(kind="backup", status="failed", target="app", repository="r",
                  snapshot_id=incomplete, started_at=now, finished_at=now,
                  error="some files could not be read",
                  evidence={"snapshot_state": "incomplete"}))
    (run,) = project.run_json("prune")["prunes"]
    assert run["status"] == "succeeded" and run["removed"] == []
    ids = _snapshot_ids(project, project.root / "repo")
    assert any(i.startswith(good["snapshot_id"]) for i in ids) and len(ids) == 2
    assert "retention waits" in json.loads(records(project, "prune")[-1]["evidence"])[
        "retention_deferred"]
    (later,) = project.run_json("backup")["runs"]  # a good backup: the incomplete one may go
    assert project.run_json("prune")["prunes"][0]["status"] == "succeeded"
    assert [i[:8] for i in _snapshot_ids(project, project.root / "repo")] == \
        [later["snapshot_id"][:8]]


@pytest.mark.every_restic
def test_a_prune_interrupted_right_after_forgetting_leaves_no_phantom(project: Project) -> None:
    gates = project.root / "gates"
    gates.mkdir()
    data = files_config(project, {"url": str(project.root / "repo"),
                                  "password": {"env": "DRKIT_TEST_PASSWORD"}})
    assert project.run("repo", "init").returncode == 0
    for index in range(3):
        (data / f"n{index}").write_text(str(index))
        assert project.run("backup").returncode == 0
    # The forget runs for real, then the wrapper holds on: drkit is interrupted before it
    # could say what was removed.
    wrapper = project.root / "forget-then-wait"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in *" --dry-run "*) exec {project.restic_binary} "$@";; esac
if [ "$1" = forget ]; then
  {project.restic_binary} "$@" || exit $?
  touch {gates}/forgot
  while [ ! -e {gates}/go ]; do sleep 0.02; done
  exit 0
fi
exec {project.restic_binary} "$@"
""")
    wrapper.chmod(0o755)
    config = yaml.safe_load(project.config_path.read_text())
    config["restic_binary"] = str(wrapper)
    project.write_config(config)
    prune = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "prune"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    wait_for((gates / "forgot").exists, "the forget to have run")
    prune.send_signal(signal.SIGINT)
    _, stderr = prune.communicate(timeout=120)
    assert prune.returncode == 130, stderr
    record = records(project, "prune")[-1]
    assert record["status"] == "interrupted"
    assert len(json.loads(record["evidence"])["removal_uncertain"]) == 2
    check = project.run("check", "--json")
    assert check.returncode == 0, check.stdout  # nothing reported missing
    assert json.loads(check.stdout)["checks"][0]["errors"] == []


def test_deployments_sharing_a_catalog_check_only_their_own_snapshots(
        project: Project, tmp_path_factory: pytest.TempPathFactory) -> None:
    catalog = f"sqlite:///{project.root / 'shared-catalog.db'}"
    sites = []
    for host in ("alpha", "beta"):
        site = Project(root=tmp_path_factory.mktemp(host), env=dict(project.env),
                       restic_binary=project.restic_binary)
        (site.root / "data").mkdir()
        (site.root / "data" / "f").write_text(host)
        site.write_config({
            "host": host, "catalog": catalog,
            "repositories": {"primary": {"url": str(site.root / "repo"),
                                         "password": {"env": "DRKIT_TEST_PASSWORD"}}},
            "targets": {"app": {"kind": "files", "paths": [str(site.root / "data")],
                                "repositories": ["primary"]}},
        })
        assert site.run("repo", "init").returncode == 0
        assert site.run("backup").returncode == 0
        sites.append(site)
    for site in sites:  # the other's "primary" is another repository
        check = site.run("check", "--json")
        assert check.returncode == 0, check.stdout
