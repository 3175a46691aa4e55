"""Database targets put back into their server: ``drkit restore --into-dsn`` and ``drkit
recover`` with ``recover_to: {dsn: ...}``. Real restic, real PostgreSQL and MariaDB.

PostgreSQL: loaded into a staging database, checked against the fingerprints, swapped in
under the database's name; the database replaced is renamed aside, never dropped, and its
sessions are ended. MySQL/MariaDB: only into a missing or empty database."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.conftest import Project
from tests.databases import DatabaseServer
from tests.integration.test_drill_safety import records
from tests.integration.test_recover import digest
from tests.integration.test_streams import script

QUERIES = {
    "orders": "select count(*) from orders",
    "digest": "select md5(string_agg(id || ':' || amount, ',' order by id)) from orders",
}


def fingerprint(server: DatabaseServer, database: str) -> dict[str, str]:
    return {name: server.sql(sql, database) for name, sql in QUERIES.items()}


def databases(server: DatabaseServer) -> list[str]:
    return server.sql("select datname from pg_database order by 1").splitlines()


def shop(project: Project, postgres: DatabaseServer, name: str) -> tuple[Path, dict[str, str]]:
    """Production: an app directory and PostgreSQL database ``name`` (owned by its own
    role, with a grant), backed up; plan ``svc`` recovers both into place."""
    postgres.sql(f"drop database if exists {name} with (force)")
    postgres.sql("do $$ begin if not exists (select from pg_roles where rolname = 'shopapp') "
                 "then create role shopapp login; end if; end $$")
    postgres.sql(f"create database {name} owner shopapp")
    postgres.sql("create table orders (id serial primary key, amount int not null);"
                 "insert into orders (amount) select g * 7 from generate_series(1, 300) g;"
                 "alter table orders owner to shopapp; grant select on orders to public",
                 name)
    app = project.root / "srv" / "app"
    (app / "uploads").mkdir(parents=True)
    (app / "config.json").write_text('{"db": "orders"}\n')
    (app / "uploads" / "a.bin").write_bytes(b"a" * 4096)
    project.env["ORDERS_DSN"] = postgres.dsn(name)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "app": {"kind": "files", "paths": [str(app)], "repositories": ["r"]},
            "orders": {"kind": "postgres", "dsn": {"env": "ORDERS_DSN"},
                       "repositories": ["r"], "fingerprints": QUERIES}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "svc.yaml").write_text(yaml.safe_dump({
        "name": "svc", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "orders", "recover_to": {"dsn": {"env": "ORDERS_DSN"}}},
                  {"target": "app", "recover_to": {"path": str(app)}}]}))
    assert project.run("validate").returncode == 0, project.run("validate").stderr
    assert project.run("repo", "init").returncode == 0
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr
    return app, fingerprint(postgres, name)


def damage(app: Path, postgres: DatabaseServer, name: str) -> None:
    (app / "config.json").write_text("encrypted by ransomware\n")
    postgres.sql("delete from orders where id <= 200", name)


def connected_session(postgres: DatabaseServer, name: str) -> tuple[subprocess.Popen[bytes],
                                                                     str]:
    """An application's session on database ``name`` (a psql waiting on its stdin) and its
    server process id, once the server shows it."""
    env = {**os.environ, "PGPASSWORD": postgres.password}
    holder = subprocess.Popen(["psql", "-X", "-h", postgres.host, "-p", str(postgres.port),
                               "-U", postgres.user, "-d", name],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while not (pid := postgres.sql(f"select pid from pg_stat_activity where datname = "
                                   f"'{name}'")):
        assert holder.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return holder, pid


def database_level(postgres: DatabaseServer, name: str) -> dict[str, str]:
    """What a database has at the database level: owner, limit, grants, settings, collation."""
    where = f"datname = '{name}'"
    return {
        "owner": postgres.sql(f"select pg_get_userbyid(datdba) from pg_database where {where}"),
        "limit": postgres.sql(f"select datconnlimit from pg_database where {where}"),
        "acl": postgres.sql(f"select datacl from pg_database where {where}"),
        "collate": postgres.sql(f"select datcollate || datctype from pg_database where {where}"),
        "settings": postgres.sql(
            "select string_agg(coalesce(r.rolname, '*') || ':' || array_to_string(setconfig, "
            "';'), ' ' order by 1) from pg_db_role_setting s join pg_database d on d.oid = "
            f"s.setdatabase left join pg_roles r on r.oid = s.setrole where d.{where}")}


def test_recover_replaces_a_damaged_database_keeps_it_aside_and_ends_its_sessions(
        project: Project, postgres: DatabaseServer) -> None:
    app, good = shop(project, postgres, "rshop")
    # Database-level properties production has, which the restored database must keep.
    postgres.sql("alter database rshop connection limit 7; "
                 "revoke all on database rshop from public; "
                 "grant connect, temporary on database rshop to shopapp; "
                 "alter database rshop set search_path = \"$user\", public, app; "
                 "alter database rshop set application_name = 'orders api'; "
                 "alter role shopapp in database rshop set work_mem = '8MB'")
    level = database_level(postgres, "rshop")
    good_files = digest(app)
    damage(app, postgres, "rshop")
    holder, backend = connected_session(postgres, "rshop")
    try:
        damaged, damaged_files, names = fingerprint(postgres, "rshop"), digest(app), \
            databases(postgres)
        dry = project.run("recover", "svc", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "replaces database rshop (" in dry.stdout
        assert "1 session(s) connected, to be ended" in dry.stdout
        assert "replaces file config.json" in dry.stdout
        # The dry run changed nothing: files, the database, the databases on the server.
        assert (fingerprint(postgres, "rshop"), digest(app), databases(postgres)) == \
            (damaged, damaged_files, names)
        assert holder.poll() is None

        result = project.run("recover", "svc", "--confirm", "svc", "--reason", "INC-7",
                             "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        # The application's session was ended (its server process is gone).
        assert postgres.sql(f"select count(*) from pg_stat_activity where pid = {backend}") \
            == "0"
    finally:
        holder.kill()
    out = json.loads(result.stdout)
    assert out["status"] == "succeeded"
    assert fingerprint(postgres, "rshop") == good
    assert {k: v for k, v in digest(app).items() if "before-restore" not in k} == good_files
    # Ownership, grants, limit and settings as production had them.
    assert database_level(postgres, "rshop") == level
    assert postgres.sql("select tableowner from pg_tables where tablename = 'orders'",
                        "rshop") == "shopapp"
    # The damaged database is kept aside, closed to connections, with its damage.
    orders_step = out["steps"][0]
    (aside,) = [n for n in databases(postgres) if n.startswith("rshop_before_restore_")]
    assert postgres.sql(f"select datallowconn from pg_database where datname = '{aside}'") \
        == "f"
    postgres.sql(f"alter database {aside} allow_connections true")
    assert fingerprint(postgres, aside) == damaged
    assert not [n for n in databases(postgres) if n.startswith("drkit_restore_")]
    # The safety copy holds the damaged database too (a dump, restic-dumped back out).
    dump = subprocess.run([project.restic_binary, "dump", orders_step["safety_snapshot"],
                           "/rshop.dump"], capture_output=True,
                          env={**os.environ, "RESTIC_REPOSITORY": str(project.root / "repo"),
                               "RESTIC_PASSWORD": project.env["DRKIT_TEST_PASSWORD"]})
    assert dump.returncode == 0, dump.stderr
    listed = subprocess.run(["pg_restore", "-f", "-", "--data-only", "-t", "orders"],
                            input=dump.stdout, capture_output=True)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(b"\n") > 100  # COPY of the rows that were left: 100
    assert b"\n201\t1407\n" in listed.stdout and b"\n200\t1400\n" not in listed.stdout
    # One record says who and why; the restore's record names what was moved aside.
    (record,) = records(project, "recover")
    evidence = json.loads(record["evidence"])
    assert evidence["reason"] == "INC-7" and evidence["actor"]
    restore_records = records(project, "restore")
    orders_restore = json.loads(restore_records[0]["evidence"])
    assert orders_restore["moved_aside"] == {"rshop": aside}
    assert any(c["name"] == "fingerprints equal to the backup's" and c["status"] == "passed"
               for c in orders_restore["checks"])
    assert any(c["name"] == "sessions ended before the swap" for c in orders_restore["checks"])
    assert postgres.password not in json.dumps([dict(r) for r in records(project, "restore")])


def test_recover_brings_back_a_dropped_database_and_a_damaged_directory(
        project: Project, postgres: DatabaseServer) -> None:
    app, good = shop(project, postgres, "dshop")
    good_files = digest(app)
    damage(app, postgres, "dshop")
    postgres.sql("drop database dshop with (force)")
    dry = project.run("recover", "svc", "--dry-run")
    assert "adds database dshop" in dry.stdout, dry.stdout + dry.stderr
    result = project.run("recover", "svc", "--confirm", "svc", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fingerprint(postgres, "dshop") == good
    assert {k: v for k, v in digest(app).items() if "before-restore" not in k} == good_files
    out = json.loads(result.stdout)
    assert out["steps"][0]["safety_snapshot"] is None  # nothing was there to keep
    assert out["steps"][1]["safety_snapshot"]
    assert not [n for n in databases(postgres) if n.startswith(("dshop_", "drkit_"))]


def test_restore_into_dsn_new_database_and_refusals(
        project: Project, postgres: DatabaseServer, mariadb: DatabaseServer) -> None:
    _app, good = shop(project, postgres, "ishop")
    project.env["COPY_DSN"] = postgres.dsn("ishop_copy")
    postgres.sql("drop database if exists ishop_copy with (force)")
    out = project.run_json("restore", "orders", "--into-dsn", "env:COPY_DSN")
    assert out["status"] == "succeeded" and out["placed"] == ["database ishop_copy"]
    assert fingerprint(postgres, "ishop_copy") == good
    # Not empty: refused untouched, nothing recorded.
    postgres.sql("delete from orders where id = 5", "ishop_copy")
    before, count = fingerprint(postgres, "ishop_copy"), len(records(project, "restore"))
    refused = project.run("restore", "orders", "--into-dsn", "env:COPY_DSN")
    assert refused.returncode == 2
    assert "database ishop_copy on drkit@127.0.0.1" in refused.stderr
    assert "is not empty: nothing restored" in refused.stderr
    assert fingerprint(postgres, "ishop_copy") == before
    assert len(records(project, "restore")) == count
    # A password on the command line is refused, and never echoed.
    leaked = project.run("restore", "orders", "--into-dsn", postgres.dsn("x"))
    assert leaked.returncode == 2 and "visible to every local user" in leaked.stderr
    assert postgres.password not in leaked.stderr + leaked.stdout
    # A files target has no database; a server that is down is a recorded failure.
    assert project.run("restore", "app", "--into-dsn", "env:COPY_DSN").returncode == 2
    project.env["DEAD_DSN"] = "postgresql://u:secret-pw-9@127.0.0.1:1/x"
    dead = project.run("restore", "orders", "--into-dsn", "env:DEAD_DSN")
    assert dead.returncode == 1 and "cannot reach u@127.0.0.1:1/x" in dead.stderr
    assert records(project, "restore")[-1]["status"] == "failed"
    assert "secret-pw-9" not in dead.stderr + json.dumps(records(project, "restore"))

    # MySQL/MariaDB: a new database is created and loaded; one that holds anything is
    # refused even with --overwrite (no RENAME DATABASE; drkit never drops one).
    mariadb.sql("drop database if exists mshop; create database mshop; "
                "create table mshop.items (id int primary key, name text); "
                "insert into mshop.items values (1, 'one'), (2, 'two')")
    project.env["SHOP_DSN"] = mariadb.dsn("mshop")
    project.env["MCOPY_DSN"] = mariadb.dsn("mshop_copy")
    mariadb.sql("drop database if exists mshop_copy")
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["mshop"] = {"kind": "mysql", "dsn": {"env": "SHOP_DSN"},
                                  "repositories": ["r"]}
    project.config_path.write_text(yaml.safe_dump(config))
    assert project.run("backup", "mshop").returncode == 0
    out = project.run_json("restore", "mshop", "--into-dsn", "env:MCOPY_DSN")
    assert out["status"] == "succeeded"
    assert mariadb.sql("select group_concat(name order by id) from mshop_copy.items") == \
        "one,two"
    refused = project.run("restore", "mshop", "--into-dsn", "env:SHOP_DSN", "--overwrite")
    assert refused.returncode == 2 and "cannot rename a database" in refused.stderr
    assert mariadb.sql("select count(*) from mshop.items") == "2"


def test_a_restore_killed_during_its_load_leaves_nothing_after_the_next_command(
        project: Project, postgres: DatabaseServer) -> None:
    """kill -9 while pg_restore loads the staging database (a pg_restore wrapper waits on a
    file): production is untouched, and the next drkit command drops the staging database,
    removes the sandbox and records the clean-up."""
    _app, good = shop(project, postgres, "kshop")
    with killed_while_loading(project, "env:ORDERS_DSN", "--overwrite"):
        staging = [n for n in databases(postgres) if n.startswith("drkit_restore_")]
        assert len(staging) == 1
    assert fingerprint(postgres, "kshop") == good
    project.run("status")  # any command that opens the catalog sweeps
    assert not [n for n in databases(postgres) if n.startswith("drkit_restore_")]
    cleanup = records(project, "cleanup")
    assert cleanup and json.loads(cleanup[-1]["evidence"])["scratch_databases_dropped"] == \
        staging
    assert records(project, "restore")[-1]["status"] == "interrupted"


@contextlib.contextmanager
def killed_while_loading(project: Project, dsn: str, *extra: str) -> Iterator[None]:
    """`drkit restore orders --into-dsn DSN` stopped inside pg_restore (a wrapper waits on a
    file); the body runs there, then drkit is killed with -9 and the wrapper let go."""
    gate = project.root / "gate"
    bindir = project.root / "bin"
    bindir.mkdir()
    real = subprocess.run(["sh", "-c", "command -v pg_restore"], capture_output=True,
                          text=True).stdout.strip()
    wrapper = script(bindir / "pg_restore", f"""\
        touch {gate}.reached
        while [ ! -e {gate}.open ]; do sleep 0.05; done
        exec {real} "$@"
        """)
    assert wrapper.endswith("pg_restore")
    env = {**os.environ, **project.env, "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([*project_cli(project), "restore", "orders", "--into-dsn", dsn,
                             *extra], env=env, cwd=project.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{gate}.reached").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
        Path(f"{gate}.open").touch()


def project_cli(project: Project) -> list[str]:
    import sys

    return [sys.executable, "-m", "drkit", "--config", str(project.config_path)]



def test_a_long_unicode_name_is_replaced_twice_and_each_aside_is_where_the_record_says(
        project: Project, postgres: DatabaseServer) -> None:
    """PostgreSQL cuts names at 63 bytes without a word: the aside name is cut by drkit, in
    bytes, with a random part, so it is exactly what the record says and never collides."""
    name = "α" * 30  # 60 bytes
    postgres.sql(f'drop database if exists "{name}" with (force)')
    postgres.sql(f'create database "{name}"')
    postgres.sql("create table t (id int); insert into t values (1), (2)", name)
    project.env["LONG_DSN"] = postgres.dsn(name)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"long": {"kind": "postgres", "dsn": {"env": "LONG_DSN"},
                             "repositories": ["r"]}}})
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    asides = []
    for _ in range(2):
        out = project.run_json("restore", "long", "--into-dsn", "env:LONG_DSN", "--overwrite")
        asides.append(out["moved_aside"][name])
    listed = databases(postgres)
    assert all(aside in listed for aside in asides) and asides[0] != asides[1]
    assert all(len(aside.encode()) <= 63 for aside in asides)
    assert postgres.sql("select count(*) from t", name) == "2"


def test_restore_into_a_new_database_killed_mid_load_is_swept_and_mysql_quirks(
        project: Project, postgres: DatabaseServer, mariadb: DatabaseServer,
        tmp_path: Path) -> None:
    """The sweep drops a staging database even when the DSN names a database that does
    not exist yet. MySQL: a `~/.my.cnf` cannot redirect the client, a name with a backtick
    is quoted, a database that is not empty is refused by the dry run."""
    _app, good = shop(project, postgres, "nshop")
    project.env["NEW_DSN"] = postgres.dsn("nshop_new")
    postgres.sql("drop database if exists nshop_new with (force)")
    with killed_while_loading(project, "env:NEW_DSN"):
        pass
    assert [n for n in databases(postgres) if n.startswith("drkit_restore_")]
    project.run("status")
    assert not [n for n in databases(postgres) if n.startswith("drkit_restore_")]
    assert "nshop_new" not in databases(postgres)
    assert fingerprint(postgres, "nshop") == good

    # MySQL: the operator's ~/.my.cnf points elsewhere; drkit's clients read only the DSN.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\nport=1\nhost=127.0.0.9\nuser=nobody\n")
    weird = "m`shop"
    mariadb.sql("drop database if exists `m``shop`; drop database if exists msrc; "
                "create database msrc; create table msrc.items (id int primary key); "
                "insert into msrc.items values (1), (2), (3)")
    project.env.update({"MSRC_DSN": mariadb.dsn("msrc"),
                        "WEIRD_DSN": mariadb.dsn("m%60shop")})
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"]["msrc"] = {"kind": "mysql", "dsn": {"env": "MSRC_DSN"},
                                 "repositories": ["r"]}
    project.config_path.write_text(yaml.safe_dump(config))
    assert project.run("backup", "msrc", extra_env={"HOME": str(home)}).returncode == 0
    out = project.run("restore", "msrc", "--into-dsn", "env:WEIRD_DSN", "--json",
                      extra_env={"HOME": str(home)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert mariadb.sql(f"select count(*) from `{weird.replace('`', '``')}`.items") == "3"
    # The dry run of a recovery into a MySQL database that is not empty says it would stop.
    plans = project.root / "recovery_plans"
    (plans / "m.yaml").write_text(yaml.safe_dump({
        "name": "m", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "msrc", "recover_to": {"dsn": {"env": "MSRC_DSN"}}}]}))
    dry = project.run("recover", "m", "--dry-run")
    assert dry.returncode == 1
    assert "msrc: database msrc on drkit@127.0.0.1" in dry.stdout
    assert "cannot rename a database" in dry.stderr
