"""Drills that cannot hurt production: a sandbox root no one else controls, the production
server refused as scratch server, {dsn} without a password in argv, MySQL events restored
disabled, and what a drill killed with -9 left behind cleaned up (and recorded) by the next
drkit command. Real restic, real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Project
from tests.databases import DatabaseServer
from tests.helpers import wait_for
from tests.integration.test_databases import configure

NOBODY = 65534


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind=? order by seq",
                                            (kind,))]


def files_project(project: Project, *, sandbox_dir: Path | None = None) -> None:
    """A files target in a local repository, backed up once, and a plan ``files``."""
    data = project.root / "app"
    data.mkdir()
    (data / "config.json").write_text('{"replicas": 3}')
    project.write_config({
        **({"drills": {"sandbox_dir": str(sandbox_dir)}} if sandbox_dir else {}),
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"files": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "files.yaml").write_text(yaml.safe_dump({
        "name": "files", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "files", "checks": [{"files_exist": ["config.json"]}]}]}))
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr


def foreign_dir(path: Path) -> Path:
    """A directory another local user (nobody) owns, as if they had created it first."""
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


@pytest.mark.parametrize("case", ["symlink", "other owner", "world-writable"])
def test_sandbox_root_controlled_by_someone_else_is_refused(project: Project, case: str
                                                           ) -> None:
    root = project.root / "sandboxes"
    theirs = foreign_dir(project.root / "theirs")
    if case == "symlink":
        root.symlink_to(theirs)
        expected = "it is a symbolic link"
    elif case == "other owner":
        foreign_dir(root)
        expected = f"owned by uid {NOBODY}, not by this user"
    else:
        root.mkdir()
        root.chmod(0o777)
        expected = "writable by others (mode 0777)"
    files_project(project, sandbox_dir=root)
    result = project.run("drill", "files", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    drill = json.loads(result.stdout)
    assert drill["status"] == "failed"
    assert "refusing to restore into the sandbox root" in drill["error"]
    assert expected in drill["error"]
    assert drill["steps"] == []  # nothing restored
    assert list(theirs.iterdir()) == []
    if not root.is_symlink():
        assert list(root.iterdir()) == []
    (record,) = records(project, "drill")
    assert record["status"] == "failed" and expected in record["error"]
    # A "killed drill's" sandbox planted there, naming a production secret as its scratch
    # server: the sweep of the next command does not even read it.
    from drkit.owned import machine

    planted = (theirs if root.is_symlink() else root) / f"files.{machine()}.999999-1.abcd"
    planted.mkdir()
    (planted / "scratch.json").write_text(json.dumps({"plan": "files", "scratch": [
        {"kind": "postgres", "database": "drkit_drill_x", "server": {"env": "TARGET_DSN"}}]}))
    status = project.run("status")
    assert "not cleaning up drill sandboxes" in status.stderr
    assert planted.is_dir() and records(project, "cleanup") == []


def test_default_sandbox_is_private_under_the_state_dir(project: Project) -> None:
    files_project(project)
    result = project.run("drill", "files", "--keep-sandbox", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = Path(json.loads(result.stdout)["sandbox"])
    root = project.root / "config" / ".drkit" / "drills"
    assert kept.parent == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(kept.stat().st_mode) == 0o700
    assert (kept / "00-files").is_dir()
    # A kept sandbox is the operator's: no later command takes it for a killed drill's.
    status = project.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert kept.is_dir()
    assert records(project, "cleanup") == []


def test_production_server_is_refused_as_scratch_server(project: Project,
                                                        postgres: DatabaseServer) -> None:
    """The scratch DSN names another database ('postgres') on the production server: names
    differ, the server is the same, and the drill refuses before creating anything."""
    postgres.sql("drop database if exists prodshop with (force)")
    postgres.sql("create database prodshop")
    postgres.sql("create table t (id int); insert into t values (1)", "prodshop")
    configure(project, postgres, "prodshop", [{"sql": "select count(*) from t",
                                               "expect": "== 1"}])
    assert project.run("validate").returncode == 0  # names differ: only the server tells
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    result = project.run("drill", "db", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    drill = json.loads(result.stdout)
    assert drill["status"] == "failed"
    assert "reaches the target's own production server" in drill["error"]
    assert "allow_production_server" in drill["error"]
    assert postgres.sql("select count(*) from pg_database where datname like "
                        "'drkit_drill%'") == "0"


def test_dsn_reaches_checks_without_a_password_in_argv(
        project: Project, postgres: DatabaseServer, postgres_scratch: DatabaseServer) -> None:
    postgres.sql("drop database if exists dsnshop with (force)")
    postgres.sql("create database dsnshop")
    postgres.sql("create table orders (id int); insert into orders "
                 "select generate_series(1, 77)", "dsnshop")
    seen = project.root / "check-cmdline"
    configure(project, postgres, "dsnshop", [{"command": [
        "sh", "-c", f"tr '\\0' ' ' < /proc/$$/cmdline > {seen}; "
                    "psql '{dsn}' -XAtc 'select count(*) from orders'"]}],
        scratch=postgres_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    result = project.run("drill", "db", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    check = json.loads(result.stdout)["steps"][0]["checks"][-1]
    assert check["status"] == "passed" and check["output"]["stdout"].strip() == "77"
    argv = seen.read_text()
    assert f"postgresql://drkit@127.0.0.1:{postgres_scratch.port}/drkit_drill_db_" in argv
    assert postgres_scratch.password not in argv
    assert postgres_scratch.password.encode() not in project.catalog_path.read_bytes()


def test_mysql_events_are_restored_disabled(project: Project, mariadb: DatabaseServer,
                                            mariadb_scratch: DatabaseServer) -> None:
    """An event whose body writes into production's own table: restored enabled on a scratch
    server whose scheduler runs, it would write into production (here: its copy)."""
    mariadb.sql("drop database if exists evshop; create database evshop")
    mariadb.sql("create table ticks (at timestamp(6) not null);"
                "create event tick on schedule every 1 second "
                "do insert into evshop.ticks values (now(6))", "evshop")
    configure(project, mariadb, "evshop", [
        {"name": "no restored event is enabled",
         "sql": "select count(*) from information_schema.events where event_schema = "
                "database() and status = 'ENABLED'", "expect": "== 0"},
        {"name": "the event was restored (disabled)",
         "sql": "select count(*) from information_schema.events where event_schema = "
                "database() and status <> 'ENABLED'", "expect": "== 1"},
    ], scratch=mariadb_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    mariadb_scratch.sql("set global event_scheduler = ON")
    try:
        result = project.run("drill", "db", "--json")
    finally:
        mariadb_scratch.sql("set global event_scheduler = OFF")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = json.loads(result.stdout)["steps"][0]["checks"]
    assert [c["status"] for c in checks] == ["passed"] * 4, checks


def test_drill_killed_with_kill_9_is_cleaned_up_by_the_next_command(
        project: Project, postgres: DatabaseServer, postgres_scratch: DatabaseServer) -> None:
    postgres.sql("drop database if exists killshop with (force)")
    postgres.sql("create database killshop")
    postgres.sql("create table t (id int); insert into t values (1)", "killshop")
    ready = project.root / "check-started"
    configure(project, postgres, "killshop", [
        {"command": ["sh", "-c", f"echo $$ > {ready}.tmp && mv {ready}.tmp {ready}; "
                                 "kill -STOP $$"]}],
        scratch=postgres_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "drill", "db"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(ready.exists, "the drill's check to start (scratch database loaded)")
    proc.kill()
    proc.communicate(timeout=60)
    os.kill(int(ready.read_text()), signal.SIGKILL)  # the check outlived drkit's -9
    sandboxes = project.root / "config" / ".drkit" / "drills"
    (left,) = list(sandboxes.iterdir())
    scratch_dbs = "select datname from pg_database where datname like 'drkit_drill%'"
    (database,) = postgres_scratch.sql(scratch_dbs).split()

    status = project.run("status")
    assert "cleaned up after a drill that was killed" in status.stderr
    assert not left.exists() and list(sandboxes.iterdir()) == []
    assert postgres_scratch.sql(scratch_dbs) == ""
    (cleanup,) = records(project, "cleanup")
    assert cleanup["status"] == "succeeded" and cleanup["plan"] == "db"
    evidence = json.loads(cleanup["evidence"])
    assert evidence["scratch_databases_dropped"] == [database]
    assert evidence["sandbox"] == str(left) and evidence["sandbox_removed"] is True
    (drill,) = records(project, "drill")
    assert drill["status"] == "interrupted"
    assert postgres_scratch.password.encode() not in project.catalog_path.read_bytes()
    # Nothing left to clean: the next command records nothing more.
    project.run("status")
    assert len(records(project, "cleanup")) == 1


def test_scratch_database_that_cannot_be_dropped_is_kept_in_mind(
        project: Project, postgres: DatabaseServer, postgres_scratch: DatabaseServer) -> None:
    """The check turns the scratch database into a template, which PostgreSQL refuses to drop:
    the drill fails saying so, its marker stays, each later command tries again and records
    the failure once; once droppable, the next command drops it and records that."""
    postgres.sql("drop database if exists stuckshop with (force)")
    postgres.sql("create database stuckshop")
    postgres.sql("create table t (id int); insert into t values (1)", "stuckshop")
    make_template = ("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I IS_TEMPLATE true', "
                     "current_database()); END $$")
    configure(project, postgres, "stuckshop", [
        {"command": ["psql", "{dsn}", "-Xqc", make_template]}], scratch=postgres_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    drill = project.run("drill", "db", "--json")
    assert drill.returncode == 1
    dropped = json.loads(drill.stdout)["steps"][0]["checks"][-1]
    assert dropped["name"] == "scratch database dropped" and dropped["status"] == "failed"
    assert "cannot drop a template database" in dropped["detail"]
    scratch_dbs = "select datname from pg_database where datname like 'drkit_drill%'"
    (database,) = postgres_scratch.sql(scratch_dbs).split()
    sandboxes = project.root / "config" / ".drkit" / "drills"
    (left,) = list(sandboxes.iterdir())
    assert (left / "scratch.json").exists()

    for _ in range(2):  # still a template: tried again, recorded once
        assert "cannot drop a template database" in project.run("status").stderr
        assert postgres_scratch.sql(scratch_dbs) == database
    (failed,) = records(project, "cleanup")
    assert failed["status"] == "failed" and database in failed["error"]

    postgres_scratch.sql(f"ALTER DATABASE {database} IS_TEMPLATE false")
    project.run("status")
    assert postgres_scratch.sql(scratch_dbs) == ""
    assert list(sandboxes.iterdir()) == []
    assert [r["status"] for r in records(project, "cleanup")] == ["failed", "succeeded"]


def test_production_identity_unreadable_is_refused(project: Project, postgres: DatabaseServer,
                                                   postgres_scratch: DatabaseServer) -> None:
    """Production is down at drill time: drkit cannot tell that the scratch server is another
    server, so it refuses (the step may allow it explicitly)."""
    postgres.sql("drop database if exists downshop with (force)")
    postgres.sql("create database downshop")
    postgres.sql("create table t (id int); insert into t values (1)", "downshop")
    configure(project, postgres, "downshop", [{"sql": "select count(*) from t",
                                                "expect": "== 1"}], scratch=postgres_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    from drkit.locals3 import free_port

    dead = postgres.dsn("downshop").replace(f":{postgres.port}/", f":{free_port()}/")
    refused = project.run("drill", "db", "--json", extra_env={"TARGET_DSN": dead})
    assert refused.returncode == 1
    detail = json.loads(refused.stdout)["steps"][0]["checks"][-1]["detail"]
    assert detail.startswith("refusing to drill: cannot read the production server's "
                             "identity to make sure the scratch server")
    assert postgres_scratch.sql("select count(*) from pg_database where datname like "
                                "'drkit_drill%'") == "0"


def test_interrupt_during_the_restore_also_stops_the_concurrent_listing(
        project: Project) -> None:
    """The catalog's snapshot is listed while it is restored. SIGTERM while both run (each
    held by a restic wrapper that waits forever): both are stopped, the drill is recorded as
    interrupted and its sandbox removed, at once."""
    files_project(project)
    restic = project.restic_binary
    started = project.root / "restore-started"
    wrapper = project.root / "restic-wrapper"
    wrapper.write_text(f"""#!/bin/sh
for arg in "$@"; do
  case "$arg" in
    ls) echo $$ > {project.root}/ls.pid; exec sleep 3600 ;;
    restore) touch {started}; exec sleep 3600 ;;
  esac
done
exec {restic} "$@"
""")
    wrapper.chmod(0o755)
    config = yaml.safe_load(project.config_path.read_text())
    project.config_path.write_text(yaml.safe_dump({**config, "restic_binary": str(wrapper)}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "drill", "files"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    wait_for(lambda: started.exists() and (project.root / "ls.pid").exists(),
             "the restore and the listing to start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    listing = int((project.root / "ls.pid").read_text())
    assert not Path(f"/proc/{listing}").exists()  # stopped and reaped, not left running
    (drill,) = records(project, "drill")
    assert drill["status"] == "interrupted"
    assert list((project.root / "config" / ".drkit" / "drills").iterdir()) == []
