"""The report model from a catalog with known history (SQLite and PostgreSQL): RPO exposure
from recovery points per repository, drill frequency, checks_too_weak, and the drills' RTO
stages in the Drills table and the CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.catalog import report_queries as q
from drkit.catalog.store import Catalog, NewRecord, open_catalog
from drkit.config.loader import load_config
from drkit.drills.plans import load_plans
from drkit.reports.model import Report, build_report
from drkit.reports.render import CSV_COLUMNS, render_html, write_csv, write_markdown

T0 = datetime(2026, 3, 2)          # the period's start
UNTIL = T0 + timedelta(hours=10)   # the period's end (before "now": the end is the judge)
NOW = T0 + timedelta(hours=30)
MIN = 60.0
HOUR = 3600.0


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class History:
    """A config (app -> primary + offsite, db -> primary), three plans, an empty catalog."""

    def __init__(self, root: Path, catalog_url: str) -> None:
        repo = {"password": {"env": "DRKIT_TEST_PASSWORD"}}
        (root / "config").mkdir()
        (root / "config" / "drkit.yaml").write_text(yaml.safe_dump({
            "catalog": catalog_url,
            "repositories": {"primary": {"url": str(root / "primary"), **repo},
                             "offsite": {"url": str(root / "offsite"), **repo}},
            "targets": {
                "app": {"kind": "files", "paths": [str(root)],
                        "repositories": ["primary", "offsite"]},
                "db": {"kind": "files", "paths": [str(root)], "repositories": ["primary"]},
            }}))
        plans = root / "recovery_plans"
        plans.mkdir()
        (plans / "app.yaml").write_text("name: app-plan\nobjectives: {rpo: 1h, rto: 10m}\n"
                                        "drill_every: 1d\nsteps: [{target: app}]\n")
        (plans / "db.yaml").write_text("name: db-plan\nobjectives: {rpo: 1h, rto: 10m}\n"
                                       "drill_every: 7d\nsteps: [{target: db}]\n")
        (plans / "other.yaml").write_text("name: other-plan\nobjectives: {rpo: 2h, rto: 1h}\n"
                                          "steps: [{target: db}]\n")
        self.config = load_config(root / "config" / "drkit.yaml")
        self.plans = load_plans(self.config)
        self.catalog: Catalog = open_catalog(catalog_url)

    def backup(self, target: str, repository: str, started: datetime, finished: datetime,
               status: str = "succeeded") -> None:
        self.catalog.append(NewRecord(kind="backup", status=status, target=target,
                                      repository=repository, started_at=started,
                                      finished_at=finished))

    def drill(self, plan: str, finished: datetime, status: str, **evidence: Any) -> None:
        self.catalog.append(NewRecord(
            kind="drill", status=status, plan=plan, started_at=finished - timedelta(minutes=5),
            finished_at=finished, evidence={"rpo_objective_s": HOUR, "rto_objective_s": 600,
                                            **evidence}))

    def report(self, since: datetime = T0, until: datetime = UNTIL,
               now: datetime = NOW) -> Report:
        with self.catalog.read_session() as session:
            return build_report(session, self.config, self.plans, q.Scope(since, until),
                                now=now)


@pytest.fixture
def history(tmp_path: Path, catalog_url: str) -> History:
    return History(tmp_path, catalog_url)


def controls(report: Report) -> dict[tuple[str, str], Any]:
    return {(c.control, c.subject): c for c in report.controls}


def test_a_stopped_offsite_copy_breaches_the_rpo_although_the_primary_is_fresh(
        history: History) -> None:
    # primary: every 30 min from -30 min to 9h30 (2 min each); offsite: until 3h30, then fails.
    for k in range(-1, 20):
        history.backup("app", "primary", at(30 * k), at(30 * k + 2))
        history.backup("app", "offsite", at(30 * k), at(30 * k + 2),
                       "succeeded" if k <= 7 else "failed")
    report = history.report()
    rpo = controls(report)[("backup_within_rpo", "app")]
    assert rpo.status == "non_compliant"
    assert "in repository offsite exceeds the RPO of 3600 s" in rpo.detail
    assert rpo.counts["worst_repository"] == "offsite"
    (app,) = [t for t in report.targets if t.target == "app"]
    primary, offsite = app.by_repository
    assert (primary.repository, primary.good_backups) == ("primary", 20)
    # Until a backup finished, the newest data was the previous one's, captured at its start.
    assert (primary.longest_exposure_s, primary.open_exposure_s) == (32 * MIN, 30 * MIN)
    assert primary.last_recovery_point_at == at(30 * 19)
    assert (offsite.repository, offsite.good_backups) == ("offsite", 8)
    assert offsite.last_recovery_point_at == at(30 * 7)
    assert offsite.longest_exposure_s == offsite.open_exposure_s == 6.5 * HOUR
    assert offsite.longest_exposure_ended_at == UNTIL
    assert (app.worst_repository, app.longest_rpo_exposure_s) == ("offsite", 6.5 * HOUR)
    assert (app.last_recovery_point_at, app.open_exposure_s) == (at(30 * 7), 6.5 * HOUR)
    document = report.header_json()["summary"]["targets"][0]
    assert [(c["repository"], c["last_recovery_point_at"], c["open_exposure_s"])
            for c in document["by_repository"]] == [
        ("primary", "2026-03-02T09:30:00.000000Z", 1800.0),
        ("offsite", "2026-03-02T03:30:00.000000Z", 23400.0)]
    out = io.StringIO()
    write_markdown(report, out)
    assert "| app | offsite | 8 | 2026-03-02T03:30:00.000000Z | 6h 30m | 6h 30m |" \
        in out.getvalue()
    html = render_html(report, [])
    assert "<td>app</td><td>offsite</td>" in html and 'id="exposure-by-repository"' in html


def test_a_repository_never_backed_up_makes_the_target_non_compliant(
        history: History) -> None:
    for k in range(-1, 20):
        history.backup("app", "primary", at(30 * k), at(30 * k + 2))
        history.backup("app", "offsite", at(30 * k), at(30 * k + 2), "failed")
    report = history.report()
    rpo = controls(report)[("backup_within_rpo", "app")]
    assert (rpo.status, rpo.detail) == (
        "non_compliant", "no good backup in repository offsite before the period's end")
    (app,) = [t for t in report.targets if t.target == "app"]
    assert [(c.repository, c.good_backups, c.last_recovery_point_at)
            for c in app.by_repository] == [("primary", 20, at(30 * 19)), ("offsite", 0, None)]
    assert (app.worst_repository, app.longest_rpo_exposure_s) == ("offsite", None)


def test_a_long_backup_is_exposed_from_its_start(history: History) -> None:
    """Backups every 40 min that take 30 min: 40 min between finishes, but just before each
    one finished the newest recoverable data was 70 min old (the previous one's start)."""
    for k in range(-1, 15):
        history.backup("db", "primary", at(40 * k), at(40 * k + 30))
    report = history.report()
    (db,) = [t for t in report.targets if t.target == "db"]
    assert db.longest_rpo_exposure_s == 70 * MIN
    assert db.longest_exposure_ended_at == at(30)
    assert db.open_exposure_s == 40 * MIN  # the period ends 40 min after the last start
    assert db.last_recovery_point_at == at(40 * 14)
    rpo = controls(report)[("backup_within_rpo", "db")]
    assert rpo.status == "non_compliant"
    assert rpo.detail == ("longest time without newer backed-up data 4200 s in repository "
                          "primary exceeds the RPO of 3600 s")


def test_drill_frequency_and_checks_too_weak(history: History) -> None:
    # app-plan (drill_every 1d): passed 2 days before the period, then checks_too_weak.
    history.drill("app-plan", T0 - timedelta(days=2), "passed", rto_achieved_s=60)
    history.drill("app-plan", at(300), "checks_too_weak", rpo_achieved_s=600,
                  rto_achieved_s=120)
    # db-plan (drill_every 7d): passed in the period. other-plan: no drill_every.
    history.drill("db-plan", at(60), "passed", rpo_achieved_s=600, rto_achieved_s=120)
    report = history.report()
    plans = {p.plan: p for p in report.plans}
    app = plans["app-plan"]
    assert (app.drills, app.checks_too_weak, app.failed, app.passed) == (1, 1, 0, 0)
    assert (app.drill_every_s, app.last_passed_at, app.overdue) == (
        86400, T0 - timedelta(days=2), True)
    assert (plans["db-plan"].overdue, plans["db-plan"].last_passed_at) == (False, at(60))
    found = controls(report)
    rto = found[("drill_within_rto", "app-plan")]
    assert rto.status == "non_compliant" and rto.counts["checks_too_weak"] == 1
    assert rto.detail == ("1 of 1 drills restored within the RTO; 1 with checks too weak "
                          "(they passed on data damaged on purpose)")
    frequency = found[("drill_not_overdue", "app-plan")]
    assert frequency.status == "non_compliant"
    assert frequency.detail == ("the last passed drill finished 2026-02-28T00:00:00.000000Z, "
                                "2d 10h before 2026-03-02T10:00:00.000000Z: beyond "
                                "drill_every 1d 0h")
    assert found[("drill_not_overdue", "db-plan")].status == "compliant"
    assert ("drill_not_overdue", "other-plan") not in found
    out = io.StringIO()
    write_markdown(report, out)
    assert "| app-plan | 1 | 0 | 0 | 0 | 1 |" in out.getvalue()
    assert "| 1d 0h (overdue) | 2026-02-28T00:00:00.000000Z |" in out.getvalue()


def test_drill_frequency_is_judged_now_when_the_period_has_not_ended(
        history: History) -> None:
    history.drill("app-plan", at(60), "passed", rto_achieved_s=60)
    never = history.report(until=T0 + timedelta(days=30), now=at(120))
    assert controls(never)[("drill_not_overdue", "app-plan")].status == "compliant"
    assert controls(never)[("drill_not_overdue", "db-plan")].detail == \
        "no drill of this plan ever passed (drill_every 7d 0h)"
    later = history.report(until=T0 + timedelta(days=30), now=T0 + timedelta(days=2))
    assert controls(later)[("drill_not_overdue", "app-plan")].status == "non_compliant"


STAGES = {"restore": 12.5, "verify": 3.25, "database_load": 40.0, "checks": 1.5}


def test_drills_table_and_csv_show_the_rto_stages(history: History) -> None:
    history.backup("db", "primary", at(0), at(1))
    history.drill("db-plan", at(120), "breached", rpo_achieved_s=900, rto_achieved_s=700,
                  rpo_complete=False, rto_stages=STAGES, prove_checks=True, steps=[
                      {"target": "db", "repository": "primary", "restore_s": 12.5,
                       "proof": {"damage": "rows deleted", "detected": True}},
                      {"target": "app", "repository": "offsite", "restore_s": None,
                       "error": "no snapshot"}])
    history.drill("other-plan", at(180), "failed", rto_achieved_s=None)  # an old evidence
    report = history.report()
    first, second = report.drills
    assert (first.plan, first.status, first.rpo_complete, first.repositories) == (
        "db-plan", "breached", False, ["primary"])
    assert first.rto_stages == STAGES and (first.proofs, first.proofs_detected) == (1, 1)
    assert (second.plan, second.rto_stages["restore"], second.proofs) == (
        "other-plan", None, None)
    assert report.header_json()["summary"]["drills"][0]["rto_stages"] == STAGES
    out = io.StringIO()
    write_markdown(report, out)
    # Each drill against the objectives recorded with it (in force when it ran).
    assert ("| db-plan | 2026-03-02T02:00:00.000000Z | breached | 15m 0s (incomplete) / 1h 0m "
            "| 11m 40s / 10m 0s | 12s | 3.2s | 40s | 1.5s | primary "
            "| 1 of 1 steps detected the damage |") in out.getvalue()
    html = render_html(report, [])
    table = html[html.index('id="drills-table"'):]
    assert '<td class="num">40s</td><td class="num">1.5s</td>' in table[:table.index("</table>")]

    assert CSV_COLUMNS[-8:] == ("evidence", "rto_restore_s", "rto_verify_s", "rto_load_s",
                                "rto_checks_s", "format", "actor", "config_hash")
    text = io.StringIO()
    with history.catalog.read_session() as session:
        write_csv(q.period_records_csv(session, q.Scope(T0, UNTIL)), text)
    rows = {r["kind"] + ":" + (r["plan"] or ""): r
            for r in csv.DictReader(io.StringIO(text.getvalue()))}
    drill = rows["drill:db-plan"]
    stages = CSV_COLUMNS[-7:-3]
    assert [drill[c] for c in stages] == ["12.5", "3.25", "40.0", "1.5"]
    assert json.loads(drill["evidence"])["rto_stages"] == STAGES
    assert [rows["drill:other-plan"][c] for c in stages] == ["", "", "", ""]
    assert [rows["backup:"][c] for c in stages] == ["", "", "", ""]
