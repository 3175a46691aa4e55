"""Progress of long backups and restores on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drkit.jobs.backup import ProgressHook
    from drkit.restic.commands import BackupProgress


@contextmanager
def backup_progress() -> Iterator[ProgressHook | None]:
    """Yield a progress hook drawing one bar per target x repository, or None when not a tty."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    lock = threading.Lock()
    tasks: dict[tuple[str, str], TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        def hook(target: str, repo: str, progress: BackupProgress) -> None:
            with lock:
                key = (target, repo)
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{target} -> {repo}", total=None)
                bar.update(tasks[key], completed=progress.bytes_done,
                           total=progress.total_bytes or None)

        yield hook


@contextmanager
def restore_progress(what: str) -> Iterator[Callable[[int, int | None], None] | None]:
    """Yield a hook drawing one bar (bytes restored of the snapshot's size), or None when
    stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)

        def hook(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total or None)

        yield hook
