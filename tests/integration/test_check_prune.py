"""Integrity checks, storage posture and retention, through the real CLI, restic and S3."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import Project, S3Endpoint
from tests.helpers import locks, restic_env, restic_holding_lock


def catalog_rows(project: Project, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind=? order by seq",
                                            (kind,))]


def backed_up(project: Project, endpoint: S3Endpoint, *, subset: str | None = None,
              files: int = 30) -> str:
    data = project.root / "data"
    data.mkdir()
    for index in range(files):
        (data / f"f{index}.bin").write_bytes(os.urandom(200_000))
    project.env.update(endpoint.env())
    bucket = f"chk-{time.monotonic_ns() % 10**10}"
    config: dict[str, Any] = {
        "repositories": {"s3": endpoint.repository(bucket)},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["s3"]}},
    }
    if subset:
        config["checks"] = {"read_data_subset": subset}
    project.write_config(config)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    return bucket


def test_intact_repository_passes_and_corruption_is_named(project: Project,
                                                          rclone_endpoint: S3Endpoint) -> None:
    bucket = backed_up(project, rclone_endpoint)
    structure = project.run_json("check")["checks"][0]
    assert structure["status"] == "passed" and structure["read_data_subset"] is None
    assert structure["errors"] == [] and structure["posture"]["bucket"] == bucket

    assert rclone_endpoint.data_dir is not None
    pack = next(p for p in (rclone_endpoint.data_dir / bucket).rglob("data/*/*") if p.is_file())
    data = bytearray(pack.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 32):
        data[offset] ^= 0xFF
    pack.write_bytes(bytes(data))
    result = project.run("check", "--read-data-subset", "100%", "--json")
    assert result.returncode == 1
    (check,) = json.loads(result.stdout)["checks"]
    assert check["status"] == "failed" and check["read_data_subset"] == "100%"
    assert any(pack.name in error or "does not match" in error for error in check["errors"])
    assert catalog_rows(project, "check")[-1]["status"] == "failed"
    status = project.run_json("status", expect=1)
    assert status["repositories"][0]["last_check_status"] == "failed"
    assert status["targets"][0]["last_check_status"] == "failed"


@pytest.mark.parametrize("folder", ["index", "snapshots"])
def test_deleted_index_or_snapshot_fails_the_check(project: Project,
                                                   rclone_endpoint: S3Endpoint,
                                                   folder: str) -> None:
    bucket = backed_up(project, rclone_endpoint)
    s3 = boto3.client("s3", endpoint_url=rclone_endpoint.endpoint, region_name="us-east-1",
                      aws_access_key_id=rclone_endpoint.access_key,
                      aws_secret_access_key=rclone_endpoint.secret_key)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"repo/{folder}/")["Contents"]
    for item in listed:  # deleted through the S3 API, as an intruder or a mistake would
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    result = project.run("check", "--json")
    assert result.returncode == 1, result.stdout
    errors = json.loads(result.stdout)["checks"][0]["errors"]
    if folder == "snapshots":  # restic cannot see this; drkit's catalog can
        assert any("is missing from the repository" in e for e in errors)
    else:
        assert errors


def test_read_data_slices_rotate(project: Project, rclone_endpoint: S3Endpoint) -> None:
    backed_up(project, rclone_endpoint, subset="1/3")
    for _ in range(4):
        assert project.run("check").returncode == 0
    slices = [json.loads(r["evidence"])["read_data_subset"]
              for r in catalog_rows(project, "check")]
    assert slices == ["1/3", "2/3", "3/3", "1/3"]


def test_posture_on_moto(project: Project, moto_s3: S3Endpoint) -> None:
    project.env.update(moto_s3.env())
    data = project.root / "data"
    data.mkdir()
    (data / "x").write_text("x")
    posture = {"versioning": True, "object_lock": {"mode": "GOVERNANCE", "days": 1}}
    locked = f"locked-{time.monotonic_ns() % 10**9}"
    plain = f"plain-{time.monotonic_ns() % 10**9}"
    boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=plain)
    project.write_config({
        "repositories": {"locked": {**moto_s3.repository(locked), "posture": posture},
                         "plain": {**moto_s3.repository(plain), "posture": posture}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["locked"],
                          "retention": {"keep_last": 1}}},
    })
    init = project.run("repo", "init", "--json")
    assert init.returncode == 1
    results = {r["repository"]: r for r in json.loads(init.stdout)["repositories"]}
    assert results["locked"]["status"] == "created" and results["locked"]["bucket_created"]
    assert results["plain"]["status"] == "failed"
    assert "object lock is off" in results["plain"]["error"]

    checks = {c["repository"]: c for c in json.loads(project.run("check", "--json").stdout)[
        "checks"]}
    assert checks["locked"]["status"] == "passed"
    assert checks["locked"]["posture"]["versioning"] == "Enabled"
    assert checks["locked"]["posture"]["object_lock_mode"] == "GOVERNANCE"
    assert checks["plain"]["status"] == "failed"
    assert any("versioning is 'Off'" in e for e in checks["plain"]["errors"])
    assert any("object lock can only be turned on when a bucket is created" in e
               for e in checks["plain"]["errors"])

    assert project.run("backup").returncode == 0
    prune = project.run("prune", "--json")
    assert prune.returncode == 1
    (run,) = json.loads(prune.stdout)["prunes"]
    assert "prune refused" in run["error"] and "freeing nothing" in run["error"]


def _backup_at(project: Project, repo: Path, source: Path, target: str, when: str) -> None:
    result = project.restic(str(repo), "backup", "-q", "--tag", f"drkit,drkit-target={target}",
                            "--time", when, str(source))
    assert result.returncode == 0, result.stderr


def test_retention_is_exact_and_scoped_to_the_target(project: Project) -> None:
    repo = project.root / "repo"
    a, b = project.root / "a", project.root / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "f").write_text(folder.name)
    project.write_config({
        "repositories": {"r": {"url": str(repo), "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "a": {"kind": "files", "paths": [str(a)], "repositories": ["r"],
                  "retention": {"keep_daily": 2, "keep_weekly": 1}},
            "b": {"kind": "files", "paths": [str(b)], "repositories": ["r"],
                  "retention": {"keep_last": 1}},
        },
    })
    assert project.run("repo", "init").returncode == 0
    times = ["2026-11-01 10:00:00", "2026-11-10 10:00:00", "2026-11-20 09:00:00",
             "2026-11-20 18:00:00", "2026-11-21 09:00:00", "2026-11-22 09:00:00"]
    for when in times:
        _backup_at(project, repo, a, "a", when)
    for when in times[:3]:
        _backup_at(project, repo, b, "b", when)

    def remaining(target: str) -> list[str]:
        result = project.restic(str(repo), "snapshots", "--json", "--tag",
                                f"drkit-target={target}")
        return sorted(datetime.fromisoformat(s["time"][:19]).strftime("%Y-%m-%d %H:%M:%S")
                      for s in json.loads(result.stdout))

    dry = project.run_json("prune", "--dry-run")["prunes"]
    assert {(r["target"], len(r["removed"])) for r in dry} == {("a", 4), ("b", 2)}
    assert remaining("a") == sorted(times) and len(remaining("b")) == 3  # nothing removed

    result = project.run_json("prune", "a")
    (run,) = result["prunes"]
    assert run["status"] == "succeeded" and len(run["removed"]) == 4
    # keep_daily 2: Nov 22 and Nov 21; keep_weekly 1 is already met by Nov 22's week.
    assert remaining("a") == ["2026-11-21 09:00:00", "2026-11-22 09:00:00"]
    assert len(remaining("b")) == 3  # another target's snapshots are never touched
    (record,) = catalog_rows(project, "prune")
    evidence = json.loads(record["evidence"])
    assert record["target"] == "a" and len(evidence["removed"]) == 4
    assert evidence["policy"] == {"keep_daily": 2, "keep_weekly": 1}
    assert project.run("prune", "nope").returncode == 2


@pytest.mark.every_restic
def test_stale_lock_is_cleared_and_prune_never_overlaps_backup(project: Project) -> None:
    repo = project.root / "repo"
    data = project.root / "data"
    data.mkdir()
    for index in range(3):
        (data / f"big{index}").write_bytes(os.urandom(10 * 1024 * 1024))
    project.write_config({
        "repositories": {"r": {"url": str(repo), "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"],
                          "retention": {"keep_last": 1}}},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    # A restic holding an exclusive lock (waiting on a stdin the test holds open) is killed
    # with -9 once its lock is written and readable: the lock stays behind, stale.
    env = restic_env(str(repo), project.env["DRKIT_TEST_PASSWORD"])
    with restic_holding_lock(project.restic_binary, env, exclusive=True) as holder:
        holder.kill()
        holder.wait()
    assert [lock["pid"] for lock in locks(project.restic_binary, env)] == [holder.pid]

    drkit = [sys.executable, "-m", "drkit", "--config", str(project.config_path)]
    full_env = {**os.environ, **project.env}
    backup = subprocess.Popen([*drkit, "backup"], env=full_env, stderr=subprocess.PIPE,
                              text=True)
    prune = subprocess.Popen([*drkit, "prune"], env=full_env, stderr=subprocess.PIPE, text=True)
    backup_err = backup.communicate(timeout=300)[1]
    prune_err = prune.communicate(timeout=300)[1]
    assert backup.returncode == 0, backup_err
    assert prune.returncode == 0, prune_err
    assert "removing a stale restic lock" in backup_err + prune_err
    assert locks(project.restic_binary, env) == []

    def window(kind: str) -> tuple[str, str]:
        row = catalog_rows(project, kind)[-1]
        started = json.loads(row["evidence"])["lock_acquired_at"]
        return started, str(row["finished_at"]).replace(" ", "T")

    b_start, b_end = window("backup")
    p_start, p_end = window("prune")
    assert b_end <= p_start or p_end <= b_start, ((b_start, b_end), (p_start, p_end))


def test_a_posture_finding_fails_the_check_but_the_data_slices_still_rotate(
        project: Project, moto_s3: S3Endpoint) -> None:
    project.env.update(moto_s3.env())
    data = project.root / "data"
    data.mkdir()
    (data / "x").write_text("x")
    bucket = f"nolock-{time.monotonic_ns() % 10**9}"
    project.write_config({
        "repositories": {"r": {**moto_s3.repository(bucket), "posture": {"versioning": True}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
        "checks": {"read_data_subset": "1/3"},
    })
    boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=bucket)
    assert project.run("repo", "init").returncode == 1  # the bucket contradicts the posture
    assert project.restic(moto_s3.url(bucket), "init",
                          extra_env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
                          ).returncode == 0
    assert project.run("backup").returncode == 0
    assert_checks_fail_and_rotate(project, "versioning is 'Off'", "posture_check")


def test_a_missing_snapshot_fails_every_check_but_the_slices_still_rotate(
        project: Project) -> None:
    repo = project.root / "repo"
    data = project.root / "data"
    data.mkdir()
    (data / "x").write_bytes(os.urandom(100_000))
    project.write_config({
        "repositories": {"r": {"url": str(repo), "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
        "checks": {"read_data_subset": "1/3"},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    (data / "y").write_bytes(os.urandom(100_000))
    assert project.run("backup").returncode == 0
    first = sorted((repo / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)[0]
    first.unlink()  # deleted behind drkit's back
    assert_checks_fail_and_rotate(project, "is missing from the repository", "snapshots")


def assert_checks_fail_and_rotate(project: Project, error: str, failing_part: str) -> None:
    """Four checks in a row: each fails with ``error`` in its ``failing_part``, while the
    read-data slices, which pass, still rotate 1/3, 2/3, 3/3, 1/3."""
    for _ in range(4):
        check = project.run("check", "--json")
        assert check.returncode == 1
        (run,) = json.loads(check.stdout)["checks"]
        assert any(error in e for e in run["errors"])
    evidence = [json.loads(r["evidence"]) for r in catalog_rows(project, "check")]
    assert [e["read_data_subset"] for e in evidence] == ["1/3", "2/3", "3/3", "1/3"]
    assert {e["data"]["status"] for e in evidence} == {"passed"}
    assert {e[failing_part]["status"] for e in evidence} == {"failed"}
