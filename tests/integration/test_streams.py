"""Streamed backups where two things meet: a dump dying mid-stream while another backup holds
the repository, restic refusing the password while the dump writes, a hung producer, and what
each child may see of the other's secrets. Real restic (0.14 and 0.18), real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Project, restic_at_least_017
from tests.databases import DatabaseServer
from tests.helpers import (
    locks,
    processes_with_env,
    restic_env,
    restic_holding_lock,
    unique_sleep,
    wait_for,
)

pytestmark = pytest.mark.every_restic


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind=? order by seq",
                                            (kind,))]


def snapshots(project: Project) -> list[dict[str, Any]]:
    listed = project.restic(str(project.root / "repo"), "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def ids(project: Project) -> list[str]:
    return [s["id"] for s in snapshots(project) if "drkit" in (s.get("tags") or [])]


def same(full: str, short: str | None) -> bool:
    """restic 0.14 reports a new snapshot by its short id, 0.18 by its full one."""
    return bool(short) and full.startswith(str(short))


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def pg_project(project: Project, postgres: DatabaseServer, database: str, *,
               pg_dump: str = "pg_dump", rows: int = 20000) -> str:
    postgres.sql(f"drop database if exists {database} with (force)")
    postgres.sql(f"create database {database}")
    postgres.sql("create table items (id serial primary key, body text not null);"
                 f"insert into items (body) select md5(g::text) || repeat('x', 200)"
                 f" from generate_series(1, {rows}) g;", database)
    project.env.update({"TARGET_DSN": postgres.dsn(database),
                        "SCRATCH_DSN": postgres.dsn("postgres")})
    project.write_config({
        "lock_timeout": "2s",
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "postgres", "dsn": {"env": "TARGET_DSN"},
                           "pg_dump_binary": pg_dump, "repositories": ["r"],
                           "retention": {"keep_last": 1}}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir(exist_ok=True)
    (plans / "db.yaml").write_text(yaml.safe_dump({
        "name": "db", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "db", "restore_into": {"postgres": {"dsn": {"env": "SCRATCH_DSN"}}},
                   "allow_production_server": True,  # one server here: not what is tested
                   "checks": [{"sql": "select count(*) from items", "expect": f"== {rows}"}]}]}))
    assert project.run("repo", "init").returncode == 0
    return str(project.root / "repo")


def test_dump_killed_mid_stream_under_a_held_lock(project: Project, postgres: DatabaseServer
                                                  ) -> None:
    """pg_dump dies after 40 kB while another backup holds the repository past lock_timeout:
    the run fails as the dump's failure, the torn stream is never drilled as the newest
    backup, and the next prune forgets it (and keeps the good snapshot, not the torn one)."""
    dying = script(project.root / "dying-pg_dump", f"""\
        pg_dump "$@" > {project.root}/full.dump
        head -c 40000 {project.root}/full.dump
        kill -9 $$
        """)
    url = pg_project(project, postgres, "torn", pg_dump=dying)
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["db"]["pg_dump_binary"] = "pg_dump"
    project.write_config(config)
    good = project.run_json("backup")["runs"][0]
    assert good["status"] == "succeeded"

    config["targets"]["db"]["pg_dump_binary"] = dying
    project.write_config(config)
    env = restic_env(url, project.env["DRKIT_TEST_PASSWORD"])
    with restic_holding_lock(project.restic_binary, env, exclusive=False):
        result = project.run("backup", "--json")
        assert result.returncode == 1
        (run,) = json.loads(result.stdout)["runs"]
        assert run["status"] == "failed" and not run["transient"]
        assert "pg_dump of drkit@127.0.0.1" in run["error"] and " failed" in run["error"]
        for wrong in ("Broken pipe", "locked", "still locked"):
            assert wrong not in run["error"]
        (record,) = records(project, "backup")[1:]
        torn = record["snapshot_id"]
        listed = ids(project)
        if restic_at_least_017(project.restic_binary):
            # restic >= 0.17 ran the dump itself and made no snapshot of the torn stream.
            assert torn is None and len(listed) == 1 and same(listed[0], good["snapshot_id"])
        else:
            assert torn and json.loads(record["evidence"])["snapshot_state"] == "torn"
            assert len(listed) == 2 and any(same(i, torn) for i in listed)
            assert "partial stream as snapshot" in run["error"]

        drill = project.run("drill", "db", "--json")
        assert drill.returncode == 0, drill.stdout + drill.stderr
        (step,) = json.loads(drill.stdout)["steps"]
        assert same(step["snapshot_id"], good["snapshot_id"])  # the good one, not the torn one

    prune = project.run_json("prune")["prunes"][0]
    assert prune["status"] == "succeeded"
    (kept,) = ids(project)
    assert same(kept, good["snapshot_id"])
    if torn:
        evidence = json.loads(records(project, "prune")[0]["evidence"])
        assert evidence["forgotten_failed"] == [torn]


def test_wrong_password_is_reported_as_such_while_the_dump_writes(
        project: Project, postgres: DatabaseServer) -> None:
    pg_project(project, postgres, "pwd", rows=50000)  # ~13 MB: the dump blocks on the pipe
    result = project.run("backup", "--json",
                         extra_env={"DRKIT_TEST_PASSWORD": "not-the-password-4711"})
    assert result.returncode == 1
    (run,) = json.loads(result.stdout)["runs"]
    assert "wrong repository password" in run["error"]
    assert "pg_dump" not in run["error"] and "Broken pipe" not in run["error"]
    assert run["transient"] is False and run["snapshot_id"] is None


def test_hung_command_target_is_killed_at_its_time_limit(project: Project) -> None:
    sleep = unique_sleep()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"hung": {"kind": "command", "repositories": ["r"], "timeout": "2s",
                             "command": ["sh", "-c", f"echo started; {sleep} & {sleep}"]}},
    })
    assert project.run("repo", "init").returncode == 0
    result = project.run("backup", "--json")
    assert result.returncode == 1
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "failed" and "timed out after 2.0s" in run["error"]
    (record,) = records(project, "backup")
    assert record["status"] == "failed" and "timed out after 2.0s" in record["error"]
    left = subprocess.run(["pgrep", "-f", sleep], capture_output=True)
    assert left.returncode == 1, "the command's processes outlived its time limit"
    assert processes_with_env("RESTIC_REPOSITORY", str(project.root / "repo")) == [], \
        "restic outlived the time limit"
    env = restic_env(str(project.root / "repo"), project.env["DRKIT_TEST_PASSWORD"])
    assert locks(project.restic_binary, env) == []  # no lock outlives the run
    assert snapshots(project) == []


def test_each_child_sees_only_its_own_secrets(project: Project, postgres: DatabaseServer
                                              ) -> None:
    """The dump gets its DSN's password, never the repository's; restic (the dump's parent
    with restic >= 0.17) gets the repository's, never the DSN's."""
    seen = project.root / "seen"
    seen.mkdir()
    spy = script(project.root / "spy-pg_dump", f"""\
        env > {seen}/dump.env
        tr '\\0' '\\n' < /proc/$PPID/environ > {seen}/parent.env
        exec pg_dump "$@"
        """)
    pg_project(project, postgres, "spied", pg_dump=spy, rows=100)
    project.env["UNRELATED_SECRET"] = "unrelated-secret-value-99"
    result = project.run("backup", "--json")
    assert result.returncode == 0, result.stderr
    dump_env = (seen / "dump.env").read_text()
    assert "PGPASSWORD=" + postgres.password in dump_env
    for leaked in (project.env["DRKIT_TEST_PASSWORD"], "unrelated-secret-value-99",
                   "RESTIC_PASSWORD", "RESTIC_REPOSITORY"):
        assert leaked not in dump_env
    parent_env = (seen / "parent.env").read_text()
    if restic_at_least_017(project.restic_binary):  # restic runs the dump
        assert "RESTIC_PASSWORD=" + project.env["DRKIT_TEST_PASSWORD"] in parent_env
        assert postgres.password not in parent_env
        assert "unrelated-secret-value-99" not in parent_env
    assert os.environ.get("UNRELATED_SECRET") is None


def test_ctrl_c_mid_stream_is_recorded_as_interrupted(project: Project) -> None:
    produced, gate = project.root / "produced", project.root / "gate"
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"stream": {"kind": "command", "repositories": ["r"], "command": [
            "sh", "-c", f"head -c 2000000 /dev/urandom; touch {produced}; "
                        f"while [ ! -e {gate} ]; do sleep 0.05; done"]}},
    })
    assert project.run("repo", "init").returncode == 0
    backup = subprocess.Popen(
        [sys.executable, "-m", "drkit", "--config", str(project.config_path), "backup"],
        env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    wait_for(produced.exists, "the dump to be streaming")
    backup.send_signal(signal.SIGINT)
    _, stderr = backup.communicate(timeout=120)
    assert backup.returncode == 130, stderr
    (record,) = records(project, "backup")
    assert record["status"] == "interrupted", record["error"]
    assert processes_with_env("RESTIC_REPOSITORY", str(project.root / "repo")) == []
    env = restic_env(str(project.root / "repo"), project.env["DRKIT_TEST_PASSWORD"])
    assert locks(project.restic_binary, env) == []


def test_a_dump_tool_found_on_path_gets_the_same_environment_with_every_restic(
        project: Project, mariadb: DatabaseServer) -> None:
    """A MySQL dump is looked up on PATH and run with the base environment (PATH, HOME...)
    whether restic runs it (>= 0.17) or drkit pipes it (older)."""
    tools = project.root / "tools"
    tools.mkdir()
    seen = project.root / "dump.env"
    real = subprocess.run(["which", "mariadb-dump"], capture_output=True, text=True
                          ).stdout.strip()
    script(tools / "mariadb-dump", f"""\
        env > {seen}
        exec {real} "$@"
        """)
    mariadb.sql("drop database if exists pathy; create database pathy; "
                "create table pathy.t (id int primary key); insert into pathy.t values (1)")
    project.env["MARIA_DSN"] = mariadb.dsn("pathy")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "mysql", "dsn": {"env": "MARIA_DSN"},
                           "repositories": ["r"]}},
    })
    assert project.run("repo", "init").returncode == 0
    path = f"{tools}:{os.environ['PATH']}"
    result = project.run("backup", extra_env={"PATH": path})
    assert result.returncode == 0, result.stderr
    dump_env = seen.read_text()  # our wrapper ran: the dump was found on drkit's PATH
    assert f"PATH={path}" in dump_env and "HOME=" in dump_env
    assert project.env["DRKIT_TEST_PASSWORD"] not in dump_env


def test_a_producer_gets_default_signals_and_an_empty_one_is_named(project: Project) -> None:
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "signals": {"kind": "command", "repositories": ["r"], "filename": "sig.txt",
                        "command": ["sh", "-c", "grep SigIgn /proc/$$/status"]},
            "empty": {"kind": "command", "repositories": ["r"], "command": ["true"]},
        },
    })
    assert project.run("repo", "init").returncode == 0
    result = project.run("backup", "--json")
    runs = {r["target"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs["signals"]["status"] == "succeeded", runs["signals"]["error"]
    dumped = project.restic(str(project.root / "repo"), "dump", "--tag",
                            "drkit-target=signals", "latest", "/sig.txt")
    ignored = int(dumped.stdout.split()[1], 16)
    # A dump must die of SIGPIPE when its reader is gone, whoever started it.
    assert not ignored & (1 << (signal.SIGPIPE - 1)), dumped.stdout
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), dumped.stdout
    assert runs["empty"]["status"] == "failed"
    assert "command true succeeded but wrote nothing" in runs["empty"]["error"]
