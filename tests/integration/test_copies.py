"""Copies done right: ``drkit copy`` runs ``restic copy`` of the catalog's good snapshots from
a repository on the S3 endpoint into a local copy repository (initialised with the source's
chunker parameters). The copy holds the same data, deduplicates, is recorded snapshot by
snapshot, and drills, restores and status use it. Real restic, rclone serve s3."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Project, S3Endpoint
from tests.integration.test_drill_safety import records


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def digest(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def setup(project: Project, endpoint: S3Endpoint) -> tuple[Path, Path]:
    app = project.root / "app"
    app.mkdir()
    for n in range(8):
        (app / f"blob-{n}.bin").write_bytes(secrets.token_bytes(256 * 1024))
    db = project.root / "shop.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("create table orders (id integer primary key, amount int)")
        conn.executemany("insert into orders (amount) values (?)", [(n,) for n in range(500)])
        conn.commit()
    project.env.update(endpoint.env())
    project.write_config({
        "repositories": {
            "primary": endpoint.repository(f"copies-{secrets.token_hex(4)}"),
            "offsite": {"url": str(project.root / "offsite"),
                        "password": {"env": "OFFSITE_PASSWORD"}, "copy_from": "primary"}},
        "targets": {
            "app": {"kind": "files", "paths": [str(app)], "repositories": ["primary"]},
            "shop": {"kind": "sqlite", "path": str(db), "repositories": ["primary"],
                     "fingerprints": {"orders": "select count(*) from orders",
                                      "total": "select sum(amount) from orders"}}},
    })
    project.env["OFFSITE_PASSWORD"] = "another-password-for-the-offsite-copy"
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "offsite.yaml").write_text(yaml.safe_dump({
        "name": "offsite", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "shop", "repository": "offsite",
                   "checks": [{"fingerprints": True}]},
                  {"target": "app", "repository": "all",
                   "checks": [{"files_exist": ["blob-0.bin"]}]}]}))
    init = project.run("repo", "init")
    assert init.returncode == 0, init.stderr
    return app, db



def test_copy_holds_the_same_data_deduplicates_and_is_drilled(
        project: Project, rclone_endpoint: S3Endpoint) -> None:
    app, _db = setup(project, rclone_endpoint)
    offsite = project.root / "offsite"
    config = yaml.safe_load(project.config_path.read_text())
    primary_url = config["repositories"]["primary"]["url"]
    s3_env = {"AWS_ACCESS_KEY_ID": rclone_endpoint.access_key,
              "AWS_SECRET_ACCESS_KEY": rclone_endpoint.secret_key}
    # The copy repository took the source's chunker parameters.
    source_config = json.loads(project.restic(primary_url, "cat", "config",
                                              extra_env=s3_env).stdout)
    copy_config = json.loads(project.restic(
        str(offsite), "cat", "config",
        extra_env={"RESTIC_PASSWORD": project.env["OFFSITE_PASSWORD"]}).stdout)
    assert copy_config["chunker_polynomial"] == source_config["chunker_polynomial"]

    assert project.run("backup").returncode == 0
    assert project.run("backup").returncode == 0  # two snapshots of each before the copy
    copied = project.run_json("copy")
    assert sorted((c["target"], c["status"], len(c["copied"])) for c in copied) == [
        ("app", "succeeded", 2), ("shop", "succeeded", 2)]
    assert len(records(project, "copy")) == 4  # one record per copied snapshot
    backups = {r["target"]: r for r in records(project, "backup")}  # the newest of each
    copies = {r["target"]: r for r in records(project, "copy")}
    for target in ("app", "shop"):
        evidence = json.loads(copies[target]["evidence"])
        assert evidence["source_snapshot"] == backups[target]["snapshot_id"]
        assert evidence["source_repository"] == "primary"
        assert copies[target]["repository"] == "offsite"
        # A copy's recovery point is its source backup's.
        assert copies[target]["started_at"] == backups[target]["started_at"]
    assert json.loads(copies["shop"]["evidence"])["fingerprints"]["orders"]["value"] == "500"

    # `drkit snapshots` shows each copy with the snapshot it is a copy of.
    listed = project.run_json("snapshots", "shop")
    sources = {s["id"]: s for s in listed if s["repository"] == "primary"}
    copied_rows = [s for s in listed if s["repository"] == "offsite"]
    assert len(copied_rows) == 2 and all(s["copy_of"]["repository"] == "primary"
                                         for s in copied_rows)
    assert {s["copy_of"]["snapshot_id"] for s in copied_rows} == set(sources)
    assert all(s["copy_of"] is None for s in sources.values())

    # Nothing new: nothing copied, nothing recorded.
    again = project.run_json("copy")
    assert {c["status"] for c in again} == {"up_to_date"}
    assert len(records(project, "copy")) == 4

    # An unchanged tree backed up again and copied adds (almost) nothing to the copy.
    size = tree_bytes(offsite)
    assert project.run("backup", "app").returncode == 0
    assert project.run_json("copy")[0]["status"] == "succeeded"
    assert tree_bytes(offsite) - size < 0.01 * tree_bytes(app)

    # The copy restores to the same bytes, and drills from it (fingerprints equal).
    restored = project.run_json("restore", "app", "--repository", "offsite", "--to",
                                str(project.root / "back"))
    assert restored["repository"] == "offsite"
    assert digest(project.root / "back") == digest(app)
    drill = project.run("drill", "offsite", "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    steps = json.loads(drill.stdout)["steps"]
    assert [(s["target"], s["repository"]) for s in steps] == [
        ("shop", "offsite"), ("app", "primary"), ("app", "offsite")]
    status = project.run_json("status")
    shop = next(t for t in status["targets"] if t["target"] == "shop")
    assert [r["repository"] for r in shop["repositories"]] == ["primary", "offsite"]
    assert all(r["last_status"] == "succeeded" for r in shop["repositories"])


@pytest.mark.parametrize(("change", "message"), [
    ({"targets": {"app": {"repositories": ["offsite"]}}},
     "'offsite' is a copy of 'primary': drkit copy fills it; back up to 'primary'"),
    ({"repositories": {"offsite": {"copy_from": "nowhere"}}}, "unknown repository 'nowhere'"),
    ({"repositories": {"offsite": {"copy_from": "offsite"}}},
     "a repository cannot be a copy of itself"),
])
def test_copy_configuration_mistakes_are_bad_requests(
        project: Project, change: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {
        "repositories": {"primary": {"url": str(project.root / "p"),
                                     "password": {"env": "DRKIT_TEST_PASSWORD"}},
                         "offsite": {"url": str(project.root / "o"),
                                     "password": {"env": "DRKIT_TEST_PASSWORD"},
                                     "copy_from": "primary"}},
        "targets": {"app": {"kind": "files", "paths": [str(project.root)],
                            "repositories": ["primary"]}}}
    for section, items in change.items():
        for name, values in items.items():
            config[section][name] = {**config[section][name], **values}
    project.write_config(config)
    result = project.run("validate")
    assert result.returncode == 2
    assert message in result.stderr, result.stderr


def test_a_source_snapshot_removed_outside_drkit_is_reported_once_not_forever(
        project: Project, rclone_endpoint: S3Endpoint) -> None:
    setup(project, rclone_endpoint)
    assert project.run("backup", "app").returncode == 0
    (gone,) = [r["snapshot_id"] for r in records(project, "backup")]
    config = yaml.safe_load(project.config_path.read_text())
    s3_env = {"AWS_ACCESS_KEY_ID": rclone_endpoint.access_key,
              "AWS_SECRET_ACCESS_KEY": rclone_endpoint.secret_key}
    forgot = project.restic(config["repositories"]["primary"]["url"], "forget", gone,
                            extra_env=s3_env)
    assert forgot.returncode == 0, forgot.stderr
    assert project.run("backup", "app").returncode == 0
    first = project.run("copy", "offsite", "--json")
    assert first.returncode == 1
    (app,) = [c for c in json.loads(first.stdout) if c["target"] == "app"]
    assert app["error"].endswith(f"{gone[:8]} not found in 'primary' (removed outside drkit?)"
                                 "; the other snapshots were copied")
    assert len(app["copied"]) == 1  # the snapshot still there was copied and recorded
    again = project.run_json("copy", "offsite")
    assert [c["status"] for c in again if c["target"] == "app"] == ["up_to_date"]


def test_an_existing_copy_repository_that_chunks_differently_is_refused(
        project: Project) -> None:
    """A copy repository created by hand without --copy-chunker-params would not
    deduplicate copied data: repo init says so instead of accepting it."""
    project.env["OFFSITE_PASSWORD"] = "another-password-for-the-offsite-copy"
    project.write_config({
        "repositories": {"primary": {"url": str(project.root / "p"),
                                     "password": {"env": "DRKIT_TEST_PASSWORD"}},
                         "offsite": {"url": str(project.root / "o"),
                                     "password": {"env": "OFFSITE_PASSWORD"},
                                     "copy_from": "primary"}},
        "targets": {}})
    made = project.restic(str(project.root / "o"), "init",
                          extra_env={"RESTIC_PASSWORD": project.env["OFFSITE_PASSWORD"]})
    assert made.returncode == 0, made.stderr
    result = project.run("repo", "init")
    assert result.returncode == 1
    assert "repository 'offsite' exists but does not chunk as 'primary' does" in \
        result.stdout + result.stderr
