"""Prefect flows under `prefect_test_harness`: they record exactly what the CLI records, retry
a transient failure (storage briefly down, repository locked) and never a wrong password."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from drkit.locals3 import local_s3
from tests.conftest import Project
from tests.helpers import restic_env, restic_holding_lock, wait_for

pytestmark = pytest.mark.slow


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    doc = json.loads(project.run("report", "--format", "json", "--since", "1d").stdout)
    return [r for r in doc["records"] if r["kind"] == kind]


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def failed_runs(project: Project, kind: str) -> int:
    if not project.catalog_path.exists():
        return 0
    with closing(sqlite3.connect(project.catalog_path, timeout=30)) as db:
        (count,) = db.execute("select count(*) from records where kind = ? and status = "
                              "'failed'", (kind,)).fetchone()
    return int(count)


def files_project(project: Project, **extra: Any) -> None:
    data = project.root / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("hello flows")
    plans = project.root / "recovery_plans"
    plans.mkdir(exist_ok=True)
    (plans / "p.yaml").write_text(
        "name: p\nobjectives: {rpo: 1h, rto: 10m}\nsteps:\n"
        "  - target: t\n    checks:\n      - files_exist: [a.txt]\n")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
        "drills": {"sandbox_dir": str(project.root / "sandbox")},
        **extra,
    })
    assert project.run("repo", "init").returncode == 0


def test_backup_check_and_drill_flows_record_what_the_cli_records(
        prefect_harness: None, env: Project) -> None:
    from drkit.flows.flows import backup_flow, check_flow, drill_flow

    project = env
    files_project(project)
    config = str(project.config_path)
    runs = backup_flow(config=config, target="t", repositories=["r"])
    assert [r["status"] for r in runs] == ["succeeded"]
    assert project.run("backup").returncode == 0  # the same through the CLI
    flow_backup, cli_backup = records(project, "backup")
    for field in ("kind", "status", "target", "repository", "hostname", "drkit_version",
                  "restic_version", "error"):
        assert flow_backup[field] == cli_backup[field], field
    assert flow_backup["snapshot_id"] == runs[0]["snapshot_id"]
    assert set(flow_backup["evidence"]) == set(cli_backup["evidence"])
    # Who did it: the flow run (and its deployment), or the OS user.
    assert flow_backup["actor"].startswith("prefect flow run ")
    assert "deployment no deployment" in flow_backup["actor"]
    import pwd
    assert cli_backup["actor"] == pwd.getpwuid(os.geteuid()).pw_name

    checks = check_flow(config=config)
    assert checks[0]["status"] == "passed" and records(project, "check")[0]["status"] == "passed"
    drill = drill_flow(config=config, plan="p")
    assert drill["status"] == "passed"
    (record,) = records(project, "drill")
    assert record["plan"] == "p" and record["status"] == "passed"
    assert record["record_id"] == drill["record_id"]
    assert not any((project.root / "sandbox").iterdir())


def test_prune_and_report_flows(prefect_harness: None, env: Project) -> None:
    from drkit.flows.flows import backup_flow, prune_flow, report_flow

    project = env
    files_project(project)
    config = load_yaml(project.config_path)
    config["targets"]["t"]["retention"] = {"keep_last": 1}
    project.write_config(config)
    for _ in range(2):
        backup_flow(config=str(project.config_path), target="t")
    pruned = prune_flow(config=str(project.config_path))
    assert [(p["target"], p["status"], len(p["kept"]), len(p["removed"])) for p in pruned] == [
        ("t", "succeeded", 1, 1)]
    report = report_flow(config=str(project.config_path), since="1d", fmt="json")
    document = json.loads(Path(report["path"]).read_text())
    assert [r["kind"] for r in document["records"]].count("prune") == 1
    assert [r["kind"] for r in records(project, "report")] == ["report"]


def test_copy_flow_fills_the_copy_repository_once(prefect_harness: None,
                                                  env: Project) -> None:
    from drkit.flows.flows import backup_flow, copy_flow

    project = env
    files_project(project)
    config = load_yaml(project.config_path)
    config["repositories"]["vault"] = {"url": str(project.root / "vault"),
                                       "password": {"env": "DRKIT_TEST_PASSWORD"},
                                       "copy_from": "r", "copy_schedule": "0 2 * * *"}
    project.write_config(config)
    assert project.run("repo", "init", "vault").returncode == 0
    (backup,) = backup_flow(config=str(project.config_path), target="t")
    (run,) = copy_flow(config=str(project.config_path), repository="vault")
    assert (run["target"], run["status"]) == ("t", "succeeded")
    assert list(run["copied"]) == [backup["snapshot_id"][:8]]
    (again,) = copy_flow(config=str(project.config_path), repository="vault")
    assert again["status"] == "up_to_date"
    (record,) = records(project, "copy")
    assert record["snapshot_id"] == run["copied"][backup["snapshot_id"][:8]]


def test_transient_storage_outage_is_retried(prefect_harness: None, env: Project,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from drkit.flows.flows import backup_flow

    project = env
    data = project.root / "data"
    data.mkdir()
    (data / "a.txt").write_text("x")
    with local_s3(tmp_path / "s3") as s3:
        port, keys = int(s3.endpoint.rsplit(":", 1)[1]), (s3.access_key, s3.secret_key)
        project.env.update({"AK": s3.access_key, "SK": s3.secret_key})
        monkeypatch.setenv("AK", s3.access_key)
        monkeypatch.setenv("SK", s3.secret_key)
        project.write_config({
            "repositories": {"s3": {"url": s3.restic_url("bucket", "repo"),
                                    "password": {"env": "DRKIT_TEST_PASSWORD"},
                                    "s3": {"access_key": {"env": "AK"},
                                           "secret_key": {"env": "SK"}}}},
            "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["s3"]}},
            "retries": {"attempts": 3, "delays": ["3s"]},
        })
        assert project.run("repo", "init").returncode == 0
    # The endpoint is down now; it comes back (same port, same data) once the first attempt
    # has failed and been recorded.
    back, done = threading.Event(), threading.Event()

    def restore_storage() -> None:
        wait_for(lambda: failed_runs(project, "backup"), "the first attempt's record", 120)
        with local_s3(tmp_path / "s3", port=port, keys=keys):
            back.set()
            done.wait(120)

    thread = threading.Thread(target=restore_storage, daemon=True)
    thread.start()
    try:
        runs = backup_flow(config=str(project.config_path), target="t")
    finally:
        done.set()
        thread.join(60)
    assert back.is_set() and runs[0]["status"] == "succeeded"
    statuses = [r["status"] for r in records(project, "backup")]
    assert statuses[0] == "failed" and statuses[-1] == "succeeded", statuses
    assert "unreachable" in records(project, "backup")[0]["error"]


def test_locked_repository_is_retried_once_the_lock_goes(prefect_harness: None,
                                                         env: Project) -> None:
    from drkit.flows.flows import check_flow

    project = env
    files_project(project, lock_timeout="1s", retries={"attempts": 4, "delays": ["2s"]})
    # A real restic holds the repository (a backup reading a stdin the test holds open) until
    # the first check attempt has failed and been recorded; then its backup ends normally.
    holder_env = restic_env(str(project.root / "repo"), project.env["DRKIT_TEST_PASSWORD"])
    with restic_holding_lock(project.restic_binary, holder_env, exclusive=False) as holder:
        def release() -> None:
            wait_for(lambda: failed_runs(project, "check"), "the first check attempt to fail")
            assert holder.stdin is not None
            holder.stdin.close()

        threading.Thread(target=release, daemon=True).start()
        checks = check_flow(config=str(project.config_path))
        holder.wait(timeout=60)
    assert checks[0]["status"] == "passed"
    statuses = [r["status"] for r in records(project, "check")]
    assert statuses[0] == "failed" and statuses[-1] == "passed", statuses
    assert "locked" in records(project, "check")[0]["error"]


def test_wrong_password_is_not_retried(prefect_harness: None, env: Project,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.states import State

    from drkit.flows.flows import backup_flow

    project = env
    files_project(project, retries={"attempts": 3, "delays": ["1s"]})
    monkeypatch.setenv("DRKIT_TEST_PASSWORD", "not-the-password")
    state: State[Any] = backup_flow(config=str(project.config_path), target="t",
                                    return_state=True)
    assert state.is_failed()
    backups = records(project, "backup")
    assert [r["status"] for r in backups] == ["failed"]  # one attempt, no retry
    assert "password" in backups[0]["error"]


def test_two_sites_share_a_server_and_each_updates_only_its_own_deployments(
        prefect_harness: None, env: Project) -> None:
    from prefect.client.orchestration import get_client

    from drkit.config.loader import load_config
    from drkit.drills.plans import load_plans
    from drkit.flows.deployments import build_deployments, remove_stale

    project = env
    files_project(project)
    config = load_yaml(project.config_path)
    config["targets"]["t"]["schedule"] = "0 * * * *"
    config["targets"]["u"] = {**config["targets"]["t"], "schedule": "0 2 * * *"}
    config["checks"] = {"schedule": "0 3 * * *"}

    def register(site: str, settings: dict[str, Any]) -> list[str]:
        project.write_config({**settings, "site": site})
        loaded = load_config(project.config_path)
        found = build_deployments(loaded, load_plans(loaded))
        for _, deployment in found:
            deployment.apply()
        remove_stale(loaded, {deployment.name for _, deployment in found})
        return sorted(deployment.name for _, deployment in found)

    def deployments() -> dict[str, tuple[str, list[str], dict[str, Any]]]:
        with get_client(sync_client=True) as client:
            return {d.name: (d.schedules[0].schedule.cron, sorted(d.tags), d.parameters)
                    for d in client.read_deployments() if "drkit" in d.tags}

    def collisions() -> dict[str, str]:
        with get_client(sync_client=True) as client:
            return {d.name: str(d.concurrency_options.collision_strategy.value)
                    for d in client.read_deployments() if "drkit" in d.tags
                    and d.global_concurrency_limit is not None
                    and d.global_concurrency_limit.limit == 1
                    and d.concurrency_options is not None}

    # Both sites declare the same schedule names; neither's deploy touches the other's.
    assert register("eu-1", config) == ["eu-1.backup-t", "eu-1.backup-u", "eu-1.check"]
    assert register("us-2", config) == ["us-2.backup-t", "us-2.backup-u", "us-2.check"]
    config["targets"]["t"]["schedule"] = "*/30 * * * *"
    del config["targets"]["u"]
    assert register("eu-1", config) == ["eu-1.backup-t", "eu-1.check"]
    found = deployments()
    assert {name: cron for name, (cron, _, _) in found.items()} == {
        "eu-1.backup-t": "*/30 * * * *", "eu-1.check": "0 3 * * *",
        "us-2.backup-t": "0 * * * *", "us-2.backup-u": "0 2 * * *", "us-2.check": "0 3 * * *"}
    # Tagged by site and what they touch; the parameters carry names, never a path.
    assert found["eu-1.backup-t"][1] == ["drkit", "repository:r", "site:eu-1", "target:t"]
    assert found["eu-1.backup-t"][2] == {"target": "t", "repositories": ["r"]}
    assert found["us-2.check"][2] == {"repositories": ["r"]}
    assert not any(str(project.root) in json.dumps(p) for _, _, p in found.values())
    # One run at a time each: a backup's extra runs wait (then skip), others are cancelled.
    assert collisions() == {"eu-1.backup-t": "ENQUEUE", "eu-1.check": "CANCEL_NEW",
                            "us-2.backup-t": "ENQUEUE", "us-2.backup-u": "ENQUEUE",
                            "us-2.check": "CANCEL_NEW"}


def test_drkit_log_lines_reach_the_run_logs_with_secrets_masked(prefect_harness: None,
                                                                 env: Project) -> None:
    import logging
    import uuid

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.runtime import flow_run

    from drkit.flows.common import _as_flow_run, _config

    project = env
    files_project(project)
    password = project.env["DRKIT_TEST_PASSWORD"]

    @task
    def talk(config_path: str) -> None:
        with _as_flow_run(_config(config_path)):
            logging.getLogger("drkit.test").info("the repository password is %s", password)
            logging.getLogger("drkit.test").debug("below INFO: not sent")

    @flow
    def talker(config_path: str) -> str:
        talk(config_path)
        return str(flow_run.id)

    run_id = talker(str(project.config_path))
    with get_client(sync_client=True) as client:
        messages = [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))]
    assert "the repository password is ***" in messages, messages
    assert not any(password in m for m in messages)
    assert not any("below INFO" in m for m in messages)


def test_a_repository_held_elsewhere_fails_the_run_loudly_once_lock_timeout_passes(
        prefect_harness: None, env: Project) -> None:
    """Another host's backup holds a slot of the repository's Prefect concurrency limit: a
    check (which needs the repository alone) waits ``lock_timeout``, then fails, recorded."""
    from prefect.concurrency.sync import concurrency
    from prefect.states import State

    from drkit.config.loader import load_config
    from drkit.flows.flows import check_flow
    from drkit.flows.slots import ensure_limits, limit_name

    project = env
    files_project(project, lock_timeout="2s", retries={"attempts": 0, "delays": ["1s"]})
    config = load_config(project.config_path)
    ensure_limits(config, ["r"])
    with concurrency(limit_name(config, "r"), occupy=1, strict=True):
        state: State[Any] = check_flow(config=str(project.config_path), return_state=True)
    assert state.is_failed()
    (record,) = records(project, "check")
    assert record["status"] == "failed"
    assert "repository 'r' is held by another run" in record["error"]
    assert limit_name(config, "r") in record["error"]
    # Free again: the same check passes.
    assert check_flow(config=str(project.config_path))[0]["status"] == "passed"


def test_flow_runs_publish_artifacts_and_a_failed_drill_its_event(prefect_harness: None,
                                                                   env: Project) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.states import State

    from drkit.flows.flows import backup_flow, drill_flow, report_flow

    project = env
    files_project(project)
    plans = project.root / "recovery_plans"
    (plans / "broken.yaml").write_text(
        "name: broken\nobjectives: {rpo: 1h, rto: 10m}\nsteps:\n"
        "  - target: t\n    checks:\n      - files_exist: [not-there.txt]\n")
    config = str(project.config_path)
    backed: State[Any] = backup_flow(config=config, target="t", return_state=True)
    (run,) = backed.result()
    state: State[Any] = drill_flow(config=config, plan="broken", return_state=True)
    assert state.is_failed()
    reported: State[Any] = report_flow(config=config, since="1d", fmt="json",
                                       return_state=True)
    report = reported.result()

    def artifact(key: str, of: State[Any]) -> Any:
        """The artifact ``key`` of the flow run that ended in ``of`` (the Prefect API is
        shared by every flow test of the session)."""
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(
                    any_=[of.state_details.flow_run_id])))
        assert len(found) == 1, (key, found)
        return found[0]

    backup = artifact("backup-t", backed)
    rows = json.loads(backup.data) if isinstance(backup.data, str) else backup.data
    assert [(r["target"], r["repository"], r["status"], r["snapshot"]) for r in rows] == [
        ("t", "r", "succeeded", run["snapshot_id"][:8])]
    drill = artifact("drill-broken", state)
    rows = json.loads(drill.data) if isinstance(drill.data, str) else drill.data
    assert rows[-1]["what"] == "verdict" and rows[-1]["result"] == "failed"
    checks = {r["what"]: r["result"] for r in rows if r["what"].startswith("check ")}
    assert checks["check files_exist: not-there.txt on t"] == "failed", rows
    summary = artifact("report", reported)
    assert summary.type == "markdown" and report["path"] in str(summary.data)

    (drilled,) = records(project, "drill")

    def breached() -> list[Any]:
        with get_client(sync_client=True) as client:
            return [e for e in client.read_events(filter=EventFilter(
                event=EventNameFilter(name=["drkit.drill.breached"])), limit=50).events
                if e.resource.id == "drkit.plan.broken"
                and e.payload.get("record_id") == drilled["record_id"]]

    (event,) = wait_for(breached, "the drkit.drill.breached event of this drill", 60)
    assert event.resource.id == "drkit.plan.broken"
    assert event.payload["status"] == "failed"
