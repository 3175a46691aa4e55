"""Restore drills through the real CLI, restic and an S3 endpoint: pass, breach, fail, clean up."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Project, S3Endpoint
from tests.helpers import unique_sleep, wait_for


def make_app(root: Path, *, big_mb: int = 0) -> None:
    files = root / "app" / "files"
    (files / "uploads").mkdir(parents=True)
    (files / "config.json").write_text('{"replicas": 3}\n')
    for index in range(10):
        (files / "uploads" / f"u{index}.bin").write_bytes(os.urandom(20_000))
    for index in range(big_mb // 50):
        (files / f"big{index}.bin").write_bytes(os.urandom(50 * 1024 * 1024))
    with closing(sqlite3.connect(root / "app" / "orders.sqlite")) as db:
        db.execute("create table orders (id integer primary key, created_at text "
                   "default current_timestamp)")
        db.executemany("insert into orders default values", [()] * 1200)
        db.commit()


def plan(name: str, rpo: str = "1h", rto: str = "15m", *, steps: list[dict[str, Any]]
         ) -> dict[str, Any]:
    return {"name": name, "objectives": {"rpo": rpo, "rto": rto}, "steps": steps}


GOOD_STEPS = [
    {"target": "orders", "checks": [
        {"sqlite_integrity": True},
        {"sql": "select count(*) from orders", "expect": ">= 1000"},
        {"sql": "select max(created_at) from orders", "expect": "within 1h of snapshot"},
    ]},
    {"target": "files", "checks": [
        {"files_exist": ["uploads/", "config.json"]},
        {"command": ["grep", "-q", "replicas", "{restore_dir}/config.json"]},
    ]},
]


def setup_drills(project: Project, endpoint: S3Endpoint, plans: list[dict[str, Any]], *,
                 big_mb: int = 0) -> str:
    """Config with a files and a sqlite target on S3, the plans, one backup. Returns bucket."""
    make_app(project.root, big_mb=big_mb)
    project.env.update(endpoint.env())
    bucket = f"drill-{time.monotonic_ns() % 10**10}"
    project.write_config({
        "drills": {"sandbox_dir": str(project.root / "sandboxes")},
        "repositories": {"s3": endpoint.repository(bucket)},
        "targets": {
            "files": {"kind": "files", "paths": [str(project.root / "app" / "files")],
                      "repositories": ["s3"]},
            "orders": {"kind": "sqlite", "path": str(project.root / "app" / "orders.sqlite"),
                       "repositories": ["s3"]},
        },
    })
    plans_dir = project.root / "recovery_plans"
    plans_dir.mkdir()
    for item in plans:
        (plans_dir / f"{item['name']}.yaml").write_text(yaml.safe_dump(item, sort_keys=False))
    assert project.run("validate").returncode == 0, project.run("validate").stderr
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr
    return bucket


def drill_records(project: Project) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind='drill' "
                                            "order by seq")]


def assert_no_sandbox(project: Project) -> None:
    sandboxes = project.root / "sandboxes"
    assert not sandboxes.exists() or not list(sandboxes.iterdir()), list(sandboxes.iterdir())


def test_drill_passes_and_records_evidence(project: Project, rclone_endpoint: S3Endpoint
                                           ) -> None:
    setup_drills(project, rclone_endpoint, [plan("orders-service", steps=GOOD_STEPS)])
    start = time.monotonic()
    result = project.run("drill", "orders-service", "--json")
    wall = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    drill = json.loads(result.stdout)
    assert drill["status"] == "passed"
    assert 0 < drill["rto_achieved_s"] <= wall
    assert 0 <= drill["rpo_achieved_s"] < 600 and drill["rpo_objective_s"] == 3600
    assert [s["target"] for s in drill["steps"]] == ["orders", "files"]
    for step in drill["steps"]:
        assert step["snapshot_id"] and step["restore_s"] > 0
        assert all(check["status"] == "passed" for check in step["checks"])
        assert step["checks"][0]["name"] == "restored tree matches snapshot listing"
    (record,) = drill_records(project)
    assert record["status"] == "passed" and record["plan"] == "orders-service"
    assert record["hash"] == drill["record_hash"]
    evidence = json.loads(record["evidence"])
    assert evidence["steps"][0]["checks"][3]["detail"].startswith("newest data")
    assert_no_sandbox(project)
    status = project.run_json("status")
    assert status["plans"][0]["last_drill_status"] == "passed"
    assert {t["target"]: t["last_drill_status"] for t in status["targets"]} == \
        {"files": "passed", "orders": "passed"}


def test_rpo_shorter_than_snapshot_age_is_breached(project: Project,
                                                   rclone_endpoint: S3Endpoint) -> None:
    setup_drills(project, rclone_endpoint, [plan("tight", rpo="1s", steps=GOOD_STEPS[1:])])
    time.sleep(1.5)
    result = project.run("drill", "tight", "--json")
    assert result.returncode == 1
    drill = json.loads(result.stdout)
    assert drill["status"] == "breached" and drill["rpo_met"] is False
    assert drill["rpo_achieved_s"] > 1
    assert all(c["status"] == "passed" for c in drill["steps"][0]["checks"])
    assert "breached" in result.stderr
    assert_no_sandbox(project)


def test_false_sql_expectation_fails(project: Project, rclone_endpoint: S3Endpoint) -> None:
    steps = [{"target": "orders", "checks": [
        {"sql": "select count(*) from orders", "expect": ">= 5000"}]}]
    setup_drills(project, rclone_endpoint, [plan("strict", steps=steps)])
    result = project.run("drill", "strict", "--json")
    assert result.returncode == 1
    drill = json.loads(result.stdout)
    assert drill["status"] == "failed" and drill["rto_achieved_s"] is None
    # The snapshot was restored: the RPO it proves is recorded although a check failed.
    step = drill["steps"][0]
    snapshot_age = (datetime.fromisoformat(drill["started_at"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(step["snapshot_time"].replace("Z", "+00:00")))
    assert drill["rpo_achieved_s"] == pytest.approx(snapshot_age.total_seconds(), abs=0.01)
    assert drill["rpo_complete"] is True
    assert set(drill["rto_stages"]) == {"restore", "verify", "database_load", "checks"}
    assert drill["rto_stages"]["restore"] == pytest.approx(step["restore_s"], abs=0.002)
    failed = drill["steps"][0]["checks"][1]
    assert failed["status"] == "failed" and "1200" in failed["detail"]
    assert drill_records(project)[0]["status"] == "failed"
    assert_no_sandbox(project)


def test_corrupted_pack_fails_the_restore(project: Project, rclone_endpoint: S3Endpoint
                                          ) -> None:
    bucket = setup_drills(project, rclone_endpoint, [plan("p", steps=GOOD_STEPS[1:])])
    assert rclone_endpoint.data_dir is not None
    packs = [p for p in (rclone_endpoint.data_dir / bucket).rglob("data/*/*") if p.is_file()]
    assert packs
    for pack in packs:  # flip bytes in the middle of every pack file
        data = bytearray(pack.read_bytes())
        for offset in range(len(data) // 3, len(data) // 3 + 64):
            data[offset] ^= 0xFF
        pack.write_bytes(bytes(data))
    result = project.run("drill", "p", "--json")
    assert result.returncode == 1
    drill = json.loads(result.stdout)
    assert drill["status"] == "failed"
    assert "restore of snapshot" in drill["steps"][0]["error"]
    assert "Traceback" not in result.stderr
    assert_no_sandbox(project)


def test_target_without_snapshot_fails_clearly(project: Project, rclone_endpoint: S3Endpoint
                                               ) -> None:
    setup_drills(project, rclone_endpoint, [])
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["later"] = {"kind": "files", "paths": [str(project.root)],
                                  "repositories": ["s3"]}
    project.write_config(config)
    (project.root / "recovery_plans" / "p.yaml").write_text(yaml.safe_dump(
        plan("p", steps=[{"target": "later", "checks": []}])))
    result = project.run("drill", "p", "--json")
    assert result.returncode == 1
    drill = json.loads(result.stdout)
    assert drill["status"] == "failed"
    assert ("no good backup of target 'later' of host " in drill["error"]
            and "in repository 's3' is recorded in the catalog (has it been backed up?)"
            in drill["error"])
    assert drill_records(project)[0]["status"] == "failed"
    assert_no_sandbox(project)


def test_hanging_command_is_killed_at_its_timeout(project: Project,
                                                  rclone_endpoint: S3Endpoint) -> None:
    sleep = unique_sleep()
    steps = [{"target": "files", "checks": [
        {"command": ["sh", "-c", f"{sleep} & {sleep}"], "timeout": "2s"}]}]
    setup_drills(project, rclone_endpoint, [plan("hang", steps=steps)])
    start = time.monotonic()
    result = project.run("drill", "hang", "--json")
    assert time.monotonic() - start < 60
    drill = json.loads(result.stdout)
    assert result.returncode == 1 and drill["status"] == "failed"
    check = drill["steps"][0]["checks"][1]
    assert check["status"] == "failed" and "timed out after 2.0s" in check["detail"]
    leftover = subprocess.run(["pgrep", "-f", sleep], capture_output=True)
    assert leftover.returncode == 1, "the command's children outlived its timeout"
    assert_no_sandbox(project)


def test_unknown_plan_is_a_bad_request(project: Project, rclone_endpoint: S3Endpoint) -> None:
    setup_drills(project, rclone_endpoint, [plan("orders-service", steps=GOOD_STEPS)])
    result = project.run("drill", "orders-servic")
    assert result.returncode == 2
    assert "unknown plan 'orders-servic' (did you mean 'orders-service'?)" in result.stderr


@pytest.mark.slow
def test_sigint_mid_restore_removes_the_sandbox(project: Project, rclone_endpoint: S3Endpoint
                                                ) -> None:
    setup_drills(project, rclone_endpoint, [plan("big", steps=GOOD_STEPS[1:])], big_mb=200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "drill", "big"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    found = wait_for(lambda: subprocess.run(
        ["pgrep", "-f", f"restic restore .*{project.root}"], capture_output=True,
        text=True).stdout.split(), "restic restore to start")
    restic = int(found[0])
    os.kill(restic, signal.SIGSTOP)  # frozen mid-restore: it cannot finish before the ^C
    proc.send_signal(signal.SIGINT)
    os.kill(restic, signal.SIGCONT)  # drkit's SIGTERM reaches it now
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert_no_sandbox(project)
    assert drill_records(project)[0]["status"] == "interrupted"
    assert subprocess.run(["pgrep", "-f", f"restic restore .*{project.root}"],
                          capture_output=True).returncode == 1
