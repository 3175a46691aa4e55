"""Renderers: one report model, five formats.

JSON and CSV stream the period's records straight from the database cursor (evidence is
copied as the stored JSON text, never parsed and re-encoded), so they stay fast at 100,000
records. HTML (Jinja2, inline CSS and SVG) and PDF (WeasyPrint, from the same HTML) are for
people; Markdown carries the summary tables for tickets and wikis.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TextIO

from drkit.catalog.chain import optional_time as iso
from drkit.errors import DrkitError
from drkit.reports.model import Report
from drkit.units import human_duration

FORMATS = ("html", "pdf", "csv", "json", "md")

# Stable, documented CSV columns (README "Reports"); new columns are only ever appended.
CSV_COLUMNS = ("seq", "record_id", "run_id", "kind", "status", "target", "repository", "plan",
               "started_at", "finished_at", "duration_s", "snapshot_id", "rpo_achieved_s",
               "rpo_objective_s", "rto_achieved_s", "rto_objective_s", "hostname",
               "drkit_version", "restic_version", "error", "hash", "prev_hash", "evidence")
_DRILL_FIELDS = ("rpo_achieved_s", "rpo_objective_s", "rto_achieved_s", "rto_objective_s")


def write_json(report: Report, records: Iterable[str], out: TextIO) -> int:
    """The header (period, summary, controls) then every record (JSON objects as text, from
    :func:`~drkit.catalog.report_queries.period_records_json`); returns the record count."""
    head = json.dumps(report.header_json(), indent=2, ensure_ascii=False)
    out.write(head[:-2] + ',\n  "records": [')  # reopen the document before its last "}"
    count = 0
    for text in records:
        out.write(("\n    " if count == 0 else ",\n    ") + text)
        count += 1
    out.write("\n  ]\n}\n")
    return count


def write_csv(rows: Iterable[Any], out: TextIO) -> int:
    """One row per record, :data:`CSV_COLUMNS` (rows from
    :func:`~drkit.catalog.report_queries.period_records_csv`); returns the record count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    blank = ("",) * len(_DRILL_FIELDS)
    for row in rows:
        drill: tuple[Any, ...] = blank
        if row.kind == "drill":
            evidence = json.loads(row.evidence)
            drill = tuple("" if evidence.get(n) is None else evidence[n] for n in _DRILL_FIELDS)
        writer.writerow((
            row.seq, row.id, row.run_id, row.kind, row.status, row.target, row.repository,
            row.plan, row.started_at, row.finished_at, f"{row.duration_s:.3f}",
            row.snapshot_id, *drill, row.hostname, row.drkit_version, row.restic_version,
            row.error, row.hash, row.prev_hash, row.evidence))
        count += 1
    return count


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def write_markdown(report: Report, out: TextIO) -> None:
    """The summary and control tables in GitHub-flavoured Markdown."""
    w = out.write
    w(f"# drkit compliance report: {iso(report.since)} to {iso(report.until)}\n\n")
    w(f"Generated {iso(report.generated_at)} on {report.hostname} by drkit "
      f"{report.drkit_version} from catalog chain head {report.chain_head_seq} "
      f"(`{report.chain_head_hash}`). Records in the period: {report.records_in_period}.\n\n")
    w("## Controls\n\n| control | subject | status | detail |\n|---|---|---|---|\n")
    for c in report.controls:
        w(f"| {c.control} | {c.subject} | {c.status} | {c.detail} |\n")
    w("\n## Recovery plans\n\n| plan | drills | passed | breached | failed | RPO compliance "
      "| RTO compliance | RPO worst / median / objective | RTO worst / median / objective |\n"
      "|---|---|---|---|---|---|---|---|---|\n")
    for p in report.plans:
        w(f"| {p.plan} | {p.drills} | {p.passed} | {p.breached} | {p.failed + p.interrupted} "
          f"| {_rate(p.rpo_compliance_rate)} | {_rate(p.rto_compliance_rate)} "
          f"| {human_duration(p.rpo_worst_s)} / {human_duration(p.rpo_median_s)} / "
          f"{human_duration(p.rpo_objective_s)} | {human_duration(p.rto_worst_s)} / "
          f"{human_duration(p.rto_median_s)} / {human_duration(p.rto_objective_s)} |\n")
    w("\n## Targets\n\n| target | backups | failed | last good backup | longest RPO exposure "
      "| RPO objective | checks passed | checks failed |\n|---|---|---|---|---|---|---|---|\n")
    for t in report.targets:
        w(f"| {t.target} | {t.backups} | {t.failed} | {iso(t.last_good_at) or 'never'} "
          f"| {human_duration(t.longest_rpo_exposure_s)} | {human_duration(t.rpo_objective_s)} "
          f"| {t.checks_passed} | {t.checks_failed} |\n")
    w("\n## Repositories\n\n| repository | checks | passed | failed | last check |\n"
      "|---|---|---|---|---|\n")
    for r in report.repositories:
        w(f"| {r.repository} | {r.checks} | {r.checks_passed} | {r.checks_failed} "
          f"| {r.last_check_status or '-'} {iso(r.last_check_at) or ''} |\n")


def render_html(report: Report, rows: Iterable[Any]) -> str:
    """The self-contained HTML report (inline CSS, inline SVG charts, no scripts)."""
    import jinja2

    from drkit.reports.charts import time_chart

    env = jinja2.Environment(loader=jinja2.PackageLoader("drkit", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = human_duration
    env.filters["iso"] = lambda v: iso(v) if isinstance(v, datetime) else (v or "")
    env.filters["rate"] = _rate
    plan_charts = {p.plan: time_chart(
        f"RTO achieved, plan {p.plan}",
        [(pt.finished_at, pt.rto_achieved_s, pt.status) for pt in p.points
         if pt.rto_achieved_s is not None],
        since=report.since, until=report.until, objective=p.rto_objective_s,
        label="RTO achieved per drill") for p in report.plans}
    target_charts = {t.target: time_chart(
        f"RPO exposure, target {t.target}",
        [(at, gap, "succeeded") for at, gap in t.exposure_series],
        since=report.since, until=report.until, objective=t.rpo_objective_s,
        label="time since the previous good backup, at each backup") for t in report.targets}
    template = env.get_template("report.html.j2")
    return template.render(report=report, records=rows, plan_charts=plan_charts,
                           target_charts=target_charts)


def render_pdf(html: str) -> bytes:
    """The HTML report as PDF (WeasyPrint). Raises :class:`DrkitError` if it is missing."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:
        raise DrkitError(f"PDF reports need WeasyPrint and Pango ({exc})",
                         hint="pip install 'drkit[pdf]' (Debian: apt-get install "
                              "libpango-1.0-0 libpangoft2-1.0-0), or use --format html") from None
    document: bytes = HTML(string=html).write_pdf()
    return document
