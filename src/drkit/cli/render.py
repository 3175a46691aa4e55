"""Human-readable tables (rich) for the commands' results. JSON output does not come here."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from drkit.units import human_age, human_bytes

if TYPE_CHECKING:
    from drkit.jobs.backup import BackupRun
    from drkit.jobs.repo import RepoInitResult
    from drkit.jobs.snapshots import SnapshotRow
    from drkit.jobs.status import TargetStatus

_STYLE = {"succeeded": "green", "created": "green", "exists": "green", "failed": "red",
          "interrupted": "yellow"}


def _console() -> Console:
    # Piped output gets a wide console so that ids and paths are not cut.
    return Console(highlight=False, soft_wrap=False,
                   width=None if sys.stdout.isatty() else 200)


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
    for column in ("id", "time", "target", "repository", "host", "paths"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.id[:8], row.time.replace("T", " ")[:19], row.target or "-",
                      row.repository, row.hostname, ", ".join(row.paths))
    _console().print(table)


def status_table(statuses: Sequence[TargetStatus]) -> None:
    table = Table(title="status", title_justify="left")
    for column in ("target", "last good backup", "age", "repository", "last run", "error"):
        table.add_column(column)
    for status in statuses:
        for index, repo in enumerate(status.repositories):
            first = index == 0
            table.add_row(
                status.target if first else "",
                _when(status.last_success_at) if first else "",
                human_age(status.age_s) if first else "",
                repo.repository, _status(repo.last_status or "never run"),
                (repo.last_error or "")[:80])
    _console().print(table)


def repo_init_table(results: Sequence[RepoInitResult]) -> None:
    table = Table(title="repo init", title_justify="left")
    for column in ("repository", "status", "bucket", "error"):
        table.add_column(column)
    for result in results:
        table.add_row(result.repository, _status(result.status),
                      "created" if result.bucket_created else "-", result.error or "")
    _console().print(table)
