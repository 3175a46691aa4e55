"""``drkit drill --prove-checks``: checks with teeth. After a plan's checks pass, drkit damages
the drill's own restored copy (rows deleted in the scratch database or restored SQLite file,
bytes flipped in a restored file) and the checks must fail; a plan whose checks still pass is
``checks_too_weak``. Production is never touched. Real restic, PostgreSQL (with pgbench
writing during the backup) and MariaDB."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Project
from tests.databases import DatabaseServer
from tests.integration.test_databases import configure
from tests.integration.test_fingerprints import backup_records
from tests.integration.test_streams import script


def local_repository() -> dict[str, Any]:
    return {"password": {"env": "DRKIT_TEST_PASSWORD"}}


def plan(project: Project, name: str, target: str, checks: list[dict[str, Any]],
         **step: Any) -> None:
    plans = project.root / "recovery_plans"
    plans.mkdir(exist_ok=True)
    (plans / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": target, **step, "checks": checks}]}))


def digest(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def drill(project: Project, name: str, expect: int) -> dict[str, Any]:
    result = project.run("drill", name, "--prove-checks", "--json")
    assert result.returncode == expect, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["prove_checks"] is True
    return data


def test_files_checks_must_notice_a_flipped_byte(project: Project) -> None:
    tree = project.root / "data"
    (tree / "docs").mkdir(parents=True)
    for n in range(6):
        (tree / "docs" / f"f{n}.txt").write_text(f"document {n}\n" * 200)
    (tree / "docs" / "f0.txt").chmod(0o444)  # a read-only restored file is damaged as well
    manifest = project.root / "SHA256SUMS"
    manifest.write_text(subprocess.run(["sha256sum", *sorted(p.name for p in
                                                             (tree / "docs").iterdir())],
                                       cwd=tree / "docs", capture_output=True, text=True,
                                       check=True).stdout)
    before = digest(tree)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"), **local_repository()}},
        "targets": {"files": {"kind": "files", "paths": [str(tree)], "repositories": ["r"]}},
    })
    plan(project, "present", "files", [{"files_exist": ["docs/f0.txt", "docs/f5.txt"]}])
    plan(project, "hashed", "files", [
        {"name": "sha256 manifest",
         "command": ["sh", "-c", f"cd docs && sha256sum --strict --quiet -c {manifest}"]}])
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0

    weak = drill(project, "present", expect=1)
    assert weak["status"] == "checks_too_weak"
    proof = weak["steps"][0]["proof"]
    assert proof["detected"] is False
    assert proof["damage"].startswith("flipped 16 byte(s) at offset ")
    assert [c["status"] for c in proof["checks"]] == ["passed"]
    assert "step files (r): checks cannot detect damage" in weak["error"]

    strong = drill(project, "hashed", expect=0)
    assert strong["status"] == "passed"
    proof = strong["steps"][0]["proof"]
    assert proof == {**proof, "detected": True, "failed_checks": ["sha256 manifest"]}
    assert "FAILED" in proof["checks"][0]["output"]["stdout"]
    # The normal checks passed on the intact copy, before the damage.
    assert [c["status"] for c in strong["steps"][0]["checks"]] == ["passed", "passed"]
    assert digest(tree) == before  # production untouched
    assert not any((project.root / "config" / ".drkit" / "drills").iterdir())


def test_sqlite_integrity_alone_is_too_weak_fingerprints_are_not(project: Project) -> None:
    db = project.root / "app.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("create table orders (id integer primary key, amount int not null)")
        conn.execute("create table notes (body text)")  # empty: nothing to delete there
        conn.executemany("insert into orders (amount) values (?)", [(n,) for n in range(1, 51)])
        conn.commit()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"), **local_repository()}},
        "targets": {"db": {"kind": "sqlite", "path": str(db), "repositories": ["r"],
                           "fingerprints": {"orders": "select count(*) from orders"}}},
    })
    plan(project, "integrity", "db", [{"sqlite_integrity": True},
                                      {"sql": "select count(*) from orders",
                                       "expect": ">= 10"}])
    plan(project, "exact", "db", [{"sqlite_integrity": True}, {"fingerprints": True}])
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0

    weak = drill(project, "integrity", expect=1)
    assert weak["status"] == "checks_too_weak"
    assert weak["steps"][0]["proof"]["damage"] == (
        "deleted one row from each of 1 table(s) of the restored app.sqlite: orders")

    strong = drill(project, "exact", expect=0)
    proof = strong["steps"][0]["proof"]
    assert proof["failed_checks"] == ["fingerprints equal to the backup's"]
    assert "orders: restored '49', at backup '50'" in proof["checks"][1]["detail"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (50,)


def test_a_step_without_checks_cannot_prove_anything(project: Project) -> None:
    tree = project.root / "data"
    tree.mkdir()
    (tree / "a").write_text("a")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"), **local_repository()}},
        "targets": {"files": {"kind": "files", "paths": [str(tree)], "repositories": ["r"]}},
    })
    plan(project, "bare", "files", [])
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    assert project.run("drill", "bare").returncode == 0  # without the proof: passed
    weak = drill(project, "bare", expect=1)
    assert weak["status"] == "checks_too_weak"
    assert weak["steps"][0]["proof"]["reason"] == "the step declares no checks"


PGBENCH_FINGERPRINTS = {
    "accounts": "select count(*) from pgbench_accounts",
    "abalance": "select sum(abalance) from pgbench_accounts",
    "bbalance": "select sum(bbalance) from pgbench_branches",
    "tbalance": "select sum(tbalance) from pgbench_tellers",
    "history": "select count(*) from pgbench_history",
    "delta": "select coalesce(sum(delta), 0) from pgbench_history",
}


def wait_for(path: Path, limit: float = 300) -> str:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_pgbench_writing_during_the_backup(project: Project, postgres: DatabaseServer,
                                           postgres_scratch: DatabaseServer) -> None:
    """pgbench commits transactions after the fingerprints were taken and while pg_dump runs
    (the pg_dump wrapper starts it and waits for its first commits): the restored database
    still equals the fingerprints. --prove-checks: one row fewer is detected; a threshold
    check is too weak."""
    postgres.sql("drop database if exists bench with (force)")
    postgres.sql("create database bench")
    pg = {**os.environ, "PGHOST": postgres.host, "PGPORT": str(postgres.port),
          "PGUSER": postgres.user, "PGPASSWORD": postgres.password}
    for argv in (["pgbench", "-i", "-q", "-s", "1", "bench"],
                 ["pgbench", "-n", "-t", "200", "bench"]):  # some history before the backup
        done = subprocess.run(argv, capture_output=True, text=True, env=pg)
        assert done.returncode == 0, done.stderr
    done = project.root / "pgbench.done"
    # The writer lets go of pg_dump's output pipes: drkit kills whatever still holds a
    # finished child's pipes (a setsid escapee) a moment later, which would stop the shell
    # before it writes pgbench.done whenever pgbench outlives pg_dump.
    wrapper = script(project.root / "busy-pg_dump", f"""\
        setsid sh -c 'pgbench -n -c 2 -t 1500 >{project.root}/pgbench.out 2>&1; echo $? >{done}' \\
            </dev/null >/dev/null 2>&1 &
        until [ "$(psql -XAtqc 'select count(*) > 200 from pgbench_history')" = t ]; do
            sleep 0.01
        done
        exec pg_dump "$@"
        """)
    project.env.update({"TARGET_DSN": postgres.dsn("bench"),
                        "SCRATCH_DSN": postgres_scratch.dsn("postgres")})
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"), **local_repository()}},
        "targets": {"db": {"kind": "postgres", "dsn": {"env": "TARGET_DSN"},
                           "pg_dump_binary": wrapper, "repositories": ["r"],
                           "fingerprints": PGBENCH_FINGERPRINTS}},
    })
    into = {"restore_into": {"postgres": {"dsn": {"env": "SCRATCH_DSN"}}}}
    plan(project, "exact", "db", [
        {"fingerprints": True},
        {"name": "balances add up", "sql": "select (select sum(abalance) from "
         "pgbench_accounts) - (select coalesce(sum(delta), 0) from pgbench_history)",
         "expect": "== 0"}], **into)
    plan(project, "threshold", "db", [
        {"sql": "select count(*) from pgbench_accounts", "expect": ">= 90000"}], **into)
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup", "--json")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert wait_for(done).strip() == "0", (project.root / "pgbench.out").read_text()
    (record,) = backup_records(project)
    taken = {name: item["value"] for name, item in
             json.loads(record["evidence"])["fingerprints"].items()}
    # Taken before pgbench's second run; its 3,000 commits came after, some before pg_dump
    # started (the wrapper waited for them), some while it ran.
    assert taken["history"] == "200"
    assert postgres.sql("select count(*) from pgbench_history", "bench") == "3200"

    exact = drill(project, "exact", expect=0)
    step = exact["steps"][0]
    assert [c["status"] for c in step["checks"]] == ["passed"] * 4
    assert step["proof"]["detected"] is True
    assert step["proof"]["damage"].startswith("deleted one row from each of 4 table(s) of "
                                              "scratch database drkit_drill_exact_")
    assert "accounts: restored '99999', at backup '100000'" in \
        step["proof"]["checks"][0]["detail"]

    weak = drill(project, "threshold", expect=1)
    assert weak["status"] == "checks_too_weak"
    assert postgres.sql("select count(*) from pgbench_accounts", "bench") == "100000"
    assert postgres_scratch.sql("select count(*) from pg_database where datname like "
                                "'drkit_drill%'") == "0"


def test_mariadb_rows_deleted_in_the_scratch_database(project: Project,
                                                     mariadb: DatabaseServer,
                                                     mariadb_scratch: DatabaseServer) -> None:
    mariadb.sql("drop database if exists proof; create database proof")
    mariadb.sql("create table customers (id int primary key);"
                "create table orders (id int primary key, customer int not null,"
                " foreign key (customer) references customers (id));"
                "insert into customers select seq from seq_1_to_20;"
                "insert into orders select seq, 1 + seq % 20 from seq_1_to_300;"
                # A restored trigger could write into another database of the server; this
                # one refuses every DELETE: the damage drops it in the scratch copy first.
                "create trigger guard before delete on customers for each row"
                " signal sqlstate '45000' set message_text = 'a restored trigger ran';",
                "proof")
    configure(project, mariadb, "proof", [
        {"sql": "select count(*) from orders", "expect": "== 300"},
        {"sql": "select count(*) from customers", "expect": "== 20"}], scratch=mariadb_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    data = drill(project, "db", expect=0)
    proof = data["steps"][0]["proof"]
    assert proof["damage"].startswith("deleted one row from each of 2 table(s) of scratch "
                                      "database drkit_drill_db_")
    assert proof["failed_checks"] == ["sql: select count(*) from orders expect == 300",
                                      "sql: select count(*) from customers expect == 20"]
    assert mariadb.sql("select count(*) from orders", "proof") == "300"


def files_target(project: Project, files: dict[str, str]) -> Path:
    tree = project.root / "data"
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"), **local_repository()}},
        "targets": {"files": {"kind": "files", "paths": [str(tree)], "repositories": ["r"]}},
    })
    return tree


def test_a_check_that_times_out_on_the_damaged_copy_proves_nothing(project: Project) -> None:
    """On damaged data this check hangs instead of failing: running out of time is no verdict
    on the data, so the proof is not made (checks_too_weak), not 'detected'."""
    files_target(project, {"a.txt": "alpha\n" * 100})
    (project.root / "SUMS").write_text(subprocess.run(
        ["sha256sum", "a.txt"], cwd=project.root / "data", capture_output=True, text=True,
        check=True).stdout)
    plan(project, "hangs", "files", [
        {"name": "sums or hang", "timeout": "3s",
         "command": ["sh", "-c", f"sha256sum --strict --quiet -c {project.root}/SUMS "
                                 "|| exec sleep 3600"]}])
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    weak = drill(project, "hangs", expect=1)
    assert weak["status"] == "checks_too_weak"
    proof = weak["steps"][0]["proof"]
    assert proof["failed_checks"] == []
    assert proof["checks"][0] == {**proof["checks"][0], "status": "failed", "inconclusive": True}
    assert proof["reason"] == ("sums or hang could not reach a verdict on the damaged copy (an "
                               "error or its time limit), which proves nothing")


def test_only_restored_files_are_damaged_never_what_a_check_wrote(project: Project) -> None:
    """The check writes 30 files of its own into the restored data before verifying the one
    restored file: the damage still lands on the restored file, so the check notices."""
    tree = files_target(project, {"only.txt": "the one restored file\n" * 50})
    (project.root / "SUMS").write_text(subprocess.run(
        ["sha256sum", "only.txt"], cwd=tree, capture_output=True, text=True,
        check=True).stdout)
    plan(project, "scribbles", "files", [
        {"name": "scribble then verify",
         "command": ["sh", "-c", "for n in $(seq 30); do echo cache > cache-$n.bin; done; "
                                 f"sha256sum --strict --quiet -c {project.root}/SUMS"]}])
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    data = drill(project, "scribbles", expect=0)
    assert data["steps"][0]["proof"]["damage"].endswith("of restored file only.txt")


def test_postgres_damage_runs_with_the_tables_triggers_off(
        project: Project, postgres: DatabaseServer, postgres_scratch: DatabaseServer) -> None:
    """A restored trigger could write elsewhere (dblink, a foreign table); here it refuses
    every DELETE. The damage disables it, so the row goes, and the check notices."""
    postgres.sql("drop database if exists guarded with (force)")
    postgres.sql("create database guarded")
    postgres.sql(
        "create table orders (id int primary key);"
        "insert into orders select generate_series(1, 50);"
        "create function no_delete() returns trigger language plpgsql as "
        "$$ begin raise exception 'a restored trigger ran'; end $$;"
        "create trigger guard before delete on orders for each row execute function no_delete()",
        "guarded")
    configure(project, postgres, "guarded", [
        {"sql": "select count(*) from orders", "expect": "== 50"}], scratch=postgres_scratch)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    proof = drill(project, "db", expect=0)["steps"][0]["proof"]
    assert proof["damage"].startswith("deleted one row from each of 1 table(s) of scratch "
                                      "database drkit_drill_db_")
    assert proof["damage"].endswith(": public.orders")
