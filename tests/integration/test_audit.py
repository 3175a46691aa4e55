"""`drkit audit verify` finds an edited, a deleted, an out-of-order and a truncated record."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing
from datetime import datetime, timedelta

import pytest

from drkit.catalog.chain import record_hash
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import NewRecord, open_catalog
from tests.conftest import Project


@pytest.fixture
def audited(project: Project) -> Project:
    """A project whose catalog holds real backup records and a few hundred more."""
    data = project.root / "data"
    data.mkdir()
    (data / "f").write_text("x")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
    })
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    catalog = open_catalog(f"sqlite:///{project.catalog_path}")
    now = utcnow()
    for index in range(300):
        catalog.append(NewRecord(kind="backup", status="succeeded", target="t", repository="r",
                                 started_at=now + timedelta(seconds=index),
                                 finished_at=now + timedelta(seconds=index + 1),
                                 snapshot_id=f"{index:08x}", evidence={"n": index}))
    return project


def tamper(project: Project, sql: str) -> None:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.execute(sql)
        db.commit()


def verify(project: Project) -> tuple[int, dict[str, object], str]:
    result: subprocess.CompletedProcess[str] = project.run("audit", "verify", "--json")
    return result.returncode, json.loads(result.stdout), result.stderr


def test_untouched_catalog_verifies(audited: Project) -> None:
    code, report, _ = verify(audited)
    with closing(sqlite3.connect(audited.catalog_path)) as db:
        (last,) = db.execute("select hash from records order by seq desc limit 1").fetchone()
        (count,) = db.execute("select count(*) from records").fetchone()
    # The backup, the config in force when it ran (recorded once), the 300 appended here.
    assert count == 302 + 1
    assert code == 0 and report["intact"] is True and report["records"] == count
    assert report["head_hash"] == last
    text = audited.run("audit", "verify")
    assert text.returncode == 0 and f"{count} records, head {last}" in text.stdout


def test_edited_record_is_named(audited: Project) -> None:
    tamper(audited, "update records set status='failed' where seq=100")
    code, report, stderr = verify(audited)
    assert code == 1
    first = report["first_break"]
    assert isinstance(first, dict)
    assert first["seq"] == 100 and first["problem"] == "edited"
    assert "chain broken at record" in stderr


def test_deleted_record_is_named(audited: Project) -> None:
    tamper(audited, "delete from records where seq=150")
    code, report, _ = verify(audited)
    first = report["first_break"]
    assert code == 1 and isinstance(first, dict)
    assert first["seq"] == 151 and first["problem"] == "deleted"


def test_record_inserted_out_of_order_is_named(audited: Project) -> None:
    # Copy a record into the middle with a fresh sequence number and a recomputed hash over
    # the wrong predecessor: its own hash is consistent, its links are not.
    with closing(sqlite3.connect(audited.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("select * from records where seq=200").fetchone())
        db.execute("update records set seq = -(seq + 1) where seq > 120")  # make room
        db.execute("update records set seq = -seq where seq < 0")
        row.update(seq=121, run_id="forged", prev_hash="f" * 64)
        row.pop("id")
        fields = {**row, "started_at": datetime.fromisoformat(row["started_at"]),
                  "finished_at": datetime.fromisoformat(row["finished_at"])}
        row["hash"] = record_hash(fields)
        db.execute(f"insert into records ({', '.join(row)}) values "
                   f"({', '.join('?' for _ in row)})", list(row.values()))
        db.commit()
    code, report, _ = verify(audited)
    first = report["first_break"]
    assert code == 1 and isinstance(first, dict)
    assert first["seq"] == 121 and first["problem"] == "relinked"


def test_truncated_tail_is_named(audited: Project) -> None:
    tamper(audited, "delete from records where seq > 290")
    code, report, _ = verify(audited)
    first = report["first_break"]
    assert code == 1 and isinstance(first, dict)
    assert first["problem"] == "truncated" and first["seq"] is None
