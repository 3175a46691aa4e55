"""The pure parts of monitoring: anomaly scoring against a history, and the capacity forecast
on a growth history whose true slope is known."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.catalog.anomalies import PastBackup
from drkit.catalog.capacity import forecast
from drkit.catalog.store import NewRecord, open_catalog
from drkit.config.loader import load_config
from drkit.config.models import AnomalySettings
from drkit.jobs.anomaly import score

T0 = datetime(2026, 11, 1)


def summary(changed: int, unmodified: int, new: int = 0, total_bytes: int = 10**8,
            added: int = 10**6) -> dict[str, Any]:
    return {"files_new": new, "files_changed": changed, "files_unmodified": unmodified,
            "total_files_processed": new + changed + unmodified,
            "total_bytes_processed": total_bytes, "data_added": added}


def history(count: int, rng: random.Random) -> list[PastBackup]:
    return [PastBackup(record_id=i, started_at=T0 + timedelta(days=i),
                       summary=summary(rng.randint(5, 40), 1000, rng.randint(0, 10),
                                       total_bytes=10**8 + rng.randint(0, 10**6),
                                       added=rng.randint(5 * 10**5, 3 * 10**6)))
            for i in range(count)]


def test_a_normal_day_is_not_flagged_and_mass_change_is() -> None:
    past = history(15, random.Random(1))
    settings = AnomalySettings()
    assert not score(summary(30, 990), past, settings).flagged
    verdict = score(summary(900, 120, added=8 * 10**7), past, settings)
    assert verdict.flagged
    assert any("changed at once" in r for r in verdict.reasons)
    assert any("no longer deduplicates" in r for r in verdict.reasons)


def test_no_verdict_while_warming_up() -> None:
    past = history(3, random.Random(2))
    verdict = score(summary(1000, 0), past, AnomalySettings(warmup=5))
    assert verdict.warming_up and not verdict.flagged


def test_an_acknowledged_anomaly_joins_the_baseline_and_an_open_one_does_not() -> None:
    """After a legitimate mass change (acknowledged), the same again is no surprise; while
    it is unacknowledged it never teaches the baseline that mass change is normal."""
    past = history(10, random.Random(3))
    big = [PastBackup(record_id=100 + i, started_at=T0 + timedelta(days=20 + i),
                      summary=summary(950, 50), flagged=True) for i in range(10)]
    assert score(summary(950, 50), past + big, AnomalySettings()).flagged
    acked = [PastBackup(record_id=b.record_id, started_at=b.started_at, summary=b.summary,
                        flagged=True, acknowledged=True) for b in big]
    assert not score(summary(950, 50), past + acked, AnomalySettings()).flagged


def test_sensitivity_is_per_target() -> None:
    past = history(15, random.Random(4))
    moderate = summary(600, 400)
    assert score(moderate, past, AnomalySettings(sensitivity=6)).flagged
    assert not score(moderate, past, AnomalySettings(changed="70%")).flagged


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forecast_finds_the_day_the_quota_is_hit(tmp_path: Path, seed: int) -> None:
    """Daily sizes growing 2 GiB/day from 100 GiB with ±1% noise, quota 300 GiB: the true day
    is 100 days after the first point; the forecast must be within 5% of the time left."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "drkit.yaml").write_text(yaml.safe_dump({
        "repositories": {"r": {"url": str(tmp_path / "r"), "quota": "300GiB",
                               "password": {"env": "X"}}}}))
    config = load_config(tmp_path / "config" / "drkit.yaml")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}", hostname=config.host)
    rng = random.Random(seed)
    gib = 2**30
    for day in range(30):
        at = T0 + timedelta(days=day)
        size = int((100 + 2 * day) * gib * (1 + rng.uniform(-0.01, 0.01)))
        catalog.append(NewRecord(kind="check", status="passed", repository="r",
                                 started_at=at, finished_at=at,
                                 evidence={"stats": {"total_size": size}}))
    now = T0 + timedelta(days=29, hours=1)
    with catalog.read_session() as session:
        found = forecast(config, session, "r", now)
    true_day = T0 + timedelta(days=100)
    left = (true_day - now).total_seconds()
    assert found.quota_at is not None
    assert abs((found.quota_at - true_day).total_seconds()) <= 0.05 * left
    assert found.growth_per_day == pytest.approx(2 * gib, rel=0.05)
    assert found.warn is False  # 71 days away, warn_before is 30 days
