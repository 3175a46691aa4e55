"""Capacity: how big each repository is, how fast it grows, when it reaches its quota, and
what a full ``check --read-data`` would cost, from the sizes the checks measured
(:func:`drkit.jobs.capacity.measure`, into each check record's ``stats``).

The forecast is a least-squares line through the measurements of the recent window (default
30 days); the day the quota is reached is where that line crosses it. A full read's time is
the stored size at the read rate the newest read-data slice achieved. Per target, growth is
the sum of the data its backups added (restic's ``data_added``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from drkit.catalog.chain import optional_time
from drkit.catalog.models import Record
from drkit.config.models import Config

WINDOW_S = 30 * 86400.0
# A trend needs a history: at least this many measurements over at least this long (two
# checks an hour apart would extrapolate one afternoon's upload into a year).
MIN_POINTS = 3
MIN_SPAN_S = 3 * 86400.0


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x`` through ``points``; None with fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return mean_y - slope * mean_x, slope


@dataclass
class Forecast:
    """One repository's size, growth and the time left before its quota."""

    repository: str
    measured_at: datetime | None = None
    size: int | None = None
    quota: int | None = None
    growth_per_day: float | None = None    # bytes/day over the window (least squares)
    quota_at: datetime | None = None       # when the trend line reaches the quota
    days_to_quota: float | None = None
    warn: bool = False                     # the quota is nearer than warn_before
    full_read_s: float | None = None       # a full check --read-data at the measured rate
    points: list[tuple[datetime, int]] | None = None

    def describe(self) -> str:
        if self.size is not None and self.quota is not None and self.size >= self.quota:
            return (f"repository {self.repository} holds {self.size} bytes, at or over its "
                    f"quota of {self.quota}")
        if self.quota_at is None or self.days_to_quota is None:
            return f"repository {self.repository}: no quota forecast"
        return (f"repository {self.repository} reaches its quota in "
                f"{self.days_to_quota:.1f} days ({self.quota_at:%Y-%m-%d}) at "
                f"{(self.growth_per_day or 0) / 2**20:.1f} MiB/day")

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "measured_at": optional_time(self.measured_at),
                "size": self.size, "quota": self.quota, "growth_per_day": self.growth_per_day,
                "quota_at": optional_time(self.quota_at), "days_to_quota": self.days_to_quota,
                "warn": self.warn, "full_read_s": self.full_read_s}


def size_history(session: Session, repository: str, *, since: datetime | None = None
                 ) -> list[tuple[datetime, int, dict[str, Any]]]:
    """Each check's measured size of ``repository`` (time, bytes, the check's evidence),
    oldest first."""
    query = select(Record.finished_at, Record.evidence).where(
        Record.kind == "check", Record.repository == repository,
        Record.evidence.like('%"total_size":%'))
    if since is not None:
        query = query.where(Record.finished_at >= since)
    out = []
    for when, text in session.execute(query.order_by(Record.finished_at, Record.seq)):
        evidence = json.loads(text)
        size = (evidence.get("stats") or {}).get("total_size")
        if isinstance(size, int):
            out.append((when, size, evidence))
    return out


def forecast(config: Config, session: Session, repository: str, now: datetime,
             window_s: float = WINDOW_S) -> Forecast:
    """The forecast of ``repository`` from its checks' measurements within ``window_s``."""
    repo = config.repositories[repository]
    history = size_history(session, repository, since=now - timedelta(seconds=window_s))
    out = Forecast(repository=repository, quota=repo.quota,
                   points=[(when, size) for when, size, _ in history])
    if not history:
        return out
    out.measured_at, out.size = history[-1][0], history[-1][1]
    out.full_read_s = _full_read(history)
    span = (history[-1][0] - history[0][0]).total_seconds()
    line = fit([((when - now).total_seconds(), float(size)) for when, size, _ in history]) \
        if len(history) >= MIN_POINTS and span >= MIN_SPAN_S else None
    if line is not None:
        out.growth_per_day = round(line[1] * 86400, 3)
    if repo.quota is None:
        return out
    if out.size >= repo.quota:
        out.days_to_quota, out.quota_at, out.warn = 0.0, now, True
        return out
    if line is not None and line[1] > 0:
        seconds = (repo.quota - line[0]) / line[1]  # from now, along the trend line
        out.days_to_quota = round(max(seconds, 0.0) / 86400, 3)
        out.quota_at = now + timedelta(seconds=max(seconds, 0.0))
        out.warn = max(seconds, 0.0) < repo.warn_before
    return out


def _full_read(history: Sequence[tuple[datetime, int, dict[str, Any]]]) -> float | None:
    """A full read at the rate of the newest check that read a slice of the data."""
    for _, size, evidence in reversed(history):
        share = _share(evidence.get("read_data_subset"))
        seconds = (evidence.get("data") or {}).get("duration_s")
        if share and isinstance(seconds, int | float) and seconds > 0:
            full: float = float(seconds) / share * history[-1][1] / max(size, 1)
            return round(full, 1)
    return None


def _share(subset: object) -> float | None:
    if not isinstance(subset, str):
        return None
    text = subset.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100 or None
        _, _, m = text.partition("/")
        return 1 / int(m) if m else None
    except (ValueError, ZeroDivisionError):
        return None


def _summary_figure(session: Session, key: str) -> Any:
    """restic's summary figure ``key`` (a whole number) of a record's evidence, read by the
    database. PostgreSQL reads it from the canonical text with a pattern: a JSON cast would
    refuse the whole record for an escaped NUL anywhere in it (a fingerprint may hold one);
    ``restic_summary`` is a flat object of numbers, and canonical JSON is compact."""
    if session.get_bind().dialect.name == "postgresql":
        pattern = '"restic_summary":\\{[^{}]*"' + key + '":([0-9]+)'
        return cast(func.substring(Record.evidence, pattern), BigInteger)
    return func.json_extract(Record.evidence, f"$.restic_summary.{key}")


def target_growth(session: Session, host: str, since: datetime, targets: Sequence[str]
                  ) -> dict[tuple[str, str], dict[str, int]]:
    """Per (target, repository) of ``host``'s good backups of ``targets`` since ``since``:
    the source's size at the newest (``source_bytes``, what restic read) and the data the
    backups added to the repository (``added_bytes``, restic's ``data_added``: the target's
    share of the growth). Summed by the database, along each target's index range."""
    # hostname || '': not an index column here, so that each target's backups since
    # ``since`` are one range of the (kind, status, target, finished_at) index; no GROUP BY
    # (the planner would walk a whole index for its order): the sums are made here.
    out: dict[tuple[str, str], dict[str, int]] = {}
    for target, repository, added, read in session.execute(
            select(Record.target, Record.repository, _summary_figure(session, "data_added"),
                   _summary_figure(session, "total_bytes_processed"))
            .where(Record.kind == "backup", Record.status == "succeeded",
                   Record.target.in_(list(targets)), Record.hostname.concat("") == host,
                   Record.finished_at >= since)
            .order_by(Record.finished_at)):
        row = out.setdefault((target or "", repository or ""),
                             {"source_bytes": 0, "added_bytes": 0, "backups": 0})
        row["added_bytes"] += int(added or 0)
        row["source_bytes"] = int(read) if read is not None else row["source_bytes"]
        row["backups"] += 1
    return out
