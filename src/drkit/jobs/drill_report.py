"""``drkit report drill RECORD_ID``: the DR test report of one drill, written, recorded (a
``report`` record naming the drill and the file's SHA-256) and, when configured, uploaded to
the evidence bucket like any report."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sqlalchemy import select

from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Record
from drkit.catalog.remediation import items
from drkit.catalog.store import Catalog, NewRecord
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError, describe
from drkit.jobs.report import (
    CONTENT_TYPES,
    ReportRun,
    audit_verdict,
    evidence_key,
    report_output,
    reports_dir,
)
from drkit.reports.drill import DrillReport, build_drill_report, render_html, render_markdown


def drill_report(config: Config, catalog: Catalog, record_id: int) -> DrillReport:
    """The DR test report of drill record ``record_id`` (a bad request if it is none)."""
    audit = audit_verdict(config)
    with catalog.read_session() as session:
        record = session.get(Record, record_id)
        if record is None or record.kind != "drill":
            raise BadRequestError(f"record {record_id} is not a drill",
                                  hint="drkit report --format json lists the drills' records")
        config_record = session.scalars(
            select(Record).where(Record.kind == "config", Record.seq < record.seq,
                                 Record.hostname == record.hostname,
                                 Record.config_hash == record.config_hash)
            .order_by(Record.seq.desc()).limit(1)).first() if record.config_hash else None
        now = utcnow()
        found = [i.to_json() for i in items(session) if i.plan == record.plan
                 and (i.open_at(now) or i.drill_record == record.id)]
        report = build_drill_report(record, config_record, found)
    report.audit, report.evidence_key = audit, evidence_key(config)
    report.generated = {"at": now.isoformat() + "Z", "hostname": catalog.hostname,
                        "by": catalog.actor}
    return report


def run_drill_report(config: Config, catalog: Catalog, record_id: int, *, fmt: str,
                     output: str | None) -> ReportRun:
    """Write the report (``output``: a file, ``-`` for stdout; default: the reports
    directory), upload it when configured, and record it."""
    from drkit.reports.render import render_pdf

    started = utcnow()
    report = drill_report(config, catalog, record_id)
    if fmt == "json":
        body = (json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n").encode()
    elif fmt == "md":
        body = render_markdown(report).encode()
    elif fmt == "html":
        body = render_html(report).encode()
    elif fmt == "pdf":
        body = render_pdf(render_html(report))
    else:
        raise BadRequestError(f"a drill's report is html, pdf, md or json, not {fmt}")
    digest = hashlib.sha256(body).hexdigest()
    path: Path | None = None
    if output == "-":
        if fmt == "pdf":
            raise BadRequestError("a PDF report needs --output FILE")
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        path = Path(output) if output else reports_dir(config) / (
            f"drkit-drill-{record_id}-{started:%Y%m%dT%H%M%SZ}.{fmt}")
        path = path.expanduser().absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        except OSError as exc:
            raise DrkitError(f"cannot write the report to {path}: {exc.strerror}") from None
    run = ReportRun(format=fmt, path=path, report=report, records=1,  # type: ignore[arg-type]
                    sha256=digest)
    target = report_output(config)
    if target is not None and path is not None:
        from drkit.storage.evidence import upload_evidence

        try:
            run.uploads = [u.to_json() for u in upload_evidence(
                config, target[0], [(path, path.name, CONTENT_TYPES[fmt])], lock=target[1])]
        except DrkitError as exc:
            run.status, run.error = "failed", f"upload failed: {describe(exc)}"
    record = catalog.append(NewRecord(
        kind="report", status=run.status, started_at=started, finished_at=utcnow(),
        plan=report.plan["name"], error=run.error,
        evidence={"report": "drill", "drill_record": record_id, "format": fmt,
                  "path": str(path) if path else "stdout", "sha256": digest,
                  "drill_status": report.record["status"], "uploads": run.uploads,
                  "chain_intact": (report.audit or {}).get("intact")}))
    run.record_id = record.id
    return run
