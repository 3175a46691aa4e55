"""Failure notifications reach a webhook; a dead webhook never fails the run."""

from __future__ import annotations

import json
from typing import Any

from drkit.locals3 import free_port
from tests.conftest import Project


def failing_project(project: Project, hook_url: str) -> None:
    data = project.root / "data"
    data.mkdir()
    (data / "f").write_text("x")
    project.env["HOOK_URL"] = hook_url
    project.write_config({
        "notify": {"webhook": {"url": {"env": "HOOK_URL"}}},
        "repositories": {"good": {"url": str(project.root / "repo"),
                                  "password": {"env": "DRKIT_TEST_PASSWORD"}},
                         "missing": {"url": str(project.root / "nothing-here"),
                                     "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"ok": {"kind": "files", "paths": [str(data)], "repositories": ["good"]},
                    "bad": {"kind": "files", "paths": [str(data)],
                            "repositories": ["missing"]}},
    })
    assert project.run("repo", "init", "good").returncode == 0


def test_failed_backup_posts_an_event(project: Project,
                                      webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    failing_project(project, url)
    result = project.run("backup", "--json")
    assert result.returncode == 1
    (event,) = received  # only the failure, not the success
    assert event["event"] == "backup_failed" and event["target"] == "bad"
    assert event["repository"] == "missing" and "no restic repository" in event["error"]
    failed = next(r for r in json.loads(result.stdout)["runs"] if r["target"] == "bad")
    assert event["record_id"] == failed["record_id"] and event["run_id"]
    assert "s3cr3t-token" not in result.stderr


def test_dead_webhook_does_not_fail_the_run(project: Project) -> None:
    failing_project(project, f"http://127.0.0.1:{free_port()}/hook?token=s3cr3t-token")
    result = project.run("backup", "ok")
    assert result.returncode == 0, result.stderr  # nothing failed: nothing to send
    result = project.run("backup")
    assert result.returncode == 1  # the backup's failure, not the webhook's
    assert "notification for backup failed not delivered" in result.stderr
    assert "s3cr3t-token" not in result.stderr
    assert "Traceback" not in result.stderr
