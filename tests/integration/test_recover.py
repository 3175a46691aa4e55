"""``drkit recover PLAN``: the real recovery with guard rails. --dry-run changes nothing and
says what would be replaced; a real run needs --confirm PLAN, first takes a safety copy of
what it overwrites, and puts the data back byte-identical. Real restic."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Project
from tests.integration.test_drill_safety import records


def digest(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def service(project: Project) -> tuple[Path, Path]:
    """Production: an app directory and a SQLite database, backed up; a plan recovering both
    into place."""
    app = project.root / "srv" / "app"
    (app / "uploads").mkdir(parents=True)
    (app / "config.json").write_text('{"replicas": 3}\n')
    for n in range(4):
        (app / "uploads" / f"scan-{n}.bin").write_bytes(bytes([n]) * 2048)
    dbdir = project.root / "srv" / "db"
    dbdir.mkdir()
    db = dbdir / "shop.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("create table orders (id integer primary key)")
        conn.executemany("insert into orders values (?)", [(n,) for n in range(100)])
        conn.commit()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "app": {"kind": "files", "paths": [str(app)], "repositories": ["r"]},
            "shop": {"kind": "sqlite", "path": str(db), "repositories": ["r"],
                     "fingerprints": {"orders": "select count(*) from orders"}}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "svc.yaml").write_text(yaml.safe_dump({
        "name": "svc", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "shop", "recover_to": {"path": str(dbdir)}},
                  {"target": "app", "recover_to": {"path": str(app)}}]}))
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    return app, db


def damage(app: Path, db: Path) -> None:
    (app / "config.json").write_text("ransomware was here\n")
    (app / "uploads" / "scan-2.bin").unlink()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("delete from orders where id < 60")
        conn.commit()


def state(app: Path, db: Path) -> dict[str, Any]:
    return {"app": digest(app), "db": hashlib.sha256(db.read_bytes()).hexdigest()}


def test_dry_run_changes_nothing_and_says_what_it_would_replace(project: Project) -> None:
    app, db = service(project)
    damage(app, db)
    before = state(app, db)
    dry = project.run("recover", "svc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "replaces file shop.sqlite" in dry.stdout
    assert "replaces file config.json" in dry.stdout and "replaces dir uploads" in dry.stdout
    assert "dry run: nothing changed; recover exactly these snapshots with --confirm svc " \
           "--at " in dry.stdout
    assert state(app, db) == before
    assert records(project, "recover") == [] and records(project, "restore") == []


def test_confirmation_is_required(project: Project) -> None:
    app, db = service(project)
    damage(app, db)
    before = state(app, db)
    for args in ([], ["--confirm", "other"]):
        refused = project.run("recover", "svc", *args)
        assert refused.returncode == 2
        assert "a recovery overwrites production: rerun with --confirm svc" in refused.stderr
    assert state(app, db) == before


def test_recover_puts_the_service_back_and_keeps_a_safety_copy(project: Project) -> None:
    app, db = service(project)
    good = state(app, db)
    damage(app, db)
    result = project.run("recover", "svc", "--confirm", "svc", "--reason", "drill gone wrong",
                         "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "succeeded" and out["reason"] == "drill gone wrong"
    assert out["rto_achieved_s"] > 0
    placed = {k: v for k, v in digest(app).items() if ".before-restore-" not in k}
    assert placed == good["app"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (100,)
    # The safety copy holds the damaged state, outside every target's snapshots.
    app_step = out["steps"][1]
    safety = app_step["safety_snapshot"]
    dumped = project.restic(str(project.root / "repo"), "dump", safety,
                            f"{app}/config.json")
    assert dumped.stdout == "ransomware was here\n"
    listed = json.loads(project.restic(str(project.root / "repo"), "snapshots", "--json",
                                       "--tag", "drkit-safety=app").stdout)
    assert [s["short_id"] for s in listed] == [safety[:8]]
    assert project.run_json("ls", "app")["snapshot_id"] != safety
    (record,) = records(project, "recover")
    evidence = json.loads(record["evidence"])
    assert record["status"] == "succeeded" and record["plan"] == "svc"
    assert evidence["reason"] == "drill gone wrong" and evidence["actor"]
    assert [s["restore_record_id"] for s in evidence["steps"]] == \
        [r["id"] for r in records(project, "restore")]
    # Reports list the real recovery (and its restores) apart from drills.
    report = project.run_json("report", "--format", "json", "--output", "-")
    rows = report["summary"]["recoveries"]
    assert [(r["kind"], r["subject"], r["status"]) for r in rows] == [
        ("restore", "shop", "succeeded"), ("restore", "app", "succeeded"),
        ("recover", "svc", "succeeded")]
    assert rows[2]["reason"] == "drill gone wrong" and rows[2]["rto_achieved_s"] > 0
    assert report["summary"]["drills"] == []
    markdown = project.run("report", "--format", "md", "--output", "-").stdout
    assert "## Recoveries and restores" in markdown and "| recover | svc |" in markdown


def test_recover_to_refused_where_it_cannot_hold(project: Project) -> None:
    project.env["TARGET_DSN"] = "postgresql://u:p@127.0.0.1:1/db"
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "postgres", "dsn": {"env": "TARGET_DSN"},
                           "repositories": ["r"]}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "db.yaml").write_text(yaml.safe_dump({
        "name": "db", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "db", "recover_to": {"path": "/srv/db"}}]}))
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "postgres", "dsn": {"env": "TARGET_DSN"},
                           "repositories": ["r"]},
                    "two": {"kind": "files", "paths": ["/srv/a", "/srv/b"],
                            "repositories": ["r"]}},
    })
    (plans / "two.yaml").write_text(yaml.safe_dump({
        "name": "two", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "two", "recover_to": {"path": "/srv"}}]}))
    result = project.run("validate")
    assert result.returncode == 2
    assert "a postgres target is recovered into its server: recover_to: {dsn: {env: NAME}}" \
        in result.stderr
    assert "target 'two' backs up several paths: recover_to needs a target with one" in \
        result.stderr


def test_the_dry_runs_at_repeats_its_choice_after_a_newer_backup(project: Project) -> None:
    """The damage is backed up (a scheduled backup runs between the dry run and the real
    one): recovering with the --at the dry run printed still restores the snapshot it
    showed, not the newer, damaged one."""
    app, db = service(project)
    good = state(app, db)
    dry = project.run("recover", "svc", "--dry-run")
    at = dry.stdout.rsplit("--at ", 1)[1].split()[0]
    damage(app, db)
    assert project.run("backup").returncode == 0  # the damaged state, recorded as good
    result = project.run("recover", "svc", "--confirm", "svc", "--at", at, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {k: v for k, v in digest(app).items() if ".before-restore-" not in k} == \
        good["app"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (100,)
    out = json.loads(result.stdout)
    assert all(f"completed by {at}" in step["chosen_by"] for step in out["steps"])
