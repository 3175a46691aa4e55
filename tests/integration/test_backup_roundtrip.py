"""Back up real trees with the real CLI, restore them with bare restic, compare byte for byte."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Project, S3Endpoint
from tests.helpers import wait_for


def make_tree(root: Path) -> None:
    """Nested dirs, unicode names, an empty file, a symlink and a 50 MB file."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (root / "ünïcødé — 日本語").mkdir()
    (root / "ünïcødé — 日本語" / "résumé.txt").write_text("café\n", encoding="utf-8")
    (root / "empty").write_bytes(b"")
    (root / "link-to-deep").symlink_to("a/b/c/deep.txt")
    with open(root / "big.bin", "wb") as handle:
        for _ in range(50):
            handle.write(os.urandom(1024 * 1024))


def assert_same_tree(left: Path, right: Path) -> None:
    """Same names, same types, same bytes, same symlink targets."""
    def listing(base: Path) -> dict[str, str]:
        out = {}
        for path in sorted(base.rglob("*")):
            rel = str(path.relative_to(base))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    assert listing(left) == listing(right)
    for path in left.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert filecmp.cmp(path, right / path.relative_to(left), shallow=False)


def files_config(repository: dict[str, object], paths: list[str]) -> dict[str, object]:
    return {
        "repositories": {"primary": repository},
        "targets": {"tree": {"kind": "files", "paths": paths, "repositories": ["primary"]}},
    }


def restore_latest(project: Project, url: str, into: Path, extra_env: dict[str, str]) -> None:
    result = project.restic(url, "restore", "latest", "--target", str(into), extra_env=extra_env)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_tree_roundtrip_through_s3(project: Project, s3_endpoint: S3Endpoint) -> None:
    source = project.root / "data"
    source.mkdir()
    make_tree(source)
    bucket = f"rt-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    project.env.update(s3_endpoint.env())
    project.write_config(files_config(s3_endpoint.repository(bucket), [str(source)]))

    init = project.run_json("repo", "init")
    assert init["repositories"][0]["status"] == "created"
    assert init["repositories"][0]["bucket_created"] is True  # drkit made it with boto3
    again = project.run_json("repo", "init")["repositories"][0]
    assert again["status"] == "exists" and again["bucket_created"] is False
    wrong = project.run("repo", "init", extra_env={"DRKIT_TEST_PASSWORD": "not-it"})
    assert wrong.returncode == 1 and "wrong repository password" in wrong.stderr
    report = project.run_json("backup")
    (run,) = report["runs"]
    assert run["status"] == "succeeded" and run["snapshot_id"]
    assert run["files_new"] == 4  # deep, résumé, empty, big (restic counts no symlinks)
    assert run["bytes_added"] > 50 * 1024 * 1024 * 0.9

    restored = project.root / "restored"
    aws = {"AWS_ACCESS_KEY_ID": s3_endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_endpoint.secret_key}
    restore_latest(project, s3_endpoint.url(bucket), restored, aws)
    assert_same_tree(source, restored / source.relative_to("/"))

    snapshots = project.run_json("snapshots")
    assert [s["id"] for s in snapshots] and snapshots[0]["target"] == "tree"
    assert snapshots[0]["id"].startswith(run["snapshot_id"])
    assert snapshots[0]["paths"] == [str(source)]


@pytest.mark.every_restic
def test_tree_roundtrip_to_local_path(project: Project) -> None:
    source = project.root / "data"
    source.mkdir()
    make_tree(source)
    repo = project.root / "repo"
    password = {"env": "DRKIT_TEST_PASSWORD"}
    project.write_config(files_config({"url": str(repo), "password": password}, [str(source)]))
    project.run_json("repo", "init")
    (run,) = project.run_json("backup")["runs"]
    assert run["status"] == "succeeded"
    restored = project.root / "restored"
    restore_latest(project, str(repo), restored, {})
    assert_same_tree(source, restored / source.relative_to("/"))

    # A second backup of unchanged data adds (almost) nothing and is a new snapshot.
    (again,) = project.run_json("backup")["runs"]
    assert again["files_new"] == 0 and again["files_changed"] == 0
    assert again["snapshot_id"] != run["snapshot_id"]
    status = project.run_json("status")["targets"][0]
    assert status["target"] == "tree" and status["age_s"] < 60
    assert status["repositories"][0]["last_status"] == "succeeded"


@pytest.mark.every_restic
def test_sqlite_backed_up_while_being_written(project: Project, rclone_endpoint: S3Endpoint
                                              ) -> None:
    db_path = project.root / "app.sqlite"
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("pragma journal_mode=wal")
        db.execute("create table events (id integer primary key, payload blob)")
        db.executemany("insert into events (payload) values (?)",
                       [(os.urandom(512),) for _ in range(5000)])
        db.commit()

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with closing(sqlite3.connect(db_path, timeout=30)) as db:
            while not stop.is_set():
                db.execute("insert into events (payload) values (?)", (os.urandom(512),))
                db.commit()
                written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: written[0] > 100, "the writer to be writing")
        project.env.update(rclone_endpoint.env())
        bucket = f"sq-{time.monotonic_ns() % 10**9}"
        project.write_config({
            "repositories": {"primary": rclone_endpoint.repository(bucket)},
            "targets": {"db": {"kind": "sqlite", "path": str(db_path),
                               "repositories": ["primary"]}},
        })
        project.run_json("repo", "init")
        (run,) = project.run_json("backup")["runs"]
    finally:
        stop.set()
        thread.join()
    assert run["status"] == "succeeded"
    assert written[0] > 0, "the writer never got to write during the test"

    restored = project.root / "restored"
    aws = {"AWS_ACCESS_KEY_ID": rclone_endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": rclone_endpoint.secret_key}
    restore_latest(project, rclone_endpoint.url(bucket), restored, aws)
    copy = restored / "app.sqlite"  # stored under its own name, not the staging path
    assert copy.is_file()
    with closing(sqlite3.connect(copy)) as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        (count,) = db.execute("select count(*) from events").fetchone()
    assert count >= 5000
    # The staging copy is gone after the run.
    assert not any((project.root / "config" / ".drkit" / "staging").glob("*/*"))


@pytest.mark.every_restic
def test_repository_format_2_and_its_compression_setting(project: Project) -> None:
    """New repositories use format version 2; `compression:` is what restic stores with."""
    source = project.root / "data"
    source.mkdir()
    (source / "log.txt").write_text("the same line, over and over\n" * 400_000)  # ~11 MiB
    password = {"env": "DRKIT_TEST_PASSWORD"}
    stored = {}
    for mode in ("off", "max"):
        repo = project.root / f"repo-{mode}"
        project.write_config(files_config({"url": str(repo), "password": password,
                                           "compression": mode}, [str(source)]))
        assert project.run("repo", "init").returncode == 0
        config = json.loads(project.restic(str(repo), "cat", "config").stdout)
        assert config["version"] == 2
        (run,) = project.run_json("backup")["runs"]
        assert run["status"] == "succeeded"
        stats = project.restic(str(repo), "stats", "--mode", "raw-data", "--json")
        stored[mode] = json.loads(stats.stdout)["total_size"]
    assert stored["off"] > 10_000_000 > 1_000_000 > stored["max"]
