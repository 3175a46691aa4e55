"""``report``: build the report for a period, write it, upload it as evidence, record it.

The report itself becomes a catalog record (``kind="report"``) holding the period, the chain
head it was built from, the file's SHA-256 and where it was uploaded, so a reviewer holding a
report file can find and verify it in the chain.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drkit.catalog import report_queries as q
from drkit.catalog.inflight import utcnow
from drkit.catalog.report_queries import Scope
from drkit.catalog.store import Catalog, NewRecord
from drkit.config.models import Config, parse_duration
from drkit.drills.plans import RecoveryPlan
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.notify import notify_failure
from drkit.reports.model import Report, build_report

log = logging.getLogger("drkit.report")
DEFAULT_PERIOD = "30d"
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "pdf": "application/pdf",
                 "csv": "text/csv; charset=utf-8", "json": "application/json",
                 "md": "text/markdown; charset=utf-8"}


@dataclass
class ReportRun:
    format: str
    path: Path | None  # None: written to stdout
    report: Report
    records: int
    sha256: str
    uploads: list[dict[str, Any]] = field(default_factory=list)
    status: str = "succeeded"
    error: str | None = None
    record_id: int | None = None


def _moment(text: str, *, end: bool) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise) as naive UTC. A bare date as
    ``--until`` means the end of that day, so ``--until 2026-09-30`` includes September 30."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"not a date or duration: {text!r}",
                              hint="use e.g. 30d, 12h, 2026-09-30 or 2026-09-30T18:00:00Z"
                              ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        value += timedelta(days=1)
    return value


def parse_moment(text: str) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise) as naive UTC."""
    try:
        return _moment(text, end=False)
    except BadRequestError:
        raise BadRequestError(f"not a date or date-time: {text!r}",
                              hint="use e.g. 2026-09-30 or 2026-09-30T18:00:00Z") from None


def parse_period(since: str | None, until: str | None, *,
                 now: datetime | None = None) -> tuple[datetime, datetime]:
    """``--since`` (a duration back from ``--until``, or a date) and ``--until`` (a date,
    default now) as naive UTC ``[since, until)``. Raises :class:`BadRequestError`."""
    now = now or utcnow()
    end = _moment(until, end=True) if until else now
    text = since or DEFAULT_PERIOD
    if re.fullmatch(r"\d+(\.\d+)?[smhdw]?", text.strip()):
        start = end - timedelta(seconds=parse_duration(text))
    else:
        start = _moment(text, end=False)
    if start >= end:
        raise BadRequestError(f"the period is empty: {start:%Y-%m-%d %H:%M} is not before "
                              f"{end:%Y-%m-%d %H:%M}")
    return start, end


def scope_for(config: Config, plans: dict[str, RecoveryPlan], since: datetime, until: datetime,
              *, plan_names: list[str], target_names: list[str]) -> Scope:
    """The report's subjects: everything, or the named plans (and the targets they restore)
    and targets (and the plans that restore them), with those targets' repositories."""
    if not plan_names and not target_names:
        return Scope(since, until)
    for name in plan_names:
        if name not in plans:
            raise BadRequestError(f"unknown plan {name!r} (declared: {', '.join(plans) or '-'})")
    for name in target_names:
        if name not in config.targets:
            raise BadRequestError(f"unknown target {name!r} (declared: "
                                  f"{', '.join(config.targets) or '-'})")
    chosen_plans = set(plan_names)
    targets = set(target_names)
    for name in plan_names:
        targets |= {step.target for step in plans[name].steps}
    for plan in plans.values():
        if any(step.target in target_names for step in plan.steps):
            chosen_plans.add(plan.name)
    repositories = {r for t in targets if t in config.targets
                    for r in config.holding(t)}
    return Scope(since, until, plans=frozenset(chosen_plans), targets=frozenset(targets),
                 repositories=frozenset(repositories))


def default_name(report: Report, fmt: str) -> str:
    return (f"drkit-report-{report.since:%Y%m%d}-{report.until:%Y%m%d}-"
            f"{report.generated_at:%Y%m%dT%H%M%SZ}.{fmt}")


def _render(catalog: Catalog, config: Config, plans: dict[str, RecoveryPlan], scope: Scope,
            fmt: str, path: Path) -> tuple[Report, int]:
    from drkit.reports import render

    with catalog.read_session() as session:
        report = build_report(session, config, plans, scope, series=fmt in ("html", "pdf"))
        with path.open("w", encoding="utf-8", newline="") as out:
            if fmt == "json":
                return report, render.write_json(report, q.period_records_json(session, scope),
                                                 out)
            if fmt == "csv":
                return report, render.write_csv(q.period_records_csv(session, scope), out)
            if fmt == "md":
                render.write_markdown(report, out)
                return report, report.records_in_period
            html = render.render_html(report, q.period_records(session, scope))
            if fmt == "html":
                out.write(html)
                return report, report.records_in_period
    path.write_bytes(render.render_pdf(html))
    return report, report.records_in_period


def run_report(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog, scope: Scope,
               *, fmt: str, output: str | None, interactive: bool = True) -> ReportRun:
    """Write the report to ``output`` (a path; ``-`` for stdout; None: stdout for the text
    formats when ``interactive``, else the reports directory), upload it when configured, and
    append its ``report`` record. Raises :class:`DrkitError` when it cannot be written."""
    started = utcnow()
    to_stdout = output == "-" or (output is None and interactive
                                  and fmt in ("json", "csv", "md"))
    if to_stdout and fmt == "pdf":
        raise BadRequestError("a PDF report needs --output FILE")
    with tempfile.TemporaryDirectory(prefix="drkit-report-") as work:
        scratch = Path(work) / f"report.{fmt}"
        report, count = _render(catalog, config, plans, scope, fmt, scratch)
        digest = hashlib.sha256(scratch.read_bytes()).hexdigest()
        path: Path | None = None
        if to_stdout:
            with scratch.open("rb") as source:
                shutil.copyfileobj(source, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            path = Path(output) if output else _reports_dir(config) / default_name(report, fmt)
            path = path.expanduser().absolute()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(scratch, path)
            except OSError as exc:
                raise DrkitError(f"cannot write the report to {path}: {exc.strerror}") from None
        run = ReportRun(format=fmt, path=path, report=report, records=count, sha256=digest)
        s3 = config.reports.output.s3 if config.reports and config.reports.output else None
        if s3 is not None:
            _upload(config, plans, catalog, scope, run, Path(work), path or scratch)
    _record(config, catalog, run, started)
    return run


def _reports_dir(config: Config) -> Path:
    if config.reports and config.reports.output and config.reports.output.directory:
        return config.reports.output.directory
    return config.state_dir / "reports"


def _upload(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog, scope: Scope,
            run: ReportRun, work: Path, written: Path) -> None:
    from drkit.storage.evidence import upload_evidence

    assert config.reports and config.reports.output and config.reports.output.s3
    name = default_name(run.report, run.format)
    files = [(written, name, CONTENT_TYPES[run.format])]
    if run.format != "json":  # a machine-readable copy next to every report
        copy = work / "copy.json"
        _render(catalog, config, plans, scope, "json", copy)
        files.append((copy, default_name(run.report, "json"), CONTENT_TYPES["json"]))
    try:
        run.uploads = [u.to_json() for u in upload_evidence(config, config.reports.output.s3,
                                                            files)]
    except DrkitError as exc:
        run.status, run.error = "failed", f"upload failed: {describe(exc)}"


def _record(config: Config, catalog: Catalog, run: ReportRun, started: datetime) -> None:
    record = catalog.append(NewRecord(
        kind="report", status=run.status, started_at=started, finished_at=utcnow(),
        error=run.error, evidence={
            "format": run.format, "path": str(run.path) if run.path else "stdout",
            "sha256": run.sha256, "records": run.records,
            "since": run.report.since, "until": run.report.until,
            "built_from_head_seq": run.report.chain_head_seq,
            "built_from_head_hash": run.report.chain_head_hash,
            "filters": run.report.filters,
            "non_compliant": [f"{c.control}:{c.subject}" for c in run.report.non_compliant],
            "uploads": run.uploads}))
    run.record_id = record.id
    if run.status != "succeeded":
        notify_failure(config, "report", run.status, error=run.error, run_id=record.run_id,
                       record_id=record.id)
