"""Failures are loud: one clear message, the right exit code, a catalog record, others unharmed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from drkit.locals3 import free_port
from tests.conftest import Project, S3Endpoint
from tests.helpers import wait_for


def records(project: Project) -> list[dict[str, Any]]:
    """The runs' records (not the `config` record of the config they ran with)."""
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("select * from records where kind != "
                                                "'config' order by seq")]


def local_repo(project: Project, name: str = "repo") -> dict[str, Any]:
    return {"url": str(project.root / name), "password": {"env": "DRKIT_TEST_PASSWORD"}}


def data_dir(project: Project, name: str = "data") -> Path:
    path = project.root / name
    path.mkdir(exist_ok=True)
    (path / "file.txt").write_text("payload\n")
    return path


def two_targets(project: Project, bad_repo: dict[str, Any]) -> None:
    project.write_config({
        "repositories": {"good": local_repo(project), "bad": bad_repo},
        "targets": {
            "healthy": {"kind": "files", "paths": [str(data_dir(project))],
                        "repositories": ["good"]},
            "doomed": {"kind": "files", "paths": [str(data_dir(project, "other"))],
                       "repositories": ["bad"]},
        },
    })
    assert project.run("repo", "init", "good").returncode == 0


def assert_isolated_failure(project: Project, result: subprocess.CompletedProcess[str],
                            expected: str) -> None:
    """`doomed` failed with ``expected`` in its message; `healthy` still succeeded."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert "doomed -> bad" in result.stderr
    backups = {r["target"]: r for r in records(project) if r["kind"] == "backup"}
    assert backups["healthy"]["status"] == "succeeded"
    assert backups["doomed"]["status"] == "failed"
    assert expected in backups["doomed"]["error"]


def test_storage_down_fails_that_target_only(project: Project) -> None:
    port = free_port()  # nothing listens there
    two_targets(project, {
        "url": f"s3:http://127.0.0.1:{port}/bucket/repo",
        "password": {"env": "DRKIT_TEST_PASSWORD"},
        "s3": {"access_key": {"env": "DRKIT_TEST_PASSWORD"},
               "secret_key": {"env": "DRKIT_TEST_PASSWORD"}},
    })
    result = project.run("backup")
    assert_isolated_failure(project, result, "storage unreachable")


def test_wrong_password(project: Project) -> None:
    two_targets(project, local_repo(project, "other-repo"))
    assert project.run("repo", "init", "bad").returncode == 0
    result = project.run("backup", extra_env={"DRKIT_TEST_PASSWORD": "not-the-password"})
    # Both repositories use that variable, so both fail, each with the same clear message.
    assert result.returncode == 1
    assert result.stderr.count("wrong repository password") >= 2
    assert all(r["status"] == "failed" for r in records(project) if r["kind"] == "backup")


def test_repository_not_initialised(project: Project) -> None:
    two_targets(project, local_repo(project, "never-created"))
    result = project.run("backup")
    assert_isolated_failure(project, result, "no restic repository there")
    assert "drkit repo init" in result.stderr  # the hint says what to do


def test_missing_secret_is_recorded(project: Project) -> None:
    two_targets(project, {"url": str(project.root / "r2"), "password": {"env": "DRKIT_UNSET_X"}})
    result = project.run("backup")
    assert_isolated_failure(project, result, "environment variable DRKIT_UNSET_X is not set")


def test_missing_restic(project: Project) -> None:
    project.write_config({
        "restic_binary": "/nonexistent/restic",
        "repositories": {"good": local_repo(project)},
        "targets": {"t": {"kind": "files", "paths": [str(data_dir(project))],
                          "repositories": ["good"]}},
    })
    result = project.run("backup")
    assert result.returncode == 1
    assert "restic not found ('/nonexistent/restic')" in result.stderr
    assert "apt-get install restic" in result.stderr
    (record,) = records(project)
    assert record["status"] == "failed" and "restic not found" in record["error"]


def test_missing_source_path(project: Project) -> None:
    two_targets(project, local_repo(project, "r2"))
    project.run("repo", "init", "bad")
    (project.root / "other" / "file.txt").unlink()
    (project.root / "other").rmdir()
    result = project.run("backup")
    assert_isolated_failure(project, result, "path does not exist")


def test_unknown_target_is_a_bad_request(project: Project) -> None:
    two_targets(project, local_repo(project, "r2"))
    before = len(records(project))
    result = project.run("backup", "healthy", "helthy")
    assert result.returncode == 2
    assert "unknown target 'helthy' (did you mean 'healthy'?)" in result.stderr
    assert len(records(project)) == before  # nothing ran, nothing recorded
    assert project.run("snapshots", "nope").returncode == 2
    assert project.run("repo", "init", "nope").returncode == 2


def test_bad_config_reports_every_error_with_location(project: Project) -> None:
    project.config_path.parent.mkdir(parents=True)
    project.config_path.write_text(
        "repositories:\n"
        "  primary:\n"
        "    url: /tmp/x\n"
        "    password: {env: P}\n"
        "targets:\n"
        "  app-files:\n"
        "    kind: files\n"
        "    paths: [/srv]\n"
        "    repositories: [primary, ofsite]\n"
        "    colour: blue\n"
    )
    for command in (["validate"], ["backup"], ["status"]):
        result = project.run(*command)
        assert result.returncode == 2, command
        assert "Traceback" not in result.stderr
        assert (f"{project.config_path}:9: at 'targets.app-files.repositories[1]': "
                "unknown repository 'ofsite'") in result.stderr
        assert f"{project.config_path}:10: at 'targets.app-files.colour': unknown key" \
            in result.stderr
    assert not project.catalog_path.exists()  # a bad config runs and records nothing


def test_secrets_never_leak(project: Project, rclone_endpoint: S3Endpoint) -> None:
    """The repository password and S3 secret appear in no output, log or catalog byte."""
    project.env.update(rclone_endpoint.env())
    password = project.env["DRKIT_TEST_PASSWORD"]
    project.write_config({
        "repositories": {
            "s3": rclone_endpoint.repository(f"leak-{time.monotonic_ns() % 10**9}"),
            "down": {**local_repo(project, "missing-repo")},
        },
        "targets": {"t": {"kind": "files", "paths": [str(data_dir(project))],
                          "repositories": ["s3", "down"]}},
    })
    outputs = []
    for command in (["repo", "init", "s3"], ["backup", "--json"], ["snapshots", "--json"],
                    ["status", "--json"], ["backup"]):
        result = project.run("--verbose", *command)
        outputs += [result.stdout, result.stderr]
    # Wrong password, verbose: restic's own stderr goes to the debug log.
    wrong = project.run("--verbose", "backup",
                        extra_env={"DRKIT_TEST_PASSWORD": "wrong-password-value-123"})
    outputs += [wrong.stdout, wrong.stderr]
    assert "restic" in "".join(outputs) and "running" in "".join(outputs)  # debug log present
    secrets = [password, rclone_endpoint.secret_key, "wrong-password-value-123"]
    blob = "\n".join(outputs)
    catalog_bytes = b"".join(p.read_bytes() for p in project.catalog_path.parent.glob("catalog*"))
    for secret in secrets:
        assert secret not in blob
        assert secret.encode() not in catalog_bytes


def _journal(project: Project) -> Path:
    return project.root / "config" / ".drkit" / "runs"


def _wait_for_flight(project: Project, timeout: float = 30) -> int:
    """Wait until the backup has journaled its run and restic has started; return restic's
    pid."""
    def started() -> int | None:
        found = subprocess.run(["pgrep", "-f", f"restic backup.*{project.root}"],
                               capture_output=True, text=True).stdout.split()
        return int(found[0]) if found and list(_journal(project).glob("*.json")) else None

    pid: int = wait_for(started, "the backup to start", timeout)
    return pid


def _big_target(project: Project) -> None:
    data = project.root / "data"
    data.mkdir()
    for index in range(4):
        (data / f"blob{index}").write_bytes(os.urandom(48 * 1024 * 1024))
    project.write_config({
        "repositories": {"good": local_repo(project)},
        "targets": {"big": {"kind": "files", "paths": [str(data)], "repositories": ["good"]}},
    })
    assert project.run("repo", "init").returncode == 0


def _start_backup(project: Project) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "backup"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.mark.slow
def test_killed_backup_becomes_interrupted(project: Project) -> None:
    _big_target(project)
    proc = _start_backup(project)
    _wait_for_flight(project)
    proc.kill()  # SIGKILL: no chance to record anything
    proc.wait()
    subprocess.run(["pkill", "-f", f"restic backup.*{project.root}"])  # its orphaned child
    assert not project.catalog_path.exists() or \
        not [r for r in records(project) if r["kind"] == "backup"]
    status = project.run_json("status", expect=1)["targets"][0]
    assert status["repositories"][0]["last_status"] == "interrupted"
    (record,) = [r for r in records(project) if r["kind"] == "backup"]
    assert record["status"] == "interrupted" and "stopped before the run finished" in \
        record["error"]
    assert not list(_journal(project).iterdir())


@pytest.mark.slow
def test_sigint_records_interrupted_and_stops_restic(project: Project) -> None:
    _big_target(project)
    proc = _start_backup(project)
    restic = _wait_for_flight(project)
    os.kill(restic, signal.SIGSTOP)  # frozen mid-backup: it cannot finish before the ^C
    proc.send_signal(signal.SIGINT)
    os.kill(restic, signal.SIGCONT)  # drkit's SIGTERM reaches it now
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    (record,) = [r for r in records(project) if r["kind"] == "backup"]
    assert record["status"] == "interrupted"
    leftover = subprocess.run(["pgrep", "-f", f"restic.*{project.root}"], capture_output=True)
    assert leftover.returncode == 1, "a restic process outlived drkit"
