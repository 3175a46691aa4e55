"""PostgreSQL, MariaDB and command targets: dumps streamed into restic, drilled into scratch
databases on real servers started by the fixtures."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import Project
from tests.databases import DatabaseServer


def configure(project: Project, server: DatabaseServer, database: str,
              checks: list[dict[str, Any]], *, scratch: DatabaseServer | None = None,
              scratch_env: str = "SCRATCH_DSN", step: dict[str, Any] | None = None) -> None:
    """A target ``db`` on ``server`` and a plan ``db`` drilling it into ``scratch`` (default:
    ``server`` itself, which a drill refuses unless the step allows it)."""
    kind = server.kind
    scratch = scratch or server
    project.env.update({"TARGET_DSN": server.dsn(database),
                        "SCRATCH_DSN": scratch.dsn("postgres" if kind == "postgres" else "")})
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": kind, "dsn": {"env": "TARGET_DSN"}, "repositories": ["r"]}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir(exist_ok=True)
    (plans / "db.yaml").write_text(yaml.safe_dump({
        "name": "db", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "db", "restore_into": {kind: {"dsn": {"env": scratch_env}}},
                   "checks": checks, **(step or {})}]}))


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind=? order by seq",
                                            (kind,))]


def snapshot_count(project: Project) -> int:
    listed = project.restic(str(project.root / "repo"), "snapshots", "--json")
    return len(json.loads(listed.stdout))


def test_postgres_backup_and_drill_into_scratch(project: Project, postgres: DatabaseServer,
                                                postgres_scratch: DatabaseServer) -> None:
    postgres.sql("drop database if exists shop")
    postgres.sql("create database shop")
    postgres.sql(
        "create sequence invoice_no start 1000;"
        "create table customers (id serial primary key, name text not null);"
        "create table orders (id serial primary key, customer_id int references customers,"
        " amount_cents int not null, created_at timestamptz not null default now());"
        "insert into customers (name) select 'c' || g from generate_series(1, 300) g;"
        "insert into orders (customer_id, amount_cents) select 1 + g % 300, g * 7 "
        " from generate_series(1, 4000) g;"
        "select nextval('invoice_no') from generate_series(1, 42);"
        "create view big_orders as select * from orders where amount_cents > 20000;", "shop")
    count = postgres.sql("select count(*) from orders", "shop")
    checksum = postgres.sql("select sum(id * amount_cents) from orders", "shop")
    big = postgres.sql("select count(*) from big_orders", "shop")
    configure(project, postgres, "shop", [
        {"sql": "select count(*) from orders", "expect": f"== {count}"},
        {"sql": "select sum(id * amount_cents) from orders", "expect": f"== {checksum}"},
        {"sql": "select count(*) from big_orders", "expect": f"== {big}"},
        {"sql": "select last_value from invoice_no", "expect": "== 1041"},
        {"sql": "select max(created_at) from orders", "expect": "within 1h of snapshot"},
    ], scratch=postgres_scratch)
    assert project.run("validate").returncode == 0
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup", "--json")
    assert backup.returncode == 0, backup.stderr
    # The state changes after the snapshot: the drill must show the state at snapshot time.
    postgres.sql("delete from orders where id % 2 = 0; insert into customers (name) "
                 "values ('late')", "shop")
    drill = project.run("drill", "db", "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    report = json.loads(drill.stdout)
    checks = report["steps"][0]["checks"]
    assert [c["status"] for c in checks] == ["passed"] * 7, checks
    assert checks[1]["name"] == "restored into a scratch database"
    for server in (postgres, postgres_scratch):
        assert server.sql("select count(*) from pg_database where datname like "
                          "'drkit_drill%'") == "0"
    assert postgres.sql("select count(*) from orders", "shop") == str(int(count) // 2)
    outputs = backup.stdout + backup.stderr + drill.stdout + drill.stderr
    assert postgres.password not in outputs
    assert postgres.password.encode() not in project.catalog_path.read_bytes()


@pytest.mark.every_restic
def test_failed_dump_is_never_a_good_snapshot(project: Project, postgres: DatabaseServer
                                              ) -> None:
    postgres.sql("drop database if exists shop2")
    postgres.sql("create database shop2")
    configure(project, postgres, "shop2", [])
    assert project.run("repo", "init").returncode == 0
    wrong = postgres.dsn("shop2").replace(postgres.password, "Wrong-Pass-9")
    result = project.run("backup", "--json", extra_env={"TARGET_DSN": wrong})
    assert result.returncode == 1
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "failed" and run["snapshot_id"] is None
    assert "pg_dump of drkit@127.0.0.1" in run["error"] and "failed (exit 1)" in run["error"]
    assert "password authentication failed" in run["error"]
    assert "Wrong-Pass-9" not in result.stdout + result.stderr
    (record,) = records(project, "backup")
    assert record["status"] == "failed"
    # restic < 0.17 may store what it got (0.14 refuses an empty stream); such a snapshot is
    # not a backup and the next prune forgets it (restic >= 0.17 makes none). Either way the
    # error is the dump's, not restic's "snapshot is empty".
    assert record["snapshot_id"] == run["unusable_snapshot_id"]
    assert snapshot_count(project) == (0 if run["unusable_snapshot_id"] is None else 1)
    drill = project.run("drill", "db", "--json")
    assert drill.returncode == 1 and "no good backup" in json.loads(drill.stdout)["error"]
    assert project.run("prune").returncode == 0
    assert snapshot_count(project) == 0


def test_scratch_dsn_equal_to_target_is_rejected(project: Project, postgres: DatabaseServer
                                                 ) -> None:
    configure(project, postgres, "shop", [{"sql": "select 1", "expect": "== 1"}],
              scratch_env="TARGET_DSN")
    result = project.run("validate")
    assert result.returncode == 2
    assert "the scratch DSN names the target's own database" in result.stderr


def test_mariadb_backup_and_drill_into_scratch(project: Project, mariadb: DatabaseServer,
                                               mariadb_scratch: DatabaseServer) -> None:
    mariadb.sql("drop database if exists shop; create database shop")
    mariadb.sql(
        "create table orders (id int auto_increment primary key, amount int not null,"
        " created_at timestamp not null default current_timestamp);"
        "insert into orders (amount) select seq * 3 from seq_1_to_5000;"
        "create view small as select * from orders where amount < 300;", "shop")
    count = mariadb.sql("select count(*) from orders", "shop")
    checksum = mariadb.sql("select sum(id * amount) from orders", "shop")
    configure(project, mariadb, "shop", [
        {"sql": "select count(*) from orders", "expect": f"== {count}"},
        {"sql": "select sum(id * amount) from orders", "expect": f"== {checksum}"},
        {"sql": "select count(*) from small", "expect": "== 99"},
    ], scratch=mariadb_scratch)
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr
    mariadb.sql("delete from orders where id > 10", "shop")
    drill = project.run("drill", "db", "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    checks = json.loads(drill.stdout)["steps"][0]["checks"]
    assert all(c["status"] == "passed" for c in checks), checks
    for server in (mariadb, mariadb_scratch):
        assert server.sql("select count(*) from information_schema.schemata where "
                          "schema_name like 'drkit_drill%'") == "0"
    assert mariadb.password not in backup.stderr + drill.stdout + drill.stderr


@pytest.mark.every_restic
def test_command_target_stream_and_failure(project: Project) -> None:
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "report": {"kind": "command", "command": ["sh", "-c", "echo hello; echo world"],
                       "filename": "report.txt", "repositories": ["r"]},
            "broken": {"kind": "command", "command": ["sh", "-c", "echo partial; exit 3"],
                       "repositories": ["r"]},
        },
    })
    assert project.run("repo", "init").returncode == 0
    result = project.run("backup", "--json")
    assert result.returncode == 1
    runs = {run["target"]: run for run in json.loads(result.stdout)["runs"]}
    assert runs["report"]["status"] == "succeeded"
    assert runs["broken"]["status"] == "failed" and "failed (exit 3)" in runs["broken"]["error"]
    dumped = project.restic(str(project.root / "repo"), "dump", "--tag", "drkit-target=report",
                            "latest", "/report.txt")
    assert dumped.stdout == "hello\nworld\n"
    assert project.run("prune").returncode == 0  # forgets what the broken command left
    assert snapshot_count(project) == 1


def test_mariadb_password_with_quotes_hash_backslash_and_spaces(
        project: Project, mariadb: DatabaseServer) -> None:
    password = 'p#ss "w\\o\'rd x '
    literal = password.replace("\\", "\\\\").replace("'", "\\'")
    mariadb.sql(f"drop user if exists 'odd'@'127.0.0.1'; "
                f"create user 'odd'@'127.0.0.1' identified by '{literal}'; "
                "grant all on *.* to 'odd'@'127.0.0.1'; "
                "drop database if exists oddshop; create database oddshop; "
                "create table oddshop.t (id int primary key); insert into oddshop.t values (7)")
    odd = DatabaseServer(kind="mysql", host=mariadb.host, port=mariadb.port, user="odd",
                         password=quote(password, safe=""), admin=mariadb.admin,
                         data_dir=mariadb.data_dir)
    configure(project, odd, "oddshop", [{"sql": "select max(id) from t", "expect": "== 7"}],
              step={"allow_production_server": True})
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr
    drill = project.run("drill", "db", "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    step = json.loads(drill.stdout)["steps"][0]
    assert step["production_server"] is True  # allowed, and said so in the evidence
    assert "on the production server" in step["checks"][1]["detail"]
