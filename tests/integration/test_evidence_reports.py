"""Reports an auditor can use: the DR test report of a real drill (every section, in
Chromium and as PDF), each drill judged against the objectives in force when it ran, a
report of a broken chain that says so first, controls that name their frameworks, open
remediation items in every report."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.reports.drill import SECTIONS
from tests.conftest import Project
from tests.integration.test_evidence import keys


def plan(project: Project, **extra: Any) -> None:
    (project.root / "recovery_plans").mkdir(exist_ok=True)
    (project.root / "recovery_plans" / "svc.yaml").write_text(yaml.safe_dump({
        "name": "svc", "description": "the service's files", "owner": "platform team",
        "scenario": "disk lost", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "t", "checks": [{"files_exist": ["a.txt"]}]}], **extra}))


def service(project: Project) -> None:
    data = project.root / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello")
    plan(project)
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"t": {"kind": "files", "paths": [str(data)], "repositories": ["r"]}},
        "evidence": keys(project)})
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0


def drill(project: Project, *args: str) -> dict[str, Any]:
    result = project.run("drill", "svc", "--json", *args)
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def browser(tmp_path: Path) -> list[str]:
    return [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox",
            "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}"]


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("pdftotext") is None,
                    reason="make test installs chromium and poppler-utils")
def test_the_dr_test_report_of_a_real_drill_has_every_section(project: Project,
                                                              tmp_path: Path) -> None:
    service(project)
    done = drill(project, "--scenario", "ransomware encrypted the file server",
                 "--approved-by", "Dana Reyes (DR lead)", "--participant", "alice",
                 "--participant", "bob")
    assert done["status"] == "passed"
    added = project.run("remediation", "add", "svc", "--owner", "ops", "--due",
                        (date.today() + timedelta(days=30)).isoformat(), "--drill",
                        str(done["record_id"]), "add", "a", "checksum", "manifest")
    assert added.returncode == 0, added.stderr
    html = tmp_path / "drill.html"
    result = project.run("report", "drill", str(done["record_id"]), "--output", str(html))
    assert result.returncode == 0, result.stderr
    dom = subprocess.run([*browser(tmp_path), "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("identification", "scope", "scenario", "isolation", "participants",
                    "timeline", "objectives", "validation", "deviations", "remediations",
                    "sign-off", "next"):
        assert f'<section id="{section}">' in dom.stdout, section
    for shown in ("ransomware encrypted the file server", "Dana Reyes (DR lead)", "alice",
                  "bob", "platform team", done["record_hash"], "files_exist: a.txt",
                  "checksum manifest", "the catalog's newest good backup",
                  done["steps"][0]["snapshot_id"][:8]):
        assert shown in dom.stdout, shown
    shot = tmp_path / "drill.png"
    taken = subprocess.run([*browser(tmp_path), "--window-size=1100,2400",
                            f"--screenshot={shot}", html.as_uri()], capture_output=True,
                           text=True, timeout=120)
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pdf = tmp_path / "drill.pdf"
    result = project.run("report", "drill", str(done["record_id"]), "--format", "pdf",
                         "--output", str(pdf))
    assert result.returncode == 0, result.stderr
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    for title in SECTIONS:
        assert title in text, title
    assert "ransomware encrypted the file server" in text and "PASSED" in text
    # The report is a record itself, naming the drill and the file's SHA-256.
    with closing(sqlite3.connect(project.catalog_path)) as db:
        (evidence,) = db.execute("select evidence from records where kind = 'report' order "
                                 "by seq desc limit 1").fetchone()
    assert json.loads(evidence)["drill_record"] == done["record_id"]
    assert json.loads(evidence)["path"] == str(pdf)
    # Not a drill: a bad request.
    assert project.run("report", "drill", "1").returncode == 2


def test_each_drill_is_judged_against_the_objectives_in_force_then(project: Project) -> None:
    service(project)
    first = drill(project)
    assert first["status"] == "passed" and first["rto_objective_s"] == 900
    plan(project, objectives={"rpo": "1h", "rto": "1s"})  # tightened mid-period
    project.run("backup")  # any run records the config now in force
    second = drill(project)
    assert second["rto_objective_s"] == 1
    report = project.run_json("report", "--format", "json", "--output", "-")
    objectives = [(d["record_seq"], d["rto_objective_s"]) for d in report["summary"]["drills"]]
    assert [o for _, o in objectives] == [900, 1]
    assert report["config_in_force"]["current"] is True
    # A report of the period before the change: the plan as it was then.
    with closing(sqlite3.connect(project.catalog_path)) as db:
        (until,) = db.execute("select finished_at from records where kind = 'drill' order "
                              "by seq limit 1").fetchone()
    until = until.replace(" ", "T") + "Z"
    before = project.run_json("report", "--format", "json", "--output", "-", "--until", until)
    (svc,) = before["summary"]["plans"]
    assert svc["rto_objective_s"] == 900
    assert before["config_in_force"]["current"] is False


def test_a_broken_chain_is_the_first_line_of_every_report(project: Project,
                                                          tmp_path: Path) -> None:
    service(project)
    done = drill(project)
    with closing(sqlite3.connect(project.catalog_path)) as db:
        db.execute("update records set status = 'failed' where id = ?", (done["record_id"],))
        db.commit()
    md = project.run("report", "--format", "md", "--output", "-")
    assert md.returncode == 1
    assert md.stdout.splitlines()[0].startswith("**CHAIN BROKEN: audit verify found")
    html = tmp_path / "r.html"
    assert project.run("report", "--output", str(html)).returncode == 1
    body = html.read_text().split("<body>", 1)[1]
    assert body.lstrip().startswith('<div class="verdict bad" id="verdict">CHAIN BROKEN')
    as_json = project.run("report", "--format", "json", "--output", "-")
    assert json.loads(as_json.stdout)["verdict"].startswith("CHAIN BROKEN")
    drill_md = project.run("report", "drill", str(done["record_id"]), "--format", "md",
                           "--output", "-")
    assert drill_md.returncode == 1 and drill_md.stdout.startswith("**CHAIN BROKEN")


def test_controls_name_their_frameworks_and_remediation_is_judged(project: Project) -> None:
    service(project)
    plan(project, drill_every="30d")
    drill(project)
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    item = project.run_json("remediation", "add", "svc", "--owner", "ops", "--due",
                            yesterday, "fix", "the", "runbook")
    report = project.run_json("report", "--format", "json", "--output", "-")
    controls = {c["control"]: c for c in report["controls"]}
    assert "DORA Art. 12(2)" in controls["drill_within_rto"]["references"]
    assert "ISO 22301 8.5" in controls["drill_within_rto"]["references"]
    assert "SOC 2 A1.3" in controls["drill_within_rto"]["references"]
    assert "NIST SP 800-53 CP-4" in controls["drill_within_rto"]["references"]
    assert all(c["references"] for c in report["controls"])
    assert controls["drill_not_overdue"]["status"] == "compliant"
    assert controls["remediation_closed_on_time"]["status"] == "non_compliant"
    assert item["id"] in controls["remediation_closed_on_time"]["detail"]
    # Signed, but no bucket: the checkpoints are only in the catalog and the local file.
    assert controls["evidence_anchored"]["status"] == "non_compliant"
    assert [r["id"] for r in report["summary"]["remediations"]] == [item["id"]]
    evaluated = [c for c in report["controls"] if c["status"] != "not_evaluated"]
    bad = [c for c in evaluated if c["status"] == "non_compliant"]
    assert report["verdict"].startswith(f"{len(bad)} of {len(evaluated)} evaluated controls")
    closed = project.run_json("remediation", "close", item["id"], "--note", "done")
    assert closed["status"] == "closed"
    assert project.run("remediation", "close", item["id"]).returncode == 2
    after = project.run_json("report", "--format", "json", "--output", "-")
    late = next(c for c in after["controls"] if c["control"] == "remediation_closed_on_time")
    assert late["status"] == "non_compliant"  # closed, but after its due date
