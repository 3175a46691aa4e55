"""``drkit restore TARGET --to PATH``: the data put back where the operator says, verified
before anything reaches the destination, a non-empty destination refused unless
``--overwrite`` (which moves what it replaces aside), recorded with the actor. Real restic."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import Project
from tests.integration.test_drill_safety import records


def digest(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def files_project(project: Project) -> Path:
    data = project.root / "app"
    (data / "uploads").mkdir(parents=True)
    data.chmod(0o750)
    (data / "config.json").write_text('{"replicas": 3}\n')
    for n in range(5):
        (data / "uploads" / f"scan-{n}.bin").write_bytes(bytes([n]) * 4096)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"app": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    return data


def restore(project: Project, *args: str, expect: int = 0) -> dict[str, Any]:
    result = project.run("restore", *args, "--json")
    assert result.returncode == expect, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout) if result.stdout else {}
    return data


def test_restore_into_a_new_directory_is_the_snapshot(project: Project) -> None:
    data = files_project(project)
    before = digest(data)
    (data / "config.json").write_text("lost\n")  # production changes after the backup
    out = restore(project, "app", "--to", str(project.root / "back"))
    assert out["status"] == "succeeded"
    assert digest(project.root / "back") == before
    # The new directory has the restored directory's own mode.
    assert stat.S_IMODE((project.root / "back").stat().st_mode) == 0o750
    assert out["placed"] == ["config.json", "uploads"]
    assert [c["status"] for c in out["checks"]] == ["passed"]
    (record,) = records(project, "restore")
    assert record["status"] == "succeeded" and record["target"] == "app"
    evidence = json.loads(record["evidence"])
    assert evidence["actor"] == pwd.getpwuid(os.geteuid()).pw_name
    assert evidence["destination"] == str(project.root / "back")
    assert [p.name for p in project.root.iterdir() if "drkit-restore" in p.name] == []


def test_non_empty_destination_is_refused_untouched(project: Project) -> None:
    files_project(project)
    dest = project.root / "busy"
    dest.mkdir()
    (dest / "config.json").write_text("production's own\n")
    result = project.run("restore", "app", "--to", str(dest))
    assert result.returncode == 2
    assert f"drkit: error: {dest} is not empty: nothing restored" in result.stderr
    assert [p.name for p in dest.iterdir()] == ["config.json"]
    assert (dest / "config.json").read_text() == "production's own\n"
    assert records(project, "restore") == []  # a bad request: nothing ran


def test_overwrite_moves_what_it_replaces_aside(project: Project) -> None:
    data = files_project(project)
    before = digest(data)
    dest = project.root / "prod"
    dest.mkdir()
    (dest / "config.json").write_text("damaged\n")
    (dest / "notes.txt").write_text("not in the snapshot\n")
    out = restore(project, "app", "--to", str(dest), "--overwrite")
    aside = out["moved_aside"]["config.json"]
    assert aside.startswith("config.json.before-restore-")
    assert (dest / aside).read_text() == "damaged\n"
    assert (dest / "notes.txt").read_text() == "not in the snapshot\n"
    restored = {k: v for k, v in digest(dest).items() if k in before}
    assert restored == before


def test_at_picks_the_backup_completed_by_then(project: Project) -> None:
    data = files_project(project)
    first = digest(data)
    (first_record,) = records(project, "backup")
    (data / "config.json").write_text('{"replicas": 5}\n')
    assert project.run("backup").returncode == 0
    at = first_record["finished_at"].replace(" ", "T") + "Z"
    out = restore(project, "app", "--to", str(project.root / "old"), "--at", at)
    assert digest(project.root / "old") == first
    assert f"record {first_record['id']}" in out["chosen_by"]
    latest = restore(project, "app", "--to", str(project.root / "new"))
    assert (project.root / "new" / "config.json").read_text() == '{"replicas": 5}\n'
    assert latest["snapshot_id"] != out["snapshot_id"]


def test_sqlite_restore_checks_the_fingerprints(project: Project) -> None:
    db = project.root / "shop.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("create table orders (id integer primary key, amount int)")
        conn.executemany("insert into orders (amount) values (?)", [(n,) for n in range(40)])
        conn.commit()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"shop": {"kind": "sqlite", "path": str(db), "repositories": ["r"],
                             "fingerprints": {"orders": "select count(*) from orders"}}},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    out = restore(project, "shop", "--to", str(project.root / "back"))
    assert [c["name"] for c in out["checks"]] == ["restored tree matches snapshot listing",
                                                  "fingerprints equal to the backup's"]
    with closing(sqlite3.connect(project.root / "back" / "shop.sqlite")) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (40,)


def test_no_good_backup_fails_loudly_and_is_recorded(project: Project) -> None:
    data = project.root / "app"
    data.mkdir()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"app": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
    })
    assert project.run("repo", "init").returncode == 0
    result = project.run("restore", "app", "--to", str(project.root / "back"))
    assert result.returncode == 1
    assert "no good backup of target 'app'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "back").exists()
    (record,) = records(project, "restore")
    assert record["status"] == "failed"


def test_sqlite_back_into_place_moves_the_stale_wal_aside(project: Project) -> None:
    """The live database has a WAL holding changes made after the backup (its connection is
    still open). Restoring back into place must not leave that WAL beside the restored file:
    SQLite would replay it into the restored copy."""
    prod = project.root / "prod"
    prod.mkdir()
    db = prod / "shop.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("pragma journal_mode=wal")
        conn.execute("create table orders (id integer primary key)")
        conn.executemany("insert into orders values (?)", [(n,) for n in range(200)])
        conn.commit()
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"shop": {"kind": "sqlite", "path": str(db), "repositories": ["r"]}},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    live = sqlite3.connect(db)
    try:
        live.execute("pragma wal_autocheckpoint=0")
        live.executemany("insert into orders values (?)", [(n,) for n in range(200, 350)])
        live.commit()
        assert (prod / "shop.sqlite-wal").stat().st_size > 0
        out = restore(project, "shop", "--to", str(prod), "--overwrite")
    finally:
        live.close()
    assert set(out["moved_aside"]) == {"shop.sqlite", "shop.sqlite-wal", "shop.sqlite-shm"}
    assert not (prod / "shop.sqlite-wal").exists()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (200,)


def test_refused_destinations_are_bad_requests(project: Project) -> None:
    files_project(project)
    open_to_all = project.root / "shared"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    state = project.root / "config" / ".drkit"
    for args, message in (
            (["--to", str(open_to_all)], f"refusing to restore into {open_to_all}: anyone "
                                         "can write to it"),
            (["--to", str(state / "x")], f"refusing to restore into {state / 'x'}: it "
                                         f"overlaps drkit's state directory {state}"),
            (["--to", str(project.root / "repo"), "--overwrite"],
             f"it overlaps repository 'r' {project.root / 'repo'}"),
            (["--to", str(project.root / "new"), "--snapshot", "latest"],
             "--snapshot takes a snapshot id (or a prefix of one), not 'latest'")):
        result = project.run("restore", "app", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, result.stderr
    assert records(project, "restore") == []
    assert not (project.root / "new").exists()


def test_actor_is_the_os_user_not_the_environment(project: Project) -> None:
    files_project(project)
    result = project.run("restore", "app", "--to", str(project.root / "back"), "--json",
                         extra_env={"LOGNAME": "mallory", "USER": "mallory"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor"] == pwd.getpwuid(os.geteuid()).pw_name


def test_ls_browses_the_catalogs_snapshot_without_restoring(project: Project) -> None:
    data = files_project(project)
    listed = project.run_json("ls", "app", "uploads")
    paths = [e["path"] for e in listed["entries"]]
    assert paths == [f"{data}/uploads", *(f"{data}/uploads/scan-{n}.bin" for n in range(5))]
    assert listed["entries"][1] == {**listed["entries"][1], "type": "file", "size": 4096}
    assert listed["chosen_by"].startswith("the catalog's newest good backup, record ")
    text = project.run("ls", "app", "config.json")
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].endswith(f"{data}/config.json")
    missing = project.run("ls", "app", "nothere")
    assert missing.returncode == 2
    assert f"{data}/nothere is not in snapshot" in missing.stderr
    assert records(project, "restore") == []  # read-only: nothing recorded


def test_include_puts_back_one_lost_path_and_nothing_else(project: Project) -> None:
    """A deleted file restored into production with --include: only that path placed (its
    directory kept as it is, the rest untouched), the tree compared for that path alone; a
    path already there needs --overwrite; a pattern or an absent path is refused."""
    data = files_project(project)
    lost = (data / "uploads" / "scan-3.bin").read_bytes()
    (data / "uploads" / "scan-3.bin").unlink()
    (data / "uploads" / "new-since.bin").write_bytes(b"kept")
    (data / "config.json").write_text("changed since\n")
    out = restore(project, "app", "--to", str(data), "--include", "uploads/scan-3.bin")
    assert out["placed"] == ["uploads/scan-3.bin"] and out["moved_aside"] == {}
    assert out["included"] == [f"{data}/uploads/scan-3.bin"]
    assert "entries, 1 file, 4.0 KiB match the snapshot" in out["checks"][0]["detail"]
    assert (data / "uploads" / "scan-3.bin").read_bytes() == lost
    assert (data / "uploads" / "new-since.bin").read_bytes() == b"kept"
    assert (data / "config.json").read_text() == "changed since\n"
    assert sorted(p.name for p in data.iterdir()) == ["config.json", "uploads"]
    # There now: refused without --overwrite, moved aside with it (its directory stays).
    refused = project.run("restore", "app", "--to", str(data), "--include", "uploads/scan-3.bin")
    assert refused.returncode == 2
    assert "uploads/scan-3.bin exists there: nothing restored" in refused.stderr
    out = restore(project, "app", "--to", str(data), "--include",
                  f"{data}/uploads/scan-3.bin", "--overwrite")
    (aside,) = out["moved_aside"].values()
    assert aside.startswith("uploads/scan-3.bin.before-restore-")
    assert (data / "uploads" / "new-since.bin").exists()
    # The same path twice, or a path and one inside it: restored once.
    (data / "uploads" / "scan-3.bin").unlink()
    out = restore(project, "app", "--to", str(data), "--include", "uploads/scan-3.bin",
                  "--include", f"{data}/uploads/scan-3.bin")
    assert out["placed"] == ["uploads/scan-3.bin"]
    for bad in ("uploads/*.bin", "../etc", ".", str(data), str(data.parent)):
        assert project.run("restore", "app", "--to", str(project.root / "x"),
                           "--include", bad).returncode == 2
    missing = project.run("restore", "app", "--to", str(project.root / "x"), "--include",
                          "uploads/never.bin")
    assert missing.returncode == 1 and "not in snapshot" in missing.stderr
    assert not (project.root / "x").exists()
