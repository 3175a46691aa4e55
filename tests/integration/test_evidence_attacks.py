"""What an insider with the catalog database (and sometimes the signing key) tries next, after
the plain forgery: each attack is named by `drkit audit verify` (exit 1), or refused. A
catalog built through drkit's own API; the CLI is the real one."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import date, timedelta
from typing import Any

import pytest
import yaml

from drkit.catalog.checkpoints import append_anchor, write_checkpoint
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import NewRecord, open_catalog
from drkit.signing import Signer, generate, public_base64, public_bytes
from tests.conftest import Project


@pytest.fixture
def signed(project: Project) -> dict[str, Any]:
    """A config with a signing key and a catalog of 12 records, a checkpoint every 4 (in the
    catalog and the anchor file), built as drkit builds them."""
    private, public = generate()
    key = project.root / "evidence.key"
    key.write_text(private)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "evidence": {"signing_key": {"file": str(key)},
                     "public_key": public_base64(public_bytes(public))}})
    catalog = open_catalog(f"sqlite:///{project.catalog_path}")
    signer = Signer(private)
    anchors = project.catalog_path.parent / "evidence" / "checkpoints.anchors"
    now = utcnow() - timedelta(hours=1)
    for index in range(12):
        catalog.append(NewRecord(kind="drill" if index == 5 else "backup",
                                 status="failed" if index == 5 else "succeeded",
                                 plan="p" if index == 5 else None,
                                 target=None if index == 5 else "t",
                                 started_at=now + timedelta(seconds=index),
                                 finished_at=now + timedelta(seconds=index + 1)))
        if index % 4 == 3:
            anchor = write_checkpoint(catalog, signer, actor="test")
            assert anchor is not None
            append_anchor(anchors, anchor)
    return {"catalog": catalog, "signer": signer, "anchors": anchors, "private": private,
            "public": public_base64(public_bytes(public))}


def verify(project: Project) -> tuple[int, dict[str, Any]]:
    result = project.run("audit", "verify", "--json")
    return result.returncode, json.loads(result.stdout)


def sql(project: Project, *statements: str) -> None:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def kinds(report: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(p["seq"], p["problem"]) for p in report["problems"]}


def test_a_time_rewritten_in_another_form_is_an_edit(project: Project,
                                                     signed: dict[str, Any]) -> None:
    assert verify(project)[0] == 0
    with closing(sqlite3.connect(project.catalog_path)) as db:
        (text,) = db.execute("select finished_at from records where seq = 6").fetchone()
    # The same instant written with an offset (it moves the record in reports' periods).
    moved = (text[:11] + str(int(text[11:13]) + 1).zfill(2) + text[13:19] + "+01:00")
    sql(project, f"update records set finished_at = '{moved}' where seq = 6")
    code, report = verify(project)
    assert code == 1 and (6, "edited") in kinds(report)
    sql(project, f"update records set finished_at = '{text[:10]}\x01{text[11:]}' where seq = 6")
    code, report = verify(project)
    assert code == 1 and (6, "edited") in kinds(report)
    # Behind a NUL: SQLite's GLOB, substr and length stop there, Python reads the offset.
    sql(project, f"update records set finished_at = '{text}' || char(0) || '-12:00' "
                 "where seq = 6")
    code, report = verify(project)
    assert code == 1 and (6, "edited") in kinds(report)


def test_rows_outside_the_chain_and_a_format_1_record_with_new_fields(
        project: Project, signed: dict[str, Any]) -> None:
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("select * from records where seq = 6").fetchone())
    row.pop("id")
    row.update(seq=-1, run_id="forged", hash="a" * 64)
    sql(project, f"insert into records ({', '.join(row)}) values "
                 f"({', '.join(repr(v) if v is not None else 'NULL' for v in row.values())})")
    code, report = verify(project)
    assert code == 1 and (-1, "outside") in kinds(report)
    sql(project, "delete from records where seq = -1",
        "update records set format = 1, actor = 'someone' where seq = 3")
    code, report = verify(project)
    assert code == 1 and (3, "edited") in kinds(report)


def test_a_fake_checkpoint_row_cannot_stop_signing_or_vouch(project: Project,
                                                            signed: dict[str, Any]) -> None:
    """A real old payload copied into a row that claims seq 1,000,000,000 and an anchor:
    the next run still signs (the row's own columns are not trusted), verify names the row,
    and no report takes it for anchored evidence."""
    sql(project, "insert into checkpoints (seq, head_hash, created_at, hostname, key_id, "
                 "payload, signature, anchored) select 1000000000, head_hash, created_at, "
                 "hostname, key_id, payload, signature, 's3://x/y (COMPLIANCE until 2099)' "
                 "from checkpoints order by seq limit 1")
    catalog = signed["catalog"]
    now = utcnow()
    catalog.append(NewRecord(kind="backup", status="succeeded", target="t", started_at=now,
                             finished_at=now))
    assert write_checkpoint(catalog, signed["signer"], actor="test") is not None
    code, report = verify(project)
    assert code == 1 and any(p["problem"] == "checkpoint_row" for p in report["problems"])
    doc = json.loads(project.run("report", "--format", "json", "--output", "-").stdout)
    anchored = next(c for c in doc["controls"] if c["control"] == "evidence_anchored")
    assert anchored["status"] == "non_compliant"


def test_signing_refuses_a_tail_edited_since_the_last_checkpoint(
        project: Project, signed: dict[str, Any]) -> None:
    """A record appended after the last checkpoint, then edited and re-hashed in place (head
    fixed): the next checkpoint is refused, not signed."""
    catalog = signed["catalog"]
    now = utcnow()
    catalog.append(NewRecord(kind="backup", status="failed", target="t", started_at=now,
                             finished_at=now))
    sql(project, "update records set status = 'succeeded' where seq = 13")
    from drkit.errors import DrkitError

    with pytest.raises(DrkitError, match=r"refusing to sign the chain: record 13 \(seq 13\)"):
        write_checkpoint(catalog, signed["signer"], actor="test")


def test_deleting_the_catalogs_checkpoints_from_one_on(project: Project,
                                                       signed: dict[str, Any]) -> None:
    sql(project, "delete from checkpoints where seq >= 8")
    code, report = verify(project)
    assert code == 1
    missing = [p for p in report["problems"] if p["problem"] == "checkpoint_missing"]
    assert {p["seq"] for p in missing} == {8, 12}


def test_a_flood_of_junk_anchors_does_not_hide_the_edited_record(
        project: Project, signed: dict[str, Any]) -> None:
    with open(signed["anchors"], "a") as out:
        out.write("not an anchor\n" * 80)
    sql(project, "update records set status = 'passed' where seq = 6")
    code, report = verify(project)
    assert code == 1
    assert report["first_break"]["seq"] == 6 and report["first_break"]["problem"] == "edited"
    assert report["problem_counts"]["unreadable_anchor"] == 80


def test_an_append_during_verification_is_not_a_cut_chain(
        project: Project, signed: dict[str, Any], monkeypatch: Any) -> None:
    """The head is read before the walk: a record appended while it runs is left to the next
    verification, never called a truncation."""
    from drkit.catalog import walk
    from drkit.catalog.audit import verify_catalog
    from drkit.catalog.store import open_readonly

    class Appending(walk.Walk):
        def parts(self) -> Any:
            now = utcnow()
            signed["catalog"].append(NewRecord(kind="backup", status="succeeded", target="t",
                                               started_at=now, finished_at=now))
            return super().parts()

    monkeypatch.setattr("drkit.catalog.audit.Walk", Appending)
    result = verify_catalog(open_readonly(f"sqlite:///{project.catalog_path}"),
                            public_key=None, anchors=[])
    assert result.intact and result.records == 12, result.problems


@pytest.mark.parametrize("parallel", [False, True], ids=["one walk", "walk on every core"])
def test_a_run_that_ends_during_verification_is_not_a_cut_chain(
        project: Project, signed: dict[str, Any], monkeypatch: Any, parallel: bool) -> None:
    """A run appends records and then its checkpoint (catalog and anchor file) after the head
    was read: the newer checkpoint is checked against the stored hashes, never called a
    truncation; the walk stays within the head it read."""
    from drkit.catalog import walk
    from drkit.catalog.audit import verify_catalog
    from drkit.catalog.checkpoints import read_anchor_file
    from drkit.catalog.store import open_readonly

    if parallel:
        monkeypatch.setattr(walk, "PARALLEL_RECORDS", 5)

    def run_ends() -> None:
        for _ in range(2):
            now = utcnow()
            signed["catalog"].append(NewRecord(kind="backup", status="succeeded", target="t",
                                               started_at=now, finished_at=now))
        anchor = write_checkpoint(signed["catalog"], signed["signer"], actor="test")
        assert anchor is not None
        append_anchor(signed["anchors"], anchor)

    class RunEnds(walk.Walk):  # the head (12 or 13) was read just before
        def __init__(self, *args: Any) -> None:
            run_ends()
            super().__init__(*args)

    if parallel:  # 13 records on two cores: the ranges must end at the head, not past it
        now = utcnow()
        signed["catalog"].append(NewRecord(kind="backup", status="succeeded", target="t",
                                           started_at=now, finished_at=now))
        monkeypatch.setattr(walk.os, "cpu_count", lambda: 2)
    top = 13 if parallel else 12

    monkeypatch.setattr("drkit.catalog.audit.Walk", RunEnds)
    result = verify_catalog(open_readonly(f"sqlite:///{project.catalog_path}"),
                            public_key=signed["public"],
                            anchors=read_anchor_file(signed["anchors"]))
    assert result.intact and result.records == top, result.problems
    assert result.newest_signed_seq == top + 2
    # The records then cut and the head row set back: named.
    sql(project, f"delete from records where seq > {top}",
        f"update chain_head set seq = {top}, hash = (select hash from records where seq = {top})")
    monkeypatch.setattr("drkit.catalog.audit.Walk", walk.Walk)
    code, report = verify(project)
    assert code == 1 and (top + 2, "truncated") in kinds(report)


def test_a_line_that_is_not_text_in_the_anchor_file(project: Project,
                                                     signed: dict[str, Any]) -> None:
    with open(signed["anchors"], "ab") as stream:
        stream.write(b"\xff\xfe\tnot text\n")
    sql(project, "update records set status = 'passed' where seq = 6")
    result = project.run("audit", "verify", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert (6, "edited") in kinds(report)
    assert report["problem_counts"]["unreadable_anchor"] == 1


def test_a_rotated_key_keeps_old_checkpoints_verifiable(project: Project,
                                                        signed: dict[str, Any]) -> None:
    config = yaml.safe_load(project.config_path.read_text())
    old = config["evidence"]["public_key"]
    private, public = generate()
    (project.root / "evidence.key").write_text(private)
    config["evidence"]["public_key"] = public_base64(public_bytes(public))
    project.write_config(config)
    code, report = verify(project)
    assert code == 1 and any(p["problem"] == "other_key" for p in report["problems"])
    config["evidence"]["retired_public_keys"] = [old]
    project.write_config(config)
    assert verify(project)[0] == 0
    # A key that is a point of small order (any signature "verifies") is refused outright.
    config["evidence"]["public_key"] = public_base64((1).to_bytes(32, "little"))
    project.write_config(config)
    refused = project.run("validate")
    assert refused.returncode == 2 and "small order" in refused.stderr


def test_remediation_cannot_be_reopened_or_closed_in_the_past(
        project: Project, signed: dict[str, Any]) -> None:
    (project.root / "recovery_plans").mkdir()
    (project.root / "recovery_plans" / "p.yaml").write_text(yaml.safe_dump({
        "name": "p", "objectives": {"rpo": "1h", "rto": "15m"}, "steps": [{"target": "t"}]}))
    config = yaml.safe_load(project.config_path.read_text())
    config["targets"] = {"t": {"kind": "files", "paths": [str(project.root)],
                               "repositories": ["r"]}}
    project.write_config(config)
    due = (date.today() - timedelta(days=2)).isoformat()
    item = project.run_json("remediation", "add", "p", "--owner", "ops", "--due", due, "fix")
    catalog = open_catalog(f"sqlite:///{project.catalog_path}")
    # An insider appends a second "open" with a later due date, then a close backdated to
    # before the due date; a run then checkpoints them.
    past = utcnow() - timedelta(days=5)
    catalog.append(NewRecord(kind="remediation", status="open", plan="p", started_at=past,
                             finished_at=past, evidence={
                                 "item": item["id"], "owner": "ops", "text": "fix",
                                 "due": (date.today() + timedelta(days=30)).isoformat()}))
    catalog.append(NewRecord(kind="remediation", status="closed", plan="p", started_at=past,
                             finished_at=past, evidence={"item": item["id"], "note": "x"}))
    report = project.run_json("report", "--format", "json", "--output", "-")
    (row,) = report["summary"]["remediations"]
    assert row["due"] == due  # the first open stands
    late = next(c for c in report["controls"] if c["control"] == "remediation_closed_on_time")
    assert late["status"] == "non_compliant"  # closed no earlier than the last checkpoint


def test_the_catalog_password_never_enters_the_config_record(project: Project,
                                                             postgres: Any) -> None:
    import uuid

    name = f"evidence_{uuid.uuid4().hex[:10]}"
    postgres.sql(f"create database {name}")
    project.write_config({
        "catalog": postgres.dsn(name).replace("postgresql://", "postgresql+psycopg://"),
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}}})
    assert project.run("repo", "init").returncode == 0
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres.dsn(name).replace("postgresql://",
                                                      "postgresql+psycopg://"))
    with engine.connect() as db:
        everything = json.dumps([list(r) for r in db.execute(text("select * from records"))],
                                default=str)
        (effective,) = db.execute(text("select evidence from records where kind = 'config'")
                                  ).one()
    engine.dispose()
    catalog_url = json.loads(effective)["effective"]["config"]["catalog"]
    assert catalog_url.startswith("postgresql+psycopg://drkit:***@")
    assert postgres.password not in everything


def test_an_evidence_bucket_that_is_down_fails_verification_and_says_why(
        project: Project, signed: dict[str, Any]) -> None:
    config = yaml.safe_load(project.config_path.read_text())
    config["repositories"]["offsite"] = {
        "url": "s3:http://127.0.0.1:1/drkit-evidence/repo",
        "password": {"env": "DRKIT_TEST_PASSWORD"},
        "s3": {"access_key": {"env": "DRKIT_TEST_PASSWORD"},
               "secret_key": {"env": "DRKIT_TEST_PASSWORD"}}}
    config["evidence"]["bucket"] = {"bucket": "drkit-evidence", "repository": "offsite"}
    project.config_path.write_text(yaml.safe_dump(config))
    down = project.run("audit", "verify")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "storage unreachable" in down.stdout
    assert down.stderr.strip().splitlines()[-1].startswith(
        "drkit: not verified: the evidence bucket's anchors could not be read")
    assert project.run("audit", "verify", "--offline").returncode == 0
