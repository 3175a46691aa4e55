"""Fingerprints taken at backup time, in the very state that is backed up, and compared by a
drill on the restored database: the restore is *the* data, not "about" the data. Real
restic, real PostgreSQL servers (production and scratch)."""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Project
from tests.databases import DatabaseServer
from tests.integration.test_streams import script

QUERIES = {
    "orders": "select count(*) from orders",
    "total": "select sum(amount) from orders",
    "digest": "select md5(string_agg(id || ':' || amount, ',' order by id)) from orders",
}


def backup_records(project: Project) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "select * from records where kind='backup' order by seq")]


def write_plans(project: Project, steps: dict[str, list[dict[str, Any]]],
                extra: dict[str, Any]) -> None:
    plans = project.root / "recovery_plans"
    plans.mkdir(exist_ok=True)
    for name, checks in steps.items():
        (plans / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "objectives": {"rpo": "1h", "rto": "15m"},
            "steps": [{"target": "db", **extra, "checks": checks}]}))


def test_postgres_fingerprints_are_taken_in_the_dumped_snapshot(
        project: Project, postgres: DatabaseServer, postgres_scratch: DatabaseServer) -> None:
    """A row is committed after the fingerprints were taken and before pg_dump starts (a
    pg_dump wrapper does it, deterministically): the dump is still the fingerprinted state.
    A restore missing one row fails the check."""
    postgres.sql("drop database if exists fpshop with (force)")
    postgres.sql("create database fpshop")
    postgres.sql("create table orders (id serial primary key, amount int not null);"
                 "insert into orders (amount) select g * 3 from generate_series(1, 500) g",
                 "fpshop")
    before = {name: postgres.sql(sql, "fpshop") for name, sql in QUERIES.items()}
    racing = script(project.root / "racing-pg_dump", """\
        psql -X -q -c "insert into orders (amount) values (7777)" >&2 || exit 9
        exec pg_dump "$@"
        """)
    project.env.update({"TARGET_DSN": postgres.dsn("fpshop"),
                        "SCRATCH_DSN": postgres_scratch.dsn("postgres")})
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}},
                         "r2": {"url": str(project.root / "repo2"),
                                "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "postgres", "dsn": {"env": "TARGET_DSN"},
                           "pg_dump_binary": racing, "repositories": ["r", "r2"],
                           "fingerprints": QUERIES}},
    })
    into = {"restore_into": {"postgres": {"dsn": {"env": "SCRATCH_DSN"}}}}
    write_plans(project, {
        "exact": [{"fingerprints": True}],
        "lossy": [{"name": "one row lost",
                   "command": ["psql", "{dsn}", "-Xqc", "delete from orders where id = 17"]},
                  {"fingerprints": True}],
    }, into)
    write_plans(project, {"exact-r2": [{"fingerprints": True}]},
                {**into, "repository": "r2"})
    assert project.run("validate").returncode == 0, project.run("validate").stderr
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup", "--json")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    # Each repository's pg_dump inserted a row (two now in production), but both dumps
    # are of the fingerprinted snapshot.
    assert postgres.sql("select count(*) from orders", "fpshop") == "502"
    records = backup_records(project)
    assert len(records) == 2
    for record in records:
        taken = json.loads(record["evidence"])["fingerprints"]
        assert {name: item["value"] for name, item in taken.items()} == before
        assert {name: item["sql"] for name, item in taken.items()} == QUERIES

    for plan in ("exact", "exact-r2"):
        drill = project.run("drill", plan, "--json")
        assert drill.returncode == 0, drill.stdout + drill.stderr
        check = json.loads(drill.stdout)["steps"][0]["checks"][-1]
        assert check == {**check, "name": "fingerprints equal to the backup's",
                         "status": "passed"}
        assert "3 fingerprints (digest, orders, total)" in check["detail"]

    lossy = project.run("drill", "lossy", "--json")
    assert lossy.returncode == 1
    check = json.loads(lossy.stdout)["steps"][0]["checks"][-1]
    assert check["status"] == "failed"
    assert f"orders: restored '499', at backup '{before['orders']}'" in check["detail"]
    assert "total: restored" in check["detail"] and "digest: restored" in check["detail"]
    assert postgres.password.encode() not in project.catalog_path.read_bytes()


def test_sqlite_fingerprints_from_the_backed_up_copy(project: Project) -> None:
    db = project.root / "app.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("create table orders (id integer primary key, amount int not null)")
        conn.executemany("insert into orders (amount) values (?)",
                         [(n * 5,) for n in range(1, 301)])
        conn.commit()
    queries = {"orders": "select count(*) from orders",
               "total": "select sum(amount) from orders"}
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "sqlite", "path": str(db), "repositories": ["r"],
                           "fingerprints": queries}},
    })
    lose_a_row = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1] + '/app.sqlite'); "
                  "c.execute('delete from orders where id = 3'); c.commit()")
    write_plans(project, {
        "exact": [{"fingerprints": True}],
        "lossy": [{"command": [sys.executable, "-c", lose_a_row, "{restore_dir}"]},
                  {"fingerprints": True}],
    }, {})
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    with closing(sqlite3.connect(db)) as conn:  # production moves on after the backup
        conn.execute("insert into orders (amount) values (1)")
        conn.commit()
    (record,) = backup_records(project)
    assert json.loads(record["evidence"])["fingerprints"] == {
        "orders": {"sql": queries["orders"], "value": "300"},
        "total": {"sql": queries["total"], "value": str(sum(n * 5 for n in range(1, 301)))}}
    exact = project.run("drill", "exact", "--json")
    assert exact.returncode == 0, exact.stdout + exact.stderr
    lossy = project.run("drill", "lossy", "--json")
    assert lossy.returncode == 1
    detail = json.loads(lossy.stdout)["steps"][0]["checks"][-1]["detail"]
    assert "orders: restored '299', at backup '300'" in detail


def test_fingerprints_check_needs_declared_fingerprints(project: Project) -> None:
    db = project.root / "app.sqlite"
    sqlite3.connect(db).close()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"db": {"kind": "sqlite", "path": str(db), "repositories": ["r"]}},
    })
    write_plans(project, {"p": [{"fingerprints": True}]}, {})
    result = project.run("validate")
    assert result.returncode == 2
    assert "target 'db' declares no fingerprints" in result.stderr
    assert Path(project.root / "recovery_plans" / "p.yaml").name + ":" in result.stderr
