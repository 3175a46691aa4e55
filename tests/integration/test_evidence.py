"""Evidence an auditor can trust: signed checkpoints, anchored outside the database, and an
``audit verify`` that catches the forgery an insider would do (a failed drill turned into a
passed one and every later record re-hashed with drkit's own code, the newest records cut
off), on SQLite and PostgreSQL; checkpoints in an object-locked bucket (moto); a bundle an
auditor verifies offline with sha256sum, openssl and the bundled verify.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from drkit.catalog.chain import record_hash
from drkit.signing import generate, public_base64, public_bytes
from tests.conftest import Project, S3Endpoint


def keys(project: Project) -> dict[str, Any]:
    """A fresh signing key in a file, and the evidence block of the config."""
    private, public = generate()
    path = project.root / "evidence.key"
    path.write_text(private)
    path.chmod(0o600)
    return {"signing_key": {"file": str(path)}, "public_key": public_base64(public_bytes(public))}


def evidence_project(project: Project, catalog: str | None = None,
                     **evidence: Any) -> dict[str, Any]:
    """A files target and a plan whose check fails (a drill to forge); backed up, drilled."""
    data = project.root / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello")
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "p.yaml").write_text(yaml.safe_dump({
        "name": "p", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "t", "checks": [{"files_exist": ["missing.txt"]}]}]}))
    config = {
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
        "evidence": {**keys(project), **evidence},
        **({"catalog": catalog} if catalog else {}),
    }
    project.write_config(config)
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0
    assert project.run("drill", "p").returncode == 1  # failed: missing.txt
    for _ in range(2):
        assert project.run("backup").returncode == 0
    return config


def catalog_url(project: Project, config: dict[str, Any]) -> str:
    return str(config.get("catalog") or f"sqlite:///{project.catalog_path}")


def verify(project: Project, *args: str) -> tuple[int, dict[str, Any]]:
    result = project.run("audit", "verify", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def forge_drill(url: str) -> int:
    """What an insider holding the database does: the failed drill becomes passed, and
    every later record and the head row are re-hashed with drkit's own code. Returns the
    forged record's id."""
    engine = create_engine(url)
    with engine.begin() as db:
        rows = [dict(r._mapping) for r in db.execute(text(
            "select * from records order by seq"))]
        drill = next(r for r in rows if r["kind"] == "drill")
        previous = None
        for row in rows:
            if row["seq"] < drill["seq"]:
                previous = row["hash"]
                continue
            if row["id"] == drill["id"]:
                row["status"], row["error"] = "passed", None
            row["prev_hash"] = previous
            fields = dict(row)
            for key in ("started_at", "finished_at"):
                if isinstance(fields[key], str):
                    fields[key] = datetime.fromisoformat(fields[key])
            row["hash"] = previous = record_hash(fields)
            db.execute(text("update records set status = :status, error = :error, prev_hash "
                            "= :prev_hash, hash = :hash where id = :id"), row)
        db.execute(text("update chain_head set hash = :h where id = 1"), {"h": previous})
    engine.dispose()
    return int(drill["id"])


def test_the_insiders_forgery_is_named_on_sqlite_and_postgres(
        project: Project, catalog_url_param: str) -> None:
    config = evidence_project(project, None if catalog_url_param.startswith("sqlite")
                              else catalog_url_param)
    url = catalog_url(project, config)
    code, report = verify(project)
    assert code == 0 and report["intact"] and report["signed"]
    assert report["checkpoints"] >= 3 and report["anchors"]["file"] >= 3

    forged = forge_drill(url)
    # The forged chain is consistent in itself: the old verification would call it intact.
    from drkit.catalog.audit import verify_catalog
    plain = verify_catalog(create_engine(url), public_key=None, anchors=[])
    assert plain.intact
    code, report = verify(project)
    assert code == 1
    named = [p for p in report["problems"] if p["problem"] == "edited"]
    assert named and named[0]["record_id"] == forged
    assert "drill p, now 'passed'" in named[0]["detail"]
    text_out = project.run("audit", "verify")
    assert f"record {forged} (seq " in text_out.stdout and "edited" in text_out.stdout

    # Re-signing the catalog's checkpoints with the key does not help: the anchor file has
    # the heads that were signed at the time.
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("delete from checkpoints"))
    engine.dispose()
    resign(project, url)
    code, report = verify(project)
    assert code == 1
    assert any(p["problem"] == "edited" and p["record_id"] == forged and
               "checkpoints.anchors" in p["detail"] for p in report["problems"])


def resign(project: Project, url: str) -> None:
    from drkit.catalog.checkpoints import write_checkpoint
    from drkit.catalog.store import open_catalog
    from drkit.signing import Signer

    signer = Signer((project.root / "evidence.key").read_text())
    write_checkpoint(open_catalog(url), signer, actor="insider")


def test_cut_records_a_changed_signature_and_a_catalog_left_untouched(
        project: Project, catalog_url_param: str) -> None:
    config = evidence_project(project, None if catalog_url_param.startswith("sqlite")
                              else catalog_url_param)
    url = catalog_url(project, config)

    def content() -> Any:
        if url.startswith("sqlite"):  # the database and its write-ahead log (-shm is
            # SQLite's shared-memory index, which every reader updates)
            return {p.name: p.read_bytes() for p in
                    project.catalog_path.parent.glob("catalog.db*")
                    if not p.name.endswith("-shm")}
        engine = create_engine(url)
        with engine.connect() as db:
            found = [tuple(db.execute(text(f"select * from {table} order by 1")))
                     for table in ("records", "checkpoints", "chain_head", "alembic_version")]
        engine.dispose()
        return found

    before = content()
    code, report = verify(project)
    assert code == 0
    assert content() == before  # audit verify never writes to the catalog

    # A checkpoint's signature altered (in the catalog): named.
    engine = create_engine(url)
    with engine.begin() as db:
        (ident, signature) = db.execute(text("select id, signature from checkpoints order by "
                                             "id limit 1")).one()
        raw = bytearray(base64.b64decode(signature))
        raw[5] ^= 0x01
        db.execute(text("update checkpoints set signature = :s where id = :i"),
                   {"s": base64.b64encode(raw).decode(), "i": ident})
    code, report = verify(project)
    assert code == 1
    assert [p["problem"] for p in report["problems"]] == ["bad_signature"]
    assert f"catalog checkpoint #{ident}" in report["problems"][0]["detail"]
    with engine.begin() as db:
        db.execute(text("update checkpoints set signature = :s where id = :i"),
                   {"s": signature, "i": ident})

    # The newest records deleted and the head row fixed to match: shorter than signed.
    with engine.begin() as db:
        last = db.execute(text("select max(seq) from records")).scalar_one()
        db.execute(text("delete from records where seq > :s"), {"s": last - 2})
        db.execute(text("delete from checkpoints where seq > :s"), {"s": last - 2})
        (seq, hash_) = db.execute(text("select seq, hash from records order by seq desc "
                                       "limit 1")).one()
        db.execute(text("update chain_head set seq = :s, hash = :h"), {"s": seq, "h": hash_})
    engine.dispose()
    code, report = verify(project)
    assert code == 1
    (cut,) = [p for p in report["problems"] if p["problem"] == "truncated"]
    assert f"the chain ends at {last - 2}" in cut["detail"]
    assert "checkpoints.anchors" in cut["detail"]


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url_param(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    import uuid

    server = request.getfixturevalue("postgres")
    name = f"evidence_{uuid.uuid4().hex[:10]}"
    server.sql(f"create database {name}")
    return str(server.dsn(name).replace("postgresql://", "postgresql+psycopg://"))


def test_checkpoints_are_anchored_under_object_lock(project: Project,
                                                    moto_s3: S3Endpoint) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1",
                          aws_access_key_id=moto_s3.access_key,
                          aws_secret_access_key=moto_s3.secret_key)
    bucket = "drkit-evidence-anchors"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    project.env.update(moto_s3.env())
    config = evidence_project(project, bucket={
        "bucket": bucket, "prefix": "site-a/",
        "s3": {"endpoint": moto_s3.endpoint,
               "access_key": {"env": "DRKIT_TEST_S3_AK_MOTO"},
               "secret_key": {"env": "DRKIT_TEST_S3_SK_MOTO"}}}, retain_days=30)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="site-a/checkpoints/")["Contents"]
    assert len(listed) >= 3
    newest = max(listed, key=lambda item: item["Key"])
    stored = client.head_object(Bucket=bucket, Key=newest["Key"])
    # Read back from the stored object, not assumed.
    assert stored["ObjectLockMode"] == "COMPLIANCE"
    from datetime import UTC, timedelta
    until = stored["ObjectLockRetainUntilDate"]
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    with pytest.raises(ClientError):
        client.delete_object(Bucket=bucket, Key=newest["Key"],
                             VersionId=stored["VersionId"])
    code, report = verify(project)
    assert code == 0 and report["anchors"]["bucket"] == len(listed)

    # An insider with the database, the key and this host's anchor file: the bucket's
    # locked copies still name the forged record.
    url = catalog_url(project, config)
    forged = forge_drill(url)
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("delete from checkpoints"))
    engine.dispose()
    anchor_file = project.catalog_path.parent / "evidence" / "checkpoints.anchors"
    anchor_file.unlink()
    resign(project, url)
    code, report = verify(project)
    assert code == 1
    assert any(p["problem"] == "edited" and p["record_id"] == forged and
               f"s3://{bucket}/site-a/checkpoints/" in p["detail"]
               for p in report["problems"])
    # Offline (no bucket), the forgery would pass: the bucket is what makes it evidence.
    code, report = verify(project, "--offline")
    assert code == 0 and any("not read" in note for note in report["notes"])
    # Hiding the anchors (a delete marker over each) or putting a new version over one (the
    # host's bucket credentials can) is named; the locked versions are still read.
    keys = [item["Key"] for item in listed]
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)
    client.put_object(Bucket=bucket, Key=keys[0], Body=b'{"payload": "{}", "signature": ""}')
    code, report = verify(project)
    found = {p["problem"] for p in report["problems"]}
    assert code == 1 and {"anchor_hidden", "anchor_overwritten", "anchor_unlocked",
                          "edited"} <= found
    assert report["problem_counts"]["anchor_hidden"] == len(keys)


def sh(bundle: Path, *argv: str, plain: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"]} if plain else None  # plain: no drkit, no virtualenv
    return subprocess.run(list(argv), cwd=bundle, capture_output=True, text=True, env=env)


def openssl_verify(bundle: Path, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    return sh(bundle, "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "public_key.pem",
              "-rawin", "-in", str(checkpoint), "-sigfile", str(checkpoint.with_suffix(".sig")))


def test_the_evidence_bundle_verifies_offline_with_standard_tools(project: Project) -> None:
    evidence_project(project)
    bundle = project.root / "bundle"
    result = project.run("audit", "export", "--since", "1d", "--output", str(bundle))
    assert result.returncode == 0, result.stderr
    assert sh(bundle, "sha256sum", "-c", "--quiet", "manifest.sha256").returncode == 0
    checkpoints = sorted((bundle / "checkpoints").glob("*.json"))
    assert len(checkpoints) >= 3
    for path in checkpoints:
        checked = openssl_verify(bundle, path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    key = json.loads((bundle / "bundle.json").read_text())["key_id"]
    assert f"--key-id {key}" in result.stdout  # the export says how to verify it
    # Without the key id the auditor trusts, verify.py refuses to say anything.
    assert sh(bundle, "python3", "-I", "verify.py", plain=True).returncode == 2
    ok = sh(bundle, "python3", "-I", "verify.py", "--key-id", key, plain=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stdout + ok.stderr
    # Every record hashes to what a signed checkpoint listed (the README's shell recipe:
    # grep prints the records that were not, and finds none).
    recipe = next(block.split("```")[0] for block in
                  (bundle / "README.md").read_text().split("```sh") if "grep -vxFf" in block)
    clean = sh(bundle, "bash", "-c", recipe)
    assert clean.returncode == 1 and clean.stdout == "", clean.stdout + clean.stderr

    # One changed byte in a record: the manifest, the recipe and verify.py all catch it.
    lines = (bundle / "records.jsonl").read_bytes().split(b"\n")
    index = next(i for i, line in enumerate(lines) if b'"kind":"drill"' in line)
    lines[index] = lines[index].replace(b'"status":"failed"', b'"status":"passed"')
    (bundle / "records.jsonl").write_bytes(b"\n".join(lines))
    assert sh(bundle, "sha256sum", "-c", "--quiet", "manifest.sha256").returncode == 1
    broken = sh(bundle, "python3", "-I", "verify.py", "--key-id", key, plain=True)
    assert broken.returncode == 1
    assert "(drill p): not the record the checkpoint signed (changed)" in broken.stdout
    caught = sh(bundle, "bash", "-c", recipe)  # the changed record, and what was signed
    seq = json.loads(lines[index])["seq"]
    assert [line.split()[0] for line in caught.stdout.splitlines()] == [str(seq)] * 2
    # A signed record removed (the line gone, the manifest rebuilt to match): caught too.
    del lines[index]
    (bundle / "records.jsonl").write_bytes(b"\n".join(lines))
    removed = sh(bundle, "python3", "-I", "verify.py", "--key-id", key, plain=True)
    assert removed.returncode == 1
    assert f"signed records missing from records.jsonl: seq {seq} (removed)" in removed.stdout
    gone = sh(bundle, "bash", "-c", recipe)
    assert [line.split()[0] for line in gone.stdout.splitlines()] == [str(seq)]
    # One flipped bit in a checkpoint: openssl and verify.py refuse its signature.
    payload = bytearray(checkpoints[0].read_bytes())
    payload[-3] ^= 0x01
    checkpoints[0].write_bytes(bytes(payload))
    assert openssl_verify(bundle, checkpoints[0]).returncode != 0
    assert "the signature does not verify" in sh(bundle, "python3", "-I", "verify.py",
                                                  "--key-id", key, plain=True).stdout
