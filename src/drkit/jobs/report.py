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


def in_force(session: Any, config: Config, plans: dict[str, RecoveryPlan], until: datetime,
             current_hash: str | None = None
             ) -> tuple[Config, dict[str, RecoveryPlan], dict[str, Any] | None]:
    """The config and plans in force at ``until`` (its ``config`` record), and what the
    report says of them; today's when none was recorded or it cannot be read back."""
    import json

    from pydantic import ValidationError

    from drkit.catalog.chain import canonical_json as canonical
    from drkit.catalog.chain import optional_time

    record = q.config_in_force(session, until, config.host)
    if record is None:
        return config, plans, None
    evidence = json.loads(record.evidence)
    meta: dict[str, Any] = {
        "config_hash": evidence.get("config_hash"), "record_id": record.id,
        "recorded_at": optional_time(record.finished_at), "hostname": record.hostname,
        "current": evidence.get("config_hash") == current_hash}
    effective = evidence.get("effective") or {}
    import hashlib

    from drkit.config.loader import config_model

    if hashlib.sha256(canonical(effective).encode("utf-8")).hexdigest() != \
            evidence.get("config_hash") or evidence.get("config_hash") != record.config_hash:
        meta["note"] = "the recorded config does not match its hash: today's used"
        return config, plans, meta

    try:
        past = config_model().model_validate(effective["config"])
        past_plans = {name: RecoveryPlan.model_validate(data)
                      for name, data in effective["plans"].items()}
    except (ValidationError, KeyError, TypeError, AttributeError) as exc:
        meta["note"] = f"recorded config not readable ({type(exc).__name__}): today's used"
        return config, plans, meta
    return past, past_plans, meta


def _render(catalog: Catalog, config: Config, plans: dict[str, RecoveryPlan], scope: Scope,
            fmt: str, path: Path) -> tuple[Report, int]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from drkit.reports import render

    # Verified by another process while this one builds the report (on another core); the
    # forked worker finds the config here (a config model cannot be pickled).
    _FOR_AUDIT[:] = [config]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        checking = pool.submit(_audit_job)
        current = config  # the key every report names is the one verification uses
        with catalog.read_session() as session:
            config, plans, meta = in_force(session, config, plans, scope.until,
                                           catalog.config_hash)
            report = build_report(session, config, plans, scope,
                                  series=fmt in ("html", "pdf"))
        report.audit, report.config_in_force = checking.result(), meta
        report.evidence_key = evidence_key(current)
        report.add_evidence_control(current)
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


_FOR_AUDIT: list[Config] = []


def _audit_job() -> dict[str, Any]:
    return audit_verdict(_FOR_AUDIT[0])


def audit_verdict(config: Config) -> dict[str, Any]:
    """``audit verify``'s verdict, run before any report is built."""
    from drkit.jobs.audit import verify

    try:
        result = verify(config).to_json()
    except Exception as exc:  # whatever it is, the report says it could not verify
        if not isinstance(exc, DrkitError):
            exc = DrkitError(f"{type(exc).__name__}: {exc}")
        return {"intact": False, "problems": [{"problem": "unverifiable",
                                               "detail": describe(exc)}],
                "first_break": {"problem": "unverifiable", "detail": describe(exc)}}
    if not result["intact"]:
        log.error("audit verify: the chain is broken (%s): the report says so first",
                  result["first_break"]["problem"])
    return result


def evidence_key(config: Config) -> dict[str, str] | None:
    """The evidence public key (and its id), which every report carries."""
    if config.evidence.public_key is None:
        return None
    from drkit.signing import key_id, public_bytes

    return {"public_key": config.evidence.public_key,
            "key_id": key_id(public_bytes(config.evidence.public_key))}


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
            path = Path(output) if output else reports_dir(config) / default_name(report, fmt)
            path = path.expanduser().absolute()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(scratch, path)
            except OSError as exc:
                raise DrkitError(f"cannot write the report to {path}: {exc.strerror}") from None
        run = ReportRun(format=fmt, path=path, report=report, records=count, sha256=digest)
        if report_output(config) is not None:
            _upload(config, plans, catalog, scope, run, Path(work), path or scratch)
    _record(config, catalog, run, started)
    return run


def report_output(config: Config) -> tuple[Any, tuple[str, int] | None] | None:
    """Where reports are uploaded, and the lock each upload gets: ``reports.output.s3``
    (the bucket's default lock), else the evidence bucket (``evidence.lock_mode`` for
    ``evidence.retain_days``, under ``reports/``); None when neither is set."""
    if config.reports and config.reports.output and config.reports.output.s3:
        return config.reports.output.s3, None
    bucket = config.evidence.bucket
    if bucket is None:
        return None
    return (bucket.model_copy(update={"prefix": bucket.prefix + "reports/"}),
            (config.evidence.lock_mode, config.evidence.retain_days))


def reports_dir(config: Config) -> Path:
    if config.reports and config.reports.output and config.reports.output.directory:
        return config.reports.output.directory
    return config.state_dir / "reports"


def _upload(config: Config, plans: dict[str, RecoveryPlan], catalog: Catalog, scope: Scope,
            run: ReportRun, work: Path, written: Path) -> None:
    from drkit.storage.evidence import upload_evidence

    target = report_output(config)
    assert target is not None
    output, lock = target
    name = default_name(run.report, run.format)
    files = [(written, name, CONTENT_TYPES[run.format])]
    if run.format != "json":  # a machine-readable copy next to every report
        copy = work / "copy.json"
        _render(catalog, config, plans, scope, "json", copy)
        files.append((copy, default_name(run.report, "json"), CONTENT_TYPES["json"]))
    try:
        run.uploads = [u.to_json() for u in upload_evidence(config, output, files, lock=lock)]
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
