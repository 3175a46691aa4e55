"""`drkit report`: exact numbers from a catalog with known history (SQLite and PostgreSQL),
CSV columns, filters, the HTML in a real browser, the PDF's text, and bad requests."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drkit.catalog.inflight import utcnow
from drkit.catalog.store import NewRecord, open_catalog
from drkit.reports.render import CSV_COLUMNS
from tests.conftest import Project

MIN = 60.0
HOUR = 3600.0


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def add(catalog: Any, kind: str, status: str, at: datetime, **fields: Any) -> None:
    catalog.append(NewRecord(kind=kind, status=status, started_at=at - timedelta(seconds=5),
                             finished_at=at, **fields))


def drill(catalog: Any, plan: str, at: datetime, status: str, rpo: float | None,
          rto: float | None, rpo_goal: float, rto_goal: float, **evidence: Any) -> None:
    add(catalog, "drill", status, at, plan=plan, evidence={
        "rpo_achieved_s": rpo, "rto_achieved_s": rto, "rpo_objective_s": rpo_goal,
        "rto_objective_s": rto_goal, **evidence})


@pytest.fixture
def history(project: Project, catalog_url: str) -> tuple[Project, datetime]:
    """Two targets, two plans, one repository; a real backup via the CLI plus known history
    inserted through the catalog API. Returns the project and the period's start."""
    data = project.root / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello")
    project.write_config({
        "catalog": catalog_url,
        "repositories": {"primary": {"url": str(project.root / "repo"),
                                     "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {
            "db": {"kind": "files", "paths": [str(data)], "repositories": ["primary"]},
            "files": {"kind": "files", "paths": [str(data)], "repositories": ["primary"]},
        },
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "db.yaml").write_text(
        "name: db-plan\nobjectives: {rpo: 1h, rto: 10m}\nsteps:\n  - target: db\n")
    (plans / "files.yaml").write_text(
        "name: files-plan\nobjectives: {rpo: 1h, rto: 5m}\nsteps:\n  - target: files\n")
    assert project.run("repo", "init").returncode == 0

    catalog = open_catalog(catalog_url)
    t0 = utcnow().replace(microsecond=0) - timedelta(hours=6)
    at = lambda hours: t0 + timedelta(hours=hours)  # noqa: E731
    # db: good backups 30 min before the period, then at 0, 1, 3, 5.5 h; one failure at 2 h.
    for hours in (-0.5, 0, 1, 3, 5.5):
        add(catalog, "backup", "succeeded", at(hours), target="db", repository="primary",
            snapshot_id=f"db{hours}")
    add(catalog, "backup", "failed", at(2), target="db", repository="primary",
        error="repository locked")
    # files: every 30 minutes from 0 to 5.5 h (12 backups), then the real one below.
    for step in range(12):
        add(catalog, "backup", "succeeded", at(step / 2), target="files", repository="primary")
    # db-plan: passed, breached (RTO), failed before measuring; files-plan: one pass.
    drill(catalog, "db-plan", at(1.2), "passed", 1200, 300, HOUR, 10 * MIN)
    drill(catalog, "db-plan", at(2.2), "breached", 1800, 900, HOUR, 10 * MIN,
          rto_stages={"restore": 600.5, "verify": 100, "database_load": 150, "checks": 49.5},
          steps=[{"target": "db", "repository": "primary", "restore_s": 600.5}])
    drill(catalog, "db-plan", at(3.2), "failed", None, None, HOUR, 10 * MIN)
    drill(catalog, "files-plan", at(4.2), "passed", 600, 100, HOUR, 5 * MIN)
    # checks of primary: passed, failed, passed.
    for hours, status in ((0.5, "passed"), (1.5, "failed"), (4.5, "passed")):
        add(catalog, "check", status, at(hours), repository="primary")
    # Outside the period: must not be counted.
    add(catalog, "backup", "failed", at(-3), target="db", repository="primary")
    catalog.engine.dispose()
    backup = project.run("backup", "files")
    assert backup.returncode == 0, backup.stderr
    return project, t0


def report_json(project: Project, *args: str) -> dict[str, Any]:
    result = project.run("report", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_report_numbers_are_exact(history: tuple[Project, datetime]) -> None:
    project, t0 = history
    doc = report_json(project, "--since", iso(t0))
    summary = doc["summary"]
    plans = {p["plan"]: p for p in summary["plans"]}
    db_plan = plans["db-plan"]
    assert (db_plan["drills"], db_plan["passed"], db_plan["breached"], db_plan["failed"]) == \
        (3, 1, 1, 1)
    assert db_plan["rpo_compliance_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert db_plan["rto_compliance_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert (db_plan["rto_worst_s"], db_plan["rto_median_s"]) == (900, 600)
    assert (db_plan["rpo_worst_s"], db_plan["rpo_median_s"]) == (1800, 1500)
    assert plans["files-plan"]["rto_compliance_rate"] == 1.0

    targets = {t["target"]: t for t in summary["targets"]}
    db = targets["db"]
    assert (db["backups"], db["succeeded"], db["failed"]) == (5, 4, 1)
    # From the recovery point: the backup finished at 3 h had started 5 s before.
    assert db["longest_rpo_exposure_s"] == pytest.approx(2.5 * HOUR + 5, abs=1)
    assert db["longest_exposure_ended_at"].startswith(iso(t0 + timedelta(hours=5.5))[:16])
    assert db["worst_repository"] == "primary"
    (copy,) = db["by_repository"]
    assert (copy["repository"], copy["good_backups"]) == ("primary", 4)
    assert copy["last_recovery_point_at"][:19] == \
        iso(t0 + timedelta(hours=5.5, seconds=-5))[:19]
    files = targets["files"]
    assert (files["backups"], files["failed"]) == (13, 0)  # 12 inserted + 1 real
    assert files["longest_rpo_exposure_s"] < 0.6 * HOUR
    assert (db["checks_passed"], db["checks_failed"]) == (2, 1)
    drills = summary["drills"]
    assert [(d["plan"], d["status"]) for d in drills] == [
        ("db-plan", "passed"), ("db-plan", "breached"), ("db-plan", "failed"),
        ("files-plan", "passed")]
    assert drills[1]["rto_stages"]["restore"] == 600.5 and drills[1]["repositories"] == \
        ["primary"]

    controls = {(c["control"], c["subject"]): c for c in doc["controls"]}
    assert controls[("backup_within_rpo", "db")]["status"] == "non_compliant"
    assert controls[("backup_within_rpo", "files")]["status"] == "compliant"
    assert controls[("drill_within_rto", "db-plan")]["status"] == "non_compliant"
    assert controls[("drill_within_rto", "db-plan")]["counts"]["within_rto"] == 1
    assert controls[("drill_within_rto", "files-plan")]["status"] == "compliant"
    assert controls[("repository_checked", "primary")]["status"] == "compliant"
    assert controls[("storage_immutable", "primary")]["status"] == "non_compliant"

    # Every record of the period, the CLI-made ones included, none from before it.
    kinds = [r["kind"] for r in doc["records"]]
    assert kinds.count("backup") == 18 and kinds.count("drill") == 4 and \
        kinds.count("check") == 3
    assert all(datetime.fromisoformat(r["finished_at"].replace("Z", "")) >= t0
               for r in doc["records"])
    real = [r for r in doc["records"] if r["kind"] == "backup" and r["snapshot_id"]
            and r["target"] == "files"]
    assert real and real[0]["evidence"]["restic_summary"]["files_new"] == 1
    assert doc["chain"]["head_seq"] >= doc["records"][-1]["seq"]
    assert doc["summary"]["totals"]["backup"] == {"succeeded": 17, "failed": 1}


def test_csv_has_one_row_per_record_with_stable_columns(
        history: tuple[Project, datetime]) -> None:
    project, t0 = history
    result = project.run("report", "--format", "csv", "--since", iso(t0))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    # backups, drills, checks, the repo init, the config in force when the CLI first
    # appended (the report's own record comes after it)
    assert len(rows) == 18 + 4 + 3 + 1 + 1
    assert [r["kind"] for r in rows].count("config") == 1
    breached = next(r for r in rows if r["kind"] == "drill" and r["status"] == "breached")
    assert float(breached["rto_achieved_s"]) == 900 and float(breached["rto_objective_s"]) == 600
    assert json.loads(breached["evidence"])["rpo_achieved_s"] == 1800
    stages = ("rto_restore_s", "rto_verify_s", "rto_load_s", "rto_checks_s")
    assert CSV_COLUMNS[-7:-3] == stages  # appended, then format, actor, config_hash
    assert CSV_COLUMNS[-3:] == ("format", "actor", "config_hash")
    assert [breached[c] for c in stages] == ["600.5", "100", "150", "49.5"]
    passed = next(r for r in rows if r["kind"] == "drill" and r["status"] == "passed")
    assert [passed[c] for c in stages] == ["", "", "", ""]
    failed = [r for r in rows if r["status"] == "failed" and r["kind"] == "backup"]
    assert failed[0]["error"] == "repository locked"


SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_filters_and_report_records(history: tuple[Project, datetime]) -> None:
    project, t0 = history
    doc = report_json(project, "--since", iso(t0), "--plan", "files-plan")
    assert [p["plan"] for p in doc["summary"]["plans"]] == ["files-plan"]
    assert [t["target"] for t in doc["summary"]["targets"]] == ["files"]
    assert {r.get("target") or r.get("plan") or r.get("repository")
            for r in doc["records"]} == {"files", "files-plan", "primary"}
    # Each report is itself a record holding the head it was built from and its digest.
    later = report_json(project, "--since", iso(t0))
    reports = [r for r in later["records"] if r["kind"] == "report"]
    assert reports and reports[-1]["evidence"]["built_from_head_seq"] == doc["chain"]["head_seq"]
    assert len(reports[-1]["evidence"]["sha256"]) == 64


@pytest.mark.parametrize("args, message", [
    (("--since", "yesterday-ish"), "not a date or duration"),
    (("--plan", "nope"), "unknown plan 'nope'"),
    (("--target", "nope"), "unknown target 'nope'"),
    (("--since", "2026-01-02", "--until", "2026-01-01"), "the period is empty"),
    (("--format", "pdf", "--output", "-"), "a PDF report needs --output FILE"),
])
def test_bad_requests_exit_2(project: Project, args: tuple[str, ...], message: str) -> None:
    project.write_config({"repositories": {"r": {"url": str(project.root / "repo"),
                                                 "password": {"env": "DRKIT_TEST_PASSWORD"}}}})
    result = project.run("report", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@SQLITE_ONLY
@pytest.mark.skipif(chromium() is None, reason="Debian chromium is not installed (make test "
                    "installs it as root: apt-get install chromium)")
def test_html_report_renders_in_chromium_with_summary_and_charts(
        history: tuple[Project, datetime], tmp_path: Path) -> None:
    project, t0 = history
    out = tmp_path / "report.html"
    result = project.run("report", "--since", iso(t0), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    html = out.read_text()
    for fetches in ("<script", "<link", " src=", "url(", "@import"):  # self-contained
        assert fetches not in html, fetches
    browser = [chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="summary-table"' in dom.stdout and "db-plan" in dom.stdout
    assert dom.stdout.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 4
    assert 'class="objective"' in dom.stdout and 'class="series"' in dom.stdout
    shot = tmp_path / "report.png"
    screenshot = subprocess.run([*browser, "--window-size=1280,2000", f"--screenshot={shot}",
                                 out.as_uri()], capture_output=True, text=True, timeout=120)
    assert screenshot.returncode == 0 and shot.stat().st_size > 20_000, screenshot.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@SQLITE_ONLY
@pytest.mark.skipif(shutil.which("pdftotext") is None,
                    reason="poppler-utils (pdftotext) is not installed")
def test_pdf_report_has_the_plan_names(history: tuple[Project, datetime],
                                       tmp_path: Path) -> None:
    project, t0 = history
    out = tmp_path / "report.pdf"
    result = project.run("report", "--since", iso(t0), "--format", "pdf", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:5] == b"%PDF-"
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "db-plan" in text and "files-plan" in text and "drill_within_rto" in text


def test_report_is_uploaded_under_object_lock_and_cannot_be_deleted(
        project: Project, moto_s3: Any, tmp_path: Path) -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1",
                      aws_access_key_id=moto_s3.access_key,
                      aws_secret_access_key=moto_s3.secret_key)
    bucket = "evidence-locked"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}})
    project.env.update({"DRKIT_TEST_S3_ACCESS_KEY": moto_s3.access_key,
                        "DRKIT_TEST_S3_SECRET_KEY": moto_s3.secret_key})
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "reports": {"output": {"s3": {
            "bucket": bucket, "prefix": "reports/", "retain_days": 90,
            "s3": {"endpoint": moto_s3.endpoint,
                   "access_key": {"env": "DRKIT_TEST_S3_ACCESS_KEY"},
                   "secret_key": {"env": "DRKIT_TEST_S3_SECRET_KEY"}}}}},
    })
    result = project.run("report", "--output", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    assert "retained until" in result.stderr
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert len(keys) == 2 and keys[0].endswith(".html") and keys[1].endswith(".json")
    assert all(k.startswith("reports/drkit-report-") for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        retained = (head["ObjectLockRetainUntilDate"].replace(tzinfo=None) - utcnow()).days
        assert 88 <= retained <= 90
        with pytest.raises(ClientError) as refused:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    assert body == (tmp_path / "r.html").read_bytes()
    # The report's record says where its evidence went (and holds no secret).
    doc = report_json(project)
    uploads = next(r for r in doc["records"] if r["kind"] == "report")["evidence"]["uploads"]
    assert {u["key"] for u in uploads} == set(keys)
    assert moto_s3.secret_key not in json.dumps(doc)


def test_upload_failure_is_recorded_and_exits_1(project: Project, tmp_path: Path) -> None:
    from drkit.locals3 import free_port

    project.env.update({"K": "drkitaccesskey", "S": "drkitsecretkey0123456"})
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "reports": {"output": {"s3": {"bucket": "nowhere", "s3": {
            "endpoint": f"http://127.0.0.1:{free_port()}", "access_key": {"env": "K"},
            "secret_key": {"env": "S"}}}}},
    })
    result = project.run("report", "--output", str(tmp_path / "r.html"))
    assert result.returncode == 1 and "upload failed" in result.stderr, result.stderr
    assert (tmp_path / "r.html").exists()  # the local copy is kept
    again = project.run("report", "--format", "json")
    assert again.returncode == 1
    doc = json.loads(again.stdout)
    failed = next(r for r in doc["records"] if r["kind"] == "report")
    assert failed["status"] == "failed" and "upload failed" in failed["error"]
    assert "drkitsecretkey0123456" not in json.dumps(doc)
