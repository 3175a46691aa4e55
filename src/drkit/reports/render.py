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
from drkit.reports.model import DrillRow, Report
from drkit.reports.rows import RTO_STAGES
from drkit.units import human_bytes, human_duration

FORMATS = ("html", "pdf", "csv", "json", "md")

# Stable, documented CSV columns (README "Reports"); new columns are only ever appended.
CSV_COLUMNS = ("seq", "record_id", "run_id", "kind", "status", "target", "repository", "plan",
               "started_at", "finished_at", "duration_s", "snapshot_id", "rpo_achieved_s",
               "rpo_objective_s", "rto_achieved_s", "rto_objective_s", "hostname",
               "drkit_version", "restic_version", "error", "hash", "prev_hash", "evidence",
               "rto_restore_s", "rto_verify_s", "rto_load_s", "rto_checks_s", "format",
               "actor", "config_hash")
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
    no_stages = ("",) * len(RTO_STAGES)
    for row in rows:
        drill: tuple[Any, ...] = blank
        stages: tuple[Any, ...] = no_stages
        if row.kind == "drill":
            evidence = json.loads(row.evidence)
            drill = tuple("" if evidence.get(n) is None else evidence[n] for n in _DRILL_FIELDS)
            spent = evidence.get("rto_stages") or {}
            stages = tuple("" if spent.get(n) is None else spent[n] for n in RTO_STAGES)
        writer.writerow((
            row.seq, row.id, row.run_id, row.kind, row.status, row.target, row.repository,
            row.plan, row.started_at, row.finished_at, f"{row.duration_s:.3f}",
            row.snapshot_id, *drill, row.hostname, row.drkit_version, row.restic_version,
            row.error, row.hash, row.prev_hash, row.evidence, *stages, row.format,
            row.actor, row.config_hash))
        count += 1
    return count


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def write_markdown(report: Report, out: TextIO) -> None:
    """The summary and control tables in GitHub-flavoured Markdown."""
    w = out.write
    w(f"**{report.verdict_line}**\n\n")
    w(f"# drkit compliance report: {iso(report.since)} to {iso(report.until)}\n\n")
    w(f"Generated {iso(report.generated_at)} on {report.hostname} by drkit "
      f"{report.drkit_version} from catalog chain head {report.chain_head_seq} "
      f"(`{report.chain_head_hash}`). Records in the period: {report.records_in_period}.\n\n")
    key = report.evidence_key
    w(f"Checkpoints signed by Ed25519 key `{key['key_id']}` (public key `{key['public_key']}`)."
      "\n\n" if key else "No evidence signing key is configured: the chain is not signed.\n\n")
    w("## Controls\n\n| control | subject | status | detail | references |\n"
      "|---|---|---|---|---|\n")
    for c in report.controls:
        w(f"| {c.control} | {c.subject} | {c.status} | {c.detail} "
          f"| {', '.join(c.references)} |\n")
    w("\n## Remediation items\n\n| item | plan | status | owner | due | what |\n"
      "|---|---|---|---|---|---|\n")
    for item in report.remediations:
        w(f"| {item['id']} | {item['plan']} | {item['status']} | {item['owner']} "
          f"| {item['due']} | {item['text']} |\n")
    if not report.remediations:
        w("| none open | | | | | |\n")
    w("\n## Backup anomalies\n\n| record | target | repository | finished | why | "
      "acknowledged |\n|---|---|---|---|---|---|\n")
    for a in report.anomalies:
        ack = f"record {a['ack_record']} by {a['acknowledged_by']}: {a['ack_reason']}" \
            if a["ack_record"] else "OPEN"
        w(f"| {a['record_id']} | {a['target']} | {a['repository']} | {a['finished_at']} "
          f"| {'; '.join(a['reasons'])} | {ack} |\n")
    if not report.anomalies:
        w("| none | | | | | |\n")
    w("\n## Capacity\n\n| repository | size | growth/day | quota | quota reached "
      "| full read-data |\n|---|---|---|---|---|---|\n")
    for f in report.capacity:
        w(f"| {f.repository} | {human_bytes(f.size)} | "
          f"{human_bytes(int(f.growth_per_day)) if f.growth_per_day else '-'} | "
          f"{human_bytes(f.quota)} | {iso(f.quota_at) if f.quota_at else '-'} | "
          f"{human_duration(f.full_read_s)} |\n")
    w("\n## Recovery plans\n\n| plan | drills | passed | breached | failed | checks too weak "
      "| RPO compliance | RTO compliance | RPO worst / median / objective "
      "| RTO worst / median / objective | drill every | last passed drill |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for p in report.plans:
        every = "-" if p.drill_every_s is None else (
            human_duration(p.drill_every_s) + (" (overdue)" if p.overdue else ""))
        w(f"| {p.plan} | {p.drills} | {p.passed} | {p.breached} | {p.failed + p.interrupted} "
          f"| {p.checks_too_weak} | {_rate(p.rpo_compliance_rate)} "
          f"| {_rate(p.rto_compliance_rate)} "
          f"| {human_duration(p.rpo_worst_s)} / {human_duration(p.rpo_median_s)} / "
          f"{human_duration(p.rpo_objective_s)} | {human_duration(p.rto_worst_s)} / "
          f"{human_duration(p.rto_median_s)} / {human_duration(p.rto_objective_s)} "
          f"| {every} | {iso(p.last_passed_at) or 'never'} |\n")
    w("\n## Drills\n\n| plan | finished | status | RPO achieved / objective then "
      "| RTO achieved / objective then | restore "
      "| verify | database load | checks | repositories restored | checks proven |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n")
    for d in report.drills:
        stages = " | ".join(human_duration(d.rto_stages.get(n)) for n in RTO_STAGES)
        w(f"| {d.plan} | {iso(d.finished_at)} | {d.status} | {_rpo(d)} / "
          f"{human_duration(d.rpo_objective_s)} | {human_duration(d.rto_achieved_s)} / "
          f"{human_duration(d.rto_objective_s)} | {stages} "
          f"| {', '.join(d.repositories) or '-'} | {_proven(d)} |\n")
    if not report.drills:
        w("| no drill in the period | | | | | | | | | | |\n")
    w("\n## Recoveries and restores\n\n| kind | subject | finished | status | actor | reason "
      "| RTO achieved | put back into |\n|---|---|---|---|---|---|---|---|\n")
    for rec in report.recoveries:
        w(f"| {rec.kind} | {rec.subject} | {iso(rec.finished_at)} | {rec.status} "
          f"| {rec.actor or '-'} | {rec.reason or '-'} | {human_duration(rec.rto_achieved_s)} "
          f"| {', '.join(rec.destinations)} |\n")
    if not report.recoveries:
        w("| none in the period | | | | | | | |\n")
    w("\n## Targets\n\n| target | backups | failed | oldest last recovery point "
      "| longest RPO exposure | worst repository | RPO objective | checks passed "
      "| checks failed |\n|---|---|---|---|---|---|---|---|---|\n")
    for t in report.targets:
        w(f"| {t.target} | {t.backups} | {t.failed} "
          f"| {iso(t.last_recovery_point_at) or 'never'} "
          f"| {human_duration(t.longest_rpo_exposure_s)} | {t.worst_repository or '-'} "
          f"| {human_duration(t.rpo_objective_s)} | {t.checks_passed} | {t.checks_failed} |\n")
    w("\n### RPO exposure per repository\n\n| target | repository | good backups "
      "| last recovery point | longest exposure | open exposure |\n"
      "|---|---|---|---|---|---|\n")
    for t in report.targets:
        for copy in t.by_repository:
            w(f"| {t.target} | {copy.repository}{'' if copy.declared else ' (not declared)'} "
              f"| {copy.good_backups} | {iso(copy.last_recovery_point_at) or 'never'} "
              f"| {human_duration(copy.longest_exposure_s)} "
              f"| {human_duration(copy.open_exposure_s)} |\n")
    w("\n## Repositories\n\n| repository | checks | passed | failed | last check |\n"
      "|---|---|---|---|---|\n")
    for r in report.repositories:
        w(f"| {r.repository} | {r.checks} | {r.checks_passed} | {r.checks_failed} "
          f"| {r.last_check_status or '-'} {iso(r.last_check_at) or ''} |\n")


def _rpo(drill: DrillRow) -> str:
    """The RPO a drill achieved; a lower bound when some steps were not restored."""
    text = human_duration(drill.rpo_achieved_s)
    return text if drill.rpo_complete else f"{text} (incomplete)"


def _proven(drill: DrillRow) -> str:
    """--prove-checks: how many steps' checks failed on a damaged copy, as they should."""
    if drill.proofs is None:
        return "-"
    return f"{drill.proofs_detected} of {drill.proofs} steps detected the damage"


def render_html(report: Report, rows: Iterable[Any]) -> str:
    """The self-contained HTML report (inline CSS, inline SVG charts, no scripts)."""
    import jinja2

    from drkit.reports.charts import time_chart

    env = jinja2.Environment(loader=jinja2.PackageLoader("drkit", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = human_duration
    env.filters["iso"] = lambda v: iso(v) if isinstance(v, datetime) else (v or "")
    env.filters["rate"] = _rate
    env.filters["bytes"] = lambda v: human_bytes(int(v)) if isinstance(v, int | float) else "-"
    env.globals.update(rpo=_rpo, proven=_proven, stages=RTO_STAGES)
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
        label="age of the newest backed-up data, at each good backup (every repository)")
        for t in report.targets}
    template = env.get_template("report.html.j2")
    return template.render(report=report, records=rows, plan_charts=plan_charts,
                           target_charts=target_charts,
                           capacity_charts=_capacity_charts(report))


def _capacity_charts(report: Report) -> dict[str, str]:
    """Per measured repository: its size over the period, the forecast line and the quota
    (the chart runs on to the day the quota is reached, up to 90 days past the period)."""
    from datetime import timedelta

    from drkit.reports.charts import time_chart

    charts = {}
    for found in report.capacity:
        if not found.points:
            continue
        until = report.until
        if found.quota_at is not None:
            until = max(until, min(found.quota_at, until + timedelta(days=90)))
        trend = None
        if found.growth_per_day is not None and found.measured_at is not None \
                and found.size is not None:
            days = (until - found.measured_at).total_seconds() / 86400
            trend = ((found.measured_at, float(found.size)),
                     (until, found.size + found.growth_per_day * days))
        charts[found.repository] = time_chart(
            f"stored size, repository {found.repository}",
            [(at, float(size), "succeeded") for at, size in found.points],
            since=report.since, until=until, objective=found.quota, label="stored size at "
            "each check, the trend (dotted) and the quota", fmt=lambda v: human_bytes(int(v)),
            objective_label="quota", trend=trend)
    return charts


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
