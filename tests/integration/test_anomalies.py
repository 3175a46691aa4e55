"""Anomaly detection on every backup, with the real CLI, restic and an S3 endpoint: ten
normal backups of a changing tree raise nothing; the tree encrypted in place, a big file
that stops deduplicating, and the tree emptied are each flagged; `status` fails until the
anomaly is acknowledged; a drill with `pick: last_normal` restores the backup before it."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Project, S3Endpoint

LEDGER = 24 * 1024 * 1024  # well above restic's largest chunk (8 MiB)
# Text-like bytes: 16 letters and a space (about 4 bits a byte: compressible, never
# mistaken for encrypted data), random so that restic's chunks do not repeat.
_LETTERS = bytes((b"etaoinshrdlucmfw " * 16)[:256])


def text(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size).translate(_LETTERS)


def make_tree(root: Path, rng: random.Random) -> None:
    root.mkdir()
    for index in range(40):
        (root / f"doc{index:02d}.txt").write_bytes(text(rng, 8192))
    (root / "ledger.db").write_bytes(text(rng, LEDGER))


def normal_change(root: Path, rng: random.Random) -> None:
    """What a working day does: two documents edited, a few bytes of the ledger rewritten."""
    for index in rng.sample(range(40), 2):
        path = root / f"doc{index:02d}.txt"
        path.write_bytes(path.read_bytes()[:-64] + text(rng, 64))
    with open(root / "ledger.db", "r+b") as handle:
        handle.seek(rng.randrange(0, LEDGER - 200))
        handle.write(text(rng, 200))


def encrypt_in_place(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "select * from records where kind=? order by seq", (kind,))]


def backup(project: Project) -> dict[str, Any]:
    result = project.run("backup", "--json")
    assert result.returncode == 0, result.stderr  # a flagged backup still succeeded
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "succeeded"
    return dict(run)


@pytest.fixture
def tree_project(project: Project, rclone_endpoint: S3Endpoint,
                 webhook: tuple[str, list[dict[str, Any]]]) -> Project:
    data = project.root / "data"
    make_tree(data, random.Random(7))
    project.env.update(rclone_endpoint.env())
    project.env["HOOK_URL"] = webhook[0]
    project.write_config({
        "notify": {"webhook": {"url": {"env": "HOOK_URL"}}},
        "repositories": {"s3": rclone_endpoint.repository(f"anom-{time.monotonic_ns()}")},
        "targets": {"tree": {"kind": "files", "paths": [str(data)], "repositories": ["s3"],
                             "entropy_sample": 8}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "tree.yaml").write_text(yaml.safe_dump({
        "name": "tree", "objectives": {"rpo": "1d", "rto": "1h"},
        "steps": [{"target": "tree", "pick": "last_normal",
                   "checks": [{"files_exist": ["doc00.txt", "ledger.db"]}]}]}))
    assert project.run("repo", "init").returncode == 0
    return project


@pytest.mark.every_restic
def test_encryption_and_emptying_are_flagged_and_normal_days_are_not(
        tree_project: Project, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    project, data, rng = tree_project, tree_project.root / "data", random.Random(11)
    for run in range(10):
        if run:
            normal_change(data, rng)
        assert backup(project)["anomaly"] is None, f"false alarm on normal run {run}"
    scored = [json.loads(r["evidence"])["anomaly"] for r in records(project, "backup")]
    assert [v["warming_up"] for v in scored][-1] is False  # the last runs were judged
    assert not any(v["flagged"] for v in scored)
    assert max(v["ms"] for v in scored) < 1000  # scoring ran (its budget is in bench/)
    status = project.run_json("status")
    assert status["targets"][0]["anomalies"] == []
    before = (data / "doc00.txt").read_bytes()

    for path in sorted(data.iterdir()):  # ransomware: every file rewritten, same size
        encrypt_in_place(path)
    flagged = backup(project)
    assert flagged["anomaly"], "encryption in place was not flagged"
    assert any("changed at once" in reason for reason in flagged["anomaly"])
    evidence = json.loads(records(project, "backup")[-1]["evidence"])
    assert evidence["entropy_sample"]["sampled"] == 8
    assert evidence["entropy_sample"]["encrypted_share"] == 1.0
    assert any("look encrypted" in reason for reason in flagged["anomaly"])
    event = webhook[1][-1]
    assert event["event"] == "backup_anomaly" and event["record_id"] == flagged["record_id"]
    assert event["reasons"] == flagged["anomaly"]

    result = project.run("status", "--json")
    assert result.returncode == 1  # until somebody looks at it
    (open_one,) = json.loads(result.stdout)["targets"][0]["anomalies"]
    assert open_one["record_id"] == flagged["record_id"] and open_one["open"] is True
    human = project.run("status")
    assert f"drkit ack {flagged['record_id']}" in human.stdout

    # The drill restores the last backup before the anomaly, not the encrypted one.
    drill = project.run("drill", "tree", "--json", "--keep-sandbox")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    drilled = json.loads(drill.stdout)
    step = drilled["steps"][0]
    normal = records(project, "backup")[-2]
    assert step["snapshot_id"].startswith(normal["snapshot_id"])
    assert "before the open anomaly" in step["chosen_by"]
    restored = next(Path(drilled["sandbox"]).rglob("doc00.txt"))
    assert restored.read_bytes() == before

    acked = project.run("ack", str(flagged["record_id"]), "--reason", "drill of the "
                        "ransomware runbook", "--json")
    assert acked.returncode == 0, acked.stderr
    (ack,) = records(project, "ack")
    assert json.loads(ack["evidence"])["record_id"] == flagged["record_id"]
    assert ack["actor"]
    assert project.run("ack", str(flagged["record_id"]), "--reason", "again").returncode == 2
    assert project.run_json("status")["targets"][0]["anomalies"] == []

    for path in data.iterdir():  # a lost mount: the source is suddenly empty
        path.unlink()
    emptied = backup(project)
    assert emptied["anomaly"], "an emptied source was not flagged"
    assert any("shrank" in reason for reason in emptied["anomaly"])
    assert any("gone" in reason for reason in emptied["anomaly"])
    assert project.run("status").returncode == 1


def test_a_big_file_that_stops_deduplicating_is_flagged(tree_project: Project) -> None:
    """Same files changed as on a normal day, but the ledger rewritten whole with
    incompressible bytes: the share of new data jumps."""
    project, data, rng = tree_project, tree_project.root / "data", random.Random(5)
    for run in range(8):
        if run:
            normal_change(data, rng)
        assert backup(project)["anomaly"] is None
    normal_change(data, rng)
    encrypt_in_place(data / "ledger.db")
    flagged = backup(project)
    assert flagged["anomaly"] and any("no longer deduplicates" in r
                                      for r in flagged["anomaly"])
    assert not any("changed at once" in r for r in flagged["anomaly"])
    # Not acknowledged: still open, and a report shows it.
    report = project.run("report", "--format", "json", "--since", "1d")
    data_out = json.loads(report.stdout)
    (listed,) = data_out["summary"]["anomalies"]
    assert listed["record_id"] == flagged["record_id"] and listed["open"] is True


def test_ack_refuses_what_is_no_anomaly(tree_project: Project) -> None:
    run = backup(tree_project)
    result = tree_project.run("ack", str(run["record_id"]), "--reason", "fine")
    assert result.returncode == 2 and "was not flagged" in result.stderr
    result = tree_project.run("ack", "999999", "--reason", "fine")
    assert result.returncode == 2 and "is not a backup" in result.stderr
    result = tree_project.run("ack", str(run["record_id"]), "--reason", " ")
    assert result.returncode == 2


def test_a_recovery_never_goes_back_to_the_flagged_data(tree_project: Project) -> None:
    """A second repository added just before the attack is still warming up: it does not
    flag the encrypted run itself. `pick: last_normal` judges by the data, so a drill of
    that repository refuses (it holds nothing from before the anomaly) rather than restore
    the encrypted backup; and prune keeps the last normal backup and the flagged one while
    the anomaly is open, whatever the retention says."""
    project, data, rng = tree_project, tree_project.root / "data", random.Random(9)
    for run in range(7):
        if run:
            normal_change(data, rng)
        backup(project)
    repos = yaml.safe_load(project.config_path.read_text())["repositories"]
    repos["offsite"] = {"url": str(project.root / "offsite"),
                        "password": {"env": "DRKIT_TEST_PASSWORD"}}
    config = yaml.safe_load(project.config_path.read_text())
    config["repositories"] = repos
    config["targets"]["tree"]["repositories"] = ["s3", "offsite"]
    config["targets"]["tree"]["retention"] = {"keep_last": 1}
    project.write_config(config)
    assert project.run("repo", "init", "offsite").returncode == 0
    before = (data / "doc01.txt").read_bytes()
    for path in sorted(data.iterdir()):
        encrypt_in_place(path)
    result = project.run("backup", "--json")
    assert result.returncode == 0, result.stderr
    runs = {r["repository"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs["s3"]["anomaly"] and runs["offsite"]["anomaly"] is None  # warming up
    plan = project.root / "recovery_plans" / "tree.yaml"
    spec = yaml.safe_load(plan.read_text())
    spec["steps"][0]["repository"] = "offsite"
    plan.write_text(yaml.safe_dump(spec))
    drill = project.run("drill", "tree", "--json")
    assert drill.returncode == 1
    assert "precedes its anomalies" in drill.stdout + drill.stderr

    normal_change(data, rng)  # the attack goes on quietly: these look normal now
    assert project.run("backup").returncode == 0
    good_before = [r for r in records(project, "backup") if r["repository"] == "s3"][-3]
    pruned = project.run("prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    prune_record = [r for r in records(project, "prune") if r["repository"] == "s3"][-1]
    evidence = json.loads(prune_record["evidence"])
    held = {s["id"][:8] for s in evidence["anomaly_hold"]}
    assert held == {good_before["snapshot_id"][:8], runs["s3"]["snapshot_id"][:8]}
    spec["steps"][0]["repository"] = "s3"
    plan.write_text(yaml.safe_dump(spec))
    drilled = project.run("drill", "tree", "--json", "--keep-sandbox")
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    sandbox = Path(json.loads(drilled.stdout)["sandbox"])
    assert next(sandbox.rglob("doc01.txt")).read_bytes() == before


def test_a_scoring_failure_never_fails_the_backup(tree_project: Project,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog's history cannot be read for scoring: the backup is still recorded as
    succeeded, the evidence says why it was not compared."""
    from drkit.catalog import anomalies
    from drkit.config.loader import load_config
    from drkit.jobs.backup import run_backups
    from drkit.jobs.common import Recorder

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("history unreadable")

    monkeypatch.setattr(anomalies, "recent_backups", broken)
    for key, value in tree_project.env.items():
        monkeypatch.setenv(key, value)
    config = load_config(tree_project.config_path)
    (run,) = run_backups(config, Recorder.for_config(config))
    assert run.status == "succeeded" and run.anomaly is None
    (record,) = records(tree_project, "backup")
    assert record["status"] == "succeeded"
    verdict = json.loads(record["evidence"])["anomaly"]
    assert verdict["flagged"] is False
    assert verdict["error"] == "RuntimeError: history unreadable"
