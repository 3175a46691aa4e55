"""The Prefect backup flow and the CLI at their seams: one prepared copy for several
repositories (SQLite under a writer, MariaDB), and restic's storage killed mid-stream (a
transient failure the flow retries, with no lock left behind)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from drkit.locals3 import local_s3
from tests.conftest import Project
from tests.databases import DatabaseServer
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def records(project: Project, kind: str) -> list[dict[str, Any]]:
    if not project.catalog_path.exists():
        return []
    with closing(sqlite3.connect(project.catalog_path, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from records where kind=? order by seq",
                                            (kind,))]


def content(project: Project, repo: str, snapshot: str, path: str) -> str:
    """SHA-256 of one file of a snapshot, read back with bare restic."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(project.root / repo),
           "RESTIC_PASSWORD": project.env["DRKIT_TEST_PASSWORD"]}
    dumped = subprocess.run([project.restic_binary, "dump", snapshot, path], capture_output=True,
                            timeout=300, env=env)
    assert dumped.returncode == 0, dumped.stderr
    return hashlib.sha256(dumped.stdout).hexdigest()


def newest(project: Project, repo: str, target: str) -> str:
    listed = project.restic(str(project.root / repo), "snapshots", "--json", "--tag",
                            f"drkit-target={target}")
    return str(json.loads(listed.stdout)[-1]["id"])


def test_one_prepared_copy_for_every_repository(prefect_harness: None, env: Project,
                                                mariadb: DatabaseServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite and a MariaDB target with two repositories each, through the CLI and through
    the Prefect flow: both repositories hold the same prepared copy (a writer keeps changing
    the SQLite database, so two preparations would differ)."""
    from drkit.flows.flows import backup_flow

    project = env
    db_path = project.root / "app.sqlite"
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("pragma journal_mode=wal")
        db.execute("create table events (id integer primary key, body text)")
        db.executemany("insert into events (body) values (?)", [("x" * 200,)] * 5000)
        db.commit()
    mariadb.sql("drop database if exists twocopies; create database twocopies; "
                "create table twocopies.t (id int primary key, v text); "
                "insert into twocopies.t values (1, 'one'), (2, 'two')")
    project.env["MARIA_DSN"] = mariadb.dsn("twocopies")
    monkeypatch.setenv("MARIA_DSN", project.env["MARIA_DSN"])
    repos = {name: {"url": str(project.root / name), "password": {"env": "DRKIT_TEST_PASSWORD"}}
             for name in ("a", "b")}
    project.write_config({
        "repositories": repos,
        "targets": {"lite": {"kind": "sqlite", "path": str(db_path), "repositories": ["a", "b"]},
                    "maria": {"kind": "mysql", "dsn": {"env": "MARIA_DSN"},
                              "repositories": ["a", "b"]}},
    })
    assert project.run("repo", "init").returncode == 0
    stop = threading.Event()

    def writer() -> None:
        with closing(sqlite3.connect(db_path, timeout=30)) as db:
            while not stop.is_set():
                db.execute("insert into events (body) values ('y')")
                db.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        cli = project.run("backup", "--json")
        assert cli.returncode == 0, cli.stderr
        assert len(json.loads(cli.stdout)["runs"]) == 4
        for via in ("cli", "flow"):
            if via == "flow":
                for target in ("lite", "maria"):
                    runs = backup_flow(config=str(project.config_path), target=target)
                    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
            for target, path in (("lite", "/app.sqlite"), ("maria", "/twocopies.sql")):
                in_a = content(project, "a", newest(project, "a", target), path)
                in_b = content(project, "b", newest(project, "b", target), path)
                assert in_a == in_b, (via, target)
    finally:
        stop.set()
        thread.join()
    assert not any((project.root / "config" / ".drkit" / "staging").iterdir())


@pytest.mark.every_restic
def test_storage_killed_mid_stream_is_transient_and_retried(
        prefect_harness: None, env: Project, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 endpoint dies while a command's output streams into restic: the attempt fails
    as "storage unreachable" (transient; not the command's broken pipe), the flow retries
    once the endpoint is back, and no lock of the dead attempt is left in the repository."""
    from drkit.flows.flows import backup_flow

    project = env
    produced, gate = project.root / "produced", project.root / "gate"
    command = (f"head -c 8000000 /dev/urandom; touch {produced}; "
               f"while [ ! -e {gate} ]; do sleep 0.05; done; head -c 8000000 /dev/urandom")
    data = tmp_path / "s3"
    with local_s3(data) as s3:
        port, keys = int(s3.endpoint.rsplit(":", 1)[1]), (s3.access_key, s3.secret_key)
        for name, value in (("AK", s3.access_key), ("SK", s3.secret_key)):
            project.env[name] = value
            monkeypatch.setenv(name, value)
        project.write_config({
            "repositories": {"s3": {"url": s3.restic_url("bucket", "repo"),
                                    "password": {"env": "DRKIT_TEST_PASSWORD"},
                                    "s3": {"access_key": {"env": "AK"},
                                           "secret_key": {"env": "SK"}}}},
            "targets": {"stream": {"kind": "command", "command": ["sh", "-c", command],
                                   "repositories": ["s3"]}},
            "timeouts": {"storage": "3s"},
            "retries": {"attempts": 2, "delays": ["1s"]},
        })
        assert project.run("repo", "init").returncode == 0
    up, done = threading.Event(), threading.Event()

    def storage() -> None:
        with local_s3(data, port=port, keys=keys):
            up.set()
            wait_for(produced.exists, "the command to have produced its first 8 MB", 120)
        gate.touch()  # the endpoint is gone; the command goes on writing
        wait_for(lambda: records(project, "backup"), "the first attempt's record", 300)
        with local_s3(data, port=port, keys=keys):
            done.wait(300)

    thread = threading.Thread(target=storage, daemon=True)
    thread.start()
    up.wait(60)
    try:
        runs = backup_flow(config=str(project.config_path), target="stream")
    finally:
        done.set()
        thread.join(60)
    assert [r["status"] for r in runs] == ["succeeded"]
    first, last = records(project, "backup")
    assert first["status"] == "failed" and last["status"] == "succeeded"
    assert "storage unreachable" in first["error"], first["error"]
    for wrong in ("Broken pipe", "command sh failed", "timed out"):
        assert wrong not in first["error"]
    # No restic lock is left behind in the bucket (both attempts took one).
    locks = data / "bucket" / "repo" / "locks"
    assert [p.name for p in locks.rglob("*") if p.is_file()] == []


def test_a_backup_with_no_repository_left_is_a_bad_request(prefect_harness: None,
                                                           env: Project) -> None:
    from prefect.states import State

    from drkit.flows.flows import backup_flow

    project = env
    data = project.root / "data"
    data.mkdir()
    (data / "a").write_text("a")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
    })
    state: State[Any] = backup_flow(config=str(project.config_path), target="t",
                                    repositories=["offsite"], return_state=True)
    assert state.is_failed()
    assert "backed up to none of ['offsite']" in str(state.message)
    assert records(project, "backup") == []  # nothing ran, nothing recorded
