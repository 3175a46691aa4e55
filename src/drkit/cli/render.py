"""Human-readable tables for the commands' results: drawn with rich on a terminal, plain
aligned text otherwise (logs, cron mail; and no rich import on a backup's path). JSON output
does not come here."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from drkit.units import human_age, human_bytes

if TYPE_CHECKING:
    from drkit.drills.result import DrillResult
    from drkit.jobs.backup import BackupRun
    from drkit.jobs.check import CheckRun
    from drkit.jobs.prune import PruneRun
    from drkit.jobs.repo import RepoInitResult
    from drkit.jobs.snapshots import SnapshotRow
    from drkit.jobs.status import PlanStatus, RepositoryCheckStatus, TargetStatus

_STYLE = {"succeeded": "green", "created": "green", "exists": "green", "failed": "red",
          "interrupted": "yellow", "passed": "green", "breached": "yellow",
          "checks_too_weak": "red", "detected": "green"}


_MARKUP = re.compile(r"\[/?(?:green|red|yellow)?\]")


class Table:
    """A titled table: columns, then rows of cells (which may hold our colour markup)."""

    def __init__(self, title: str, title_justify: str = "left") -> None:
        self.title = title
        self.columns: list[str] = []
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, name: str) -> None:
        self.columns.append(name)

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)


class _Out:
    """Prints tables and lines: rich on a terminal, plain text otherwise."""

    def print(self, item: Table | str, markup: bool = True) -> None:
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table as RichTable

            console = Console(highlight=False, soft_wrap=False)
            if isinstance(item, Table):
                drawn = RichTable(title=item.title, title_justify="left")
                for column in item.columns:
                    drawn.add_column(column)
                for row in item.rows:
                    drawn.add_row(*row)
                console.print(drawn)
            else:
                console.print(item, markup=markup)
            return
        if isinstance(item, str):
            print(_MARKUP.sub("", item))
            return
        rows = [tuple(_MARKUP.sub("", cell) for cell in row) for row in item.rows]
        widths = [max([len(column)] + [len(row[i]) for row in rows if i < len(row)])
                  for i, column in enumerate(item.columns)]
        print(item.title)
        for cells in (tuple(item.columns), *rows):
            print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths,
                                                                     strict=False)).rstrip())


def _console() -> _Out:
    return _Out()


def _status(text: str | None) -> str:
    if text is None:
        return "-"
    style = _STYLE.get(text)
    return f"[{style}]{text}[/]" if style else text


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "never"


def backup_table(runs: Sequence[BackupRun]) -> None:
    table = Table(title="backup", title_justify="left")
    for column in ("target", "repository", "status", "snapshot", "added", "new", "changed",
                   "duration"):
        table.add_column(column)
    for run in runs:
        status = "dry run" if run.dry_run and run.status == "succeeded" else run.status
        table.add_row(run.target, run.repository, _status(status),
                      (run.snapshot_id or "-")[:8], human_bytes(run.bytes_added),
                      str(run.files_new if run.files_new is not None else "-"),
                      str(run.files_changed if run.files_changed is not None else "-"),
                      f"{run.duration_s:.1f} s")
    _console().print(table)
    for run in runs:
        if run.error:
            _console().print(f"[red]{run.target} -> {run.repository}:[/] {run.error}",
                             markup=True)


def snapshots_table(rows: Sequence[SnapshotRow]) -> None:
    table = Table(title="snapshots", title_justify="left")
    for column in ("id", "time", "target", "repository", "host", "paths", "copy of"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.id[:8], row.time.replace("T", " ")[:19], row.target or "-",
                      row.repository, row.hostname, ", ".join(row.paths),
                      f"{row.copy_of[1][:8]} in {row.copy_of[0]}" if row.copy_of else "-")
    _console().print(table)


def status_table(statuses: Sequence[TargetStatus]) -> None:
    """One row per copy (target x repository): each copy's own data age against the RPO,
    measured from its recovery point (when its last good backup started)."""
    table = Table(title="status", title_justify="left")
    for column in ("target", "repository", "last good backup", "data age", "RPO", "last run",
                   "last drill", "error"):
        table.add_column(column)
    for status in statuses:
        for index, repo in enumerate(status.repositories):
            first = index == 0
            rpo = "-" if status.rpo_objective_s is None else (
                ("[green]ok[/]" if repo.rpo_ok else "[red]breached[/]")
                + f" ({human_age(status.rpo_objective_s)})")
            table.add_row(
                status.target if first else "", repo.repository,
                _when(repo.last_success_at) if repo.last_success_at else "never",
                _age(repo.age_s), rpo, _status(repo.last_status or "never run"),
                _status(status.last_drill_status) if first else "",
                (repo.last_error or "")[:80])
    _console().print(table)
    for status in statuses:
        for anomaly in status.anomalies:
            _console().print(
                f"ANOMALY {status.target} -> {anomaly.repository}: backup record "
                f"{anomaly.record_id} ({_when(anomaly.finished_at)}, snapshot "
                f"{(anomaly.snapshot_id or '-')[:8]}): {'; '.join(anomaly.reasons)}. Look at "
                f"it, then `drkit ack {anomaly.record_id} --reason ...`; a drill with "
                "`pick: last_normal` restores the backup before it.", markup=False)


def plans_table(plans: Sequence[PlanStatus]) -> None:
    table = Table(title="recovery plans", title_justify="left")
    for column in ("plan", "last drill", "status", "RPO achieved / objective",
                   "RTO achieved / objective"):
        table.add_column(column)
    for plan in plans:
        drilled = _when(plan.last_drill_at) if plan.last_drill_at else "never"
        if plan.overdue and plan.drill_every_s is not None:
            drilled += f" [red](overdue: every {human_age(plan.drill_every_s)})[/]"
        table.add_row(plan.plan, drilled, _status(plan.last_drill_status),
                      f"{_age(plan.rpo_achieved_s)} / {human_age(plan.rpo_objective_s)}",
                      f"{_age(plan.rto_achieved_s)} / {human_age(plan.rto_objective_s)}")
    _console().print(table)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else human_age(seconds)


def _vs(achieved: float | None, objective: float) -> str:
    if achieved is None:
        return f"- / {human_age(objective)}"
    style = "green" if achieved <= objective else "red"
    return f"[{style}]{achieved:.1f} s[/] / {human_age(objective)}"


def drill_summary(result: DrillResult) -> None:
    table = Table(title=f"drill {result.plan}", title_justify="left")
    for column in ("step", "snapshot", "restore", "check", "result", "detail"):
        table.add_column(column)
    for step in result.steps:
        snap = (step.snapshot_id or "-")[:8]
        if step.snapshot_time is not None:
            snap += " " + step.snapshot_time.strftime("%Y-%m-%d %H:%M:%S")
        restore = f"{step.restore_s:.1f} s" if step.restore_s is not None else "-"
        if step.error:
            table.add_row(step.target, snap, restore, "restore", _status("failed"), step.error)
        for index, check in enumerate(step.checks):
            first = index == 0 and not step.error
            table.add_row(step.target if first else "", snap if first else "",
                          restore if first else "", check.name, _status(check.status),
                          check.detail[:100])
        if step.proof is not None:
            table.add_row("", "", "", "checks on a damaged copy",
                          _status("detected" if step.proof.detected else "checks_too_weak"),
                          step.proof.describe()[:160])
    console = _console()
    console.print(table)
    console.print(f"RPO achieved {_vs(result.rpo_achieved_s, result.rpo_objective_s)}   "
                  f"RTO achieved {_vs(result.rto_achieved_s, result.rto_objective_s)}")
    console.print(f"verdict: {_status(result.status)}"
                  + (f" - {result.error}" if result.error and result.status != "passed" else "")
                  + (f" (sandbox kept: {result.sandbox})" if result.sandbox_kept else ""))


def repo_init_table(results: Sequence[RepoInitResult]) -> None:
    table = Table(title="repo init", title_justify="left")
    for column in ("repository", "status", "bucket", "error"):
        table.add_column(column)
    for result in results:
        table.add_row(result.repository, _status(result.status),
                      "created" if result.bucket_created else "-", result.error or "")
    _console().print(table)


def check_table(runs: Sequence[CheckRun]) -> None:
    table = Table(title="check", title_justify="left")
    for column in ("repository", "status", "data read", "duration", "versioning",
                   "object lock", "encryption"):
        table.add_column(column)
    for run in runs:
        posture = run.posture or {}
        lock = posture.get("object_lock")
        table.add_row(run.repository, _status(run.status), run.read_data_subset or "none",
                      f"{run.duration_s:.1f} s", str(posture.get("versioning", "-")),
                      "-" if not posture else (f"{posture.get('object_lock_mode')} "
                                               f"{posture.get('object_lock_days')}d"
                                               if lock else str(lock)),
                      str(posture.get("encryption") or "-"))
    console = _console()
    console.print(table)
    for run in runs:
        for error in run.errors:
            console.print(f"[red]{run.repository}:[/] {error}")


def checks_table(checks: Sequence[RepositoryCheckStatus]) -> None:
    table = Table(title="repository checks", title_justify="left")
    for column in ("repository", "last check", "status", "data read"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.repository, _when(check.last_check_at),
                      _status(check.last_check_status or "never"),
                      check.read_data_subset or "-")
    _console().print(table)


def prune_table(runs: Sequence[PruneRun]) -> None:
    table = Table(title="prune", title_justify="left")
    for column in ("target", "repository", "status", "kept", "removed", "error"):
        table.add_column(column)
    for run in runs:
        status = "dry run" if run.dry_run and run.status == "succeeded" else run.status
        table.add_row(run.target, run.repository, _status(status), str(len(run.kept)),
                      str(len(run.removed)) + (" (would be)" if run.dry_run else ""),
                      run.error or "")
    _console().print(table)


def capacity_lines(forecasts: Sequence[dict[str, object]]) -> None:
    """One line per measured repository: size, growth, the quota and when it is reached."""
    console = _console()
    for found in forecasts:
        size = found.get("size")
        if not isinstance(size, int):
            continue
        growth = found.get("growth_per_day")
        quota, days = found.get("quota"), found.get("days_to_quota")
        line = (f"capacity {found['repository']}: {human_bytes(size)}"
                + (f", {human_bytes(int(growth))}/day" if isinstance(growth, float | int)
                   and growth > 0 else "")
                + (f", quota {human_bytes(quota)}" if isinstance(quota, int) else "")
                + (f", reached in {days:.0f} days ({str(found.get('quota_at'))[:10]})"
                   if isinstance(days, float | int) else ""))
        console.print(("[red]" + line + " (WARNING)[/]") if found.get("warn") else line)


def freshness_table(rows: Sequence[dict[str, object]], title: str = "freshness") -> None:
    """Each target/host a repository holds: its newest snapshot's age against its limit."""
    table = Table(title=title, title_justify="left")
    for column in ("repository", "target", "host", "newest snapshot", "age", "limit",
                   "verdict"):
        table.add_column(column)
    for row in rows:
        age, limit = row.get("age_s"), row.get("rpo_s")
        table.add_row(str(row["repository"]), str(row["target"]), str(row["host"]),
                      str(row.get("newest_at") or "none"),
                      _age(age if isinstance(age, float | int) else None),
                      _age(limit if isinstance(limit, float | int) else None),
                      "[red]STALE[/]" if row.get("stale") else (
                          "[green]ok[/]" if limit is not None else "not judged"))
    _console().print(table)
