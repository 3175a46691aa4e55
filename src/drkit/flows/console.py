"""The Prefect UI as the ops console: drkit's own log lines in each run's logs, a table
artifact for every backup and drill run, a link/markdown artifact for every report, and a
``drkit.drill.breached`` event for every drill that did not pass (for automations to page on).

Everything here only publishes: a failure to publish is logged, never turns a run's outcome.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("drkit.console")
BREACHED = "drkit.drill.breached"


@contextmanager
def run_logs() -> Iterator[None]:
    """While a task works, drkit's loggers (``drkit.*``) send INFO and above to the run's
    logs in Prefect, as well as wherever they went before."""
    from prefect.context import TaskRunContext
    from prefect.logging.handlers import APILogHandler

    from drkit.config.secrets import redact

    context = TaskRunContext.get()
    if context is None:
        yield
        return
    flow_run_id, task_run_id = context.task_run.flow_run_id, context.task_run.id

    class ForTheRun(APILogHandler):
        """Sends a copy of each record, stamped with the run it belongs to (lines from
        drkit's worker threads have no Prefect run context) and with every secret drkit
        knows masked, as drkit's own log output is (the Prefect API stores it)."""

        def emit(self, record: logging.LogRecord) -> None:
            masked = logging.makeLogRecord(record.__dict__)
            masked.msg, masked.args = redact(record.getMessage()), None
            masked.exc_info, masked.exc_text = None, None
            masked.flow_run_id, masked.task_run_id = flow_run_id, task_run_id
            super().emit(masked)

    logger = logging.getLogger("drkit")
    handler = ForTheRun()
    handler.setLevel(logging.INFO)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        try:
            handler.flush()
        except Exception as exc:  # the logs are a view; the run's outcome stands
            log.warning("could not send drkit's log lines to Prefect: %s", exc)


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts (lower-case letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:200]


def _publish(what: str, create: Any, *args: Any, **kwargs: Any) -> None:
    """``create(*args, **kwargs)`` with every secret drkit knows masked in its arguments."""
    from drkit.config.secrets import redact

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {masked(k): masked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [masked(v) for v in value]
        return value

    try:
        create(*masked(list(args)), **masked(kwargs))
    except Exception as exc:
        log.warning("could not publish the %s to Prefect: %s", what, exc)


def backup_artifact(target: str, runs: list[dict[str, Any]]) -> None:
    """A table: one row per repository the target went to."""
    from prefect.artifacts import create_table_artifact

    rows = [{"target": r["target"], "repository": r["repository"], "status": r["status"],
             "snapshot": (r.get("snapshot_id") or "")[:8], "bytes added": r.get("bytes_added"),
             "duration s": r.get("duration_s"), "record": r.get("record_id"),
             "anomaly": "; ".join(r.get("anomaly") or []), "error": r.get("error") or ""}
            for r in runs]
    _publish("backup table", create_table_artifact, rows, key=artifact_key("backup", target),
             description=f"backup of {target}: "
                         + ", ".join(f"{r['repository']} {r['status']}" for r in runs))


def drill_artifact(result: dict[str, Any]) -> None:
    """A table: each step's checks, then RPO and RTO against their objectives, the verdict."""
    from prefect.artifacts import create_table_artifact

    rows: list[dict[str, Any]] = []
    for step in result.get("steps", []):
        snapshot = (step.get("snapshot_id") or "")[:8]
        where = f"{step['target']} from {step['repository']} ({snapshot})"
        if step.get("error"):
            rows.append({"what": f"step {where}", "result": "error", "detail": step["error"]})
        for check in step.get("checks", []):
            rows.append({"what": f"check {check['name']} on {step['target']}",
                         "result": check["status"], "detail": check.get("detail", "")})
    for measure in ("rpo", "rto"):
        achieved, objective = result.get(f"{measure}_achieved_s"), result.get(
            f"{measure}_objective_s")
        met = achieved is not None and objective is not None and achieved <= objective
        rows.append({"what": f"{measure.upper()} achieved vs objective",
                     "result": "met" if met else "breached",
                     "detail": f"{_seconds(achieved)} vs {_seconds(objective)}"})
    rows.append({"what": "verdict", "result": result["status"],
                 "detail": result.get("error") or f"record {result.get('record_id')}"})
    _publish("drill table", create_table_artifact, rows,
             key=artifact_key("drill", result["plan"]),
             description=f"drill {result['plan']}: {result['status']}")


def report_artifact(path: str, summary: dict[str, Any]) -> None:
    """A link to the written report (and its uploads) and a markdown summary."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    for upload in summary.get("uploads") or []:
        _publish("report link", create_link_artifact, str(upload), link_text="report (evidence "
                 "bucket)", key=artifact_key("report-upload"))
    non_compliant = summary.get("non_compliant") or []
    lines = ["# drkit report", "", f"Written to `{path}` ({summary.get('records')} records).",
             ""]
    lines += ([f"**{len(non_compliant)} controls not met:**", ""]
              + [f"- `{item}`" for item in non_compliant]) if non_compliant else \
        ["Every control evaluated was met."]
    _publish("report summary", create_markdown_artifact, "\n".join(lines),
             key=artifact_key("report"), description=f"report at {path}")


def drill_event(result: dict[str, Any], site: str) -> None:
    """``drkit.drill.breached`` for a drill that failed or breached an objective."""
    if result.get("status") == "passed":
        return
    from prefect.events import emit_event

    _publish("drill event", emit_event, BREACHED,
             resource={"prefect.resource.id": f"drkit.plan.{result['plan']}",
                       "prefect.resource.name": result["plan"], "drkit.site": site},
             payload={"plan": result["plan"], "status": result["status"],
                      "error": result.get("error"),
                      "rpo_achieved_s": result.get("rpo_achieved_s"),
                      "rpo_objective_s": result.get("rpo_objective_s"),
                      "rto_achieved_s": result.get("rto_achieved_s"),
                      "rto_objective_s": result.get("rto_objective_s"),
                      "record_id": result.get("record_id")})


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} s"
