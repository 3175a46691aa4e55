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


def test_sensitivity_and_bars_are_per_target() -> None:
    past = history(15, random.Random(4))
    moderate = summary(600, 400)
    assert score(moderate, past, AnomalySettings(sensitivity=6)).flagged
    assert not score(moderate, past, AnomalySettings(sensitivity=20)).flagged
    assert not score(moderate, past, AnomalySettings(changed="70%")).flagged


def test_normal_situations_that_look_odd_are_not_flagged() -> None:
    past = history(15, random.Random(5))
    settings = AnomalySettings()
    # the paths changed (or restic found no parent): every file is new, none "removed"
    assert not score(summary(0, 0, new=1030), past, settings).flagged
    # a tiny target: 2 of its 3 files edited
    tiny = [PastBackup(record_id=i, started_at=T0 + timedelta(days=i),
                       summary=summary(0, 3, total_bytes=3000, added=100)) for i in range(10)]
    assert not score(summary(2, 1, total_bytes=3000, added=2000), tiny, settings).flagged
    # one new zip sampled: a sample of one says nothing
    one = {"sampled": 1, "encrypted_share": 1.0}
    assert not score(summary(30, 990), past, settings, entropy=one).flagged
    # one big new video: incompressible, but the usual share of new data
    video = {**summary(1, 1019), "data_added_packed": 2 * 10**6}
    assert not score(video, [PastBackup(
        record_id=b.record_id, started_at=b.started_at,
        summary={**b.summary, "data_added_packed": b.summary["data_added"] // 3})
        for b in past], settings).flagged


def test_part_of_the_tree_encrypted_is_flagged() -> None:
    """40% of the files rewritten and 40% of the data new: neither bar alone, both far out."""
    past = history(15, random.Random(6))
    verdict = score(summary(400, 620, added=4 * 10**7), past, AnomalySettings())
    assert verdict.flagged and "part of the tree rewritten" in verdict.reasons[0]


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


def test_a_check_warns_when_the_trend_reaches_the_quota_soon(
        tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten days of checks growing 1 GiB/day towards a 20 GiB quota with 30 days of warning:
    the check that measures warns once (log, webhook); a short history does not."""
    from drkit.catalog.inflight import utcnow
    from drkit.jobs.check import _warn_of_quota

    monkeypatch.setenv("HOOK_URL", webhook[0])
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "drkit.yaml").write_text(yaml.safe_dump({
        "notify": {"webhook": {"url": {"env": "HOOK_URL"}}},
        "repositories": {"r": {"url": str(tmp_path / "r"), "quota": "20GiB",
                               "password": {"env": "X"}}}}))
    config = load_config(tmp_path / "config" / "drkit.yaml")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}", hostname=config.host)
    now = utcnow()

    def measured(days_ago: float, gib: float) -> None:
        at = now - timedelta(days=days_ago)
        catalog.append(NewRecord(kind="check", status="passed", repository="r", started_at=at,
                                 finished_at=at,
                                 evidence={"stats": {"total_size": int(gib * 2**30)}}))

    measured(0.2, 9.0)
    measured(0.1, 9.5)
    _warn_of_quota(config, catalog, "r")
    assert webhook[1] == []  # two points a few hours apart are no trend
    for day in range(10, 0, -1):
        measured(day, 10.0 - day)
    _warn_of_quota(config, catalog, "r")
    (event,) = webhook[1]
    assert event["event"] == "capacity_warning" and event["repository"] == "r"
    assert 5 < event["days_to_quota"] < 15


def test_contrib_dashboard_and_alerts_use_metrics_drkit_exports() -> None:
    """Every drkit_* series the Grafana dashboard and the alert rules query is one that
    drkit's metrics module defines (a renamed metric would leave them silently empty)."""
    import json
    import re

    root = Path(__file__).resolve().parents[2]
    defined = set(re.findall(r'"(drkit_[a-z0-9_]+)"',
                             (root / "src/drkit/jobs/metrics.py").read_text()))
    rules = yaml.safe_load((root / "contrib/prometheus/drkit-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((root / "contrib/grafana/drkit-dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"drkit_[a-z0-9_]+", expr)}
    assert used and used <= defined, used - defined


def test_growth_states_and_anomaly_index_on_sqlite_and_postgresql(catalog_url: str) -> None:
    """The database-side parts of status and metrics (JSON read by SQLite and by PostgreSQL,
    per-pair lookups, the anomaly index) give the same answers on both catalogs."""
    from drkit.catalog.anomalies import anomalies
    from drkit.catalog.capacity import target_growth
    from drkit.catalog.queries import backup_states

    catalog = open_catalog(catalog_url, hostname="h1")
    other = open_catalog(catalog_url, hostname="h2")
    for day in range(5):
        at = T0 + timedelta(days=day)
        flagged = day == 3
        catalog.append(NewRecord(
            kind="backup", status="succeeded", target="t", repository="r", snapshot_id=f"s{day}",
            started_at=at, finished_at=at + timedelta(minutes=1),
            evidence={"restic_summary": {"data_added": 1000 * (day + 1),
                                         "total_bytes_processed": 10**6 + day},
                      "fingerprints": {"t": {"value": "a\x00b"}},  # JSON casts refuse it
                      "anomaly": {"flagged": flagged, "reasons": ["x"] if flagged else []}}))
    catalog.append(NewRecord(kind="backup", status="failed", target="t", repository="r",
                             started_at=T0 + timedelta(days=6), finished_at=T0 + timedelta(
                                 days=6, minutes=1), error="boom", evidence={}))
    other.append(NewRecord(kind="backup", status="succeeded", target="t", repository="r",
                           started_at=T0, finished_at=T0, evidence={"restic_summary": {
                               "data_added": 7, "total_bytes_processed": 7}}))
    with catalog.read_session() as session:
        growth = target_growth(session, "h1", T0 + timedelta(days=1), ["t"])
        (state,) = backup_states(session, ("backup", "copy"), host="h1",
                                 pairs=[("t", "r"), ("t", "nowhere")])
        flagged = anomalies(session, host="h1")
        from_chain = anomalies(session, host="h1", from_chain=True)
    assert growth == {("t", "r"): {"source_bytes": 10**6 + 4, "added_bytes": 2000 + 3000 + 4000
                                   + 5000, "backups": 4}}
    assert state.last_status == "failed" and state.last_snapshot_id == "s4"
    assert state.recovery_point_at == T0 + timedelta(days=4)
    assert [a.snapshot_id for a in flagged] == [a.snapshot_id for a in from_chain] == ["s3"]


def test_a_scrape_that_cannot_read_the_catalog_says_so(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    from prometheus_client import generate_latest

    from drkit.jobs.metrics import registry

    def broken() -> Any:
        raise OSError("catalog.db: disk I/O error")

    text = generate_latest(registry(broken)).decode()
    assert "drkit_up{host=\"\"} 0.0" in text
    assert [r.getMessage() for r in caplog.records if r.name == "drkit.metrics"] == [
        "metrics: the catalog could not be read: OSError: catalog.db: disk I/O error"]


def test_ransomware_that_renames_what_it_encrypts_is_flagged() -> None:
    """Encrypted to x.locked and the original deleted: every file new and the data new (all
    of it, or 40% of it), where a real path change is every file new and the data known."""
    past = history(15, random.Random(7))
    settings = AnomalySettings()
    everything = summary(0, 0, new=1030, added=10**8)
    assert any("gone" in r for r in score(everything, past, settings).reasons)
    part = summary(0, 600, new=420, added=4 * 10**7)
    reasons = score(part, past, settings).reasons
    assert reasons and "were replaced" in reasons[0]
    moved = summary(0, 0, new=1030, added=2 * 10**6)  # the paths changed: data known
    assert not score(moved, past, settings).flagged


@pytest.mark.parametrize(("path", "patterns", "out"), [
    ("/srv/app/x.log", ["/srv/app/*.log"], True),
    ("/srv/app/sub/x.log", ["/srv/app/*.log"], False),   # * stays within a component
    ("/srv/app/sub/x.log", ["/srv/app/**/*.log"], True),
    ("/srv/app/tmp", ["/tmp"], False),                  # a leading / anchors
    ("/tmp/x", ["/tmp"], True),                         # what lies below goes too
    ("/srv/app/cache/a", ["cache/"], True),             # any component on
    ("/srv/app/a.tmp", ["*.tmp"], True),
    ("/srv/app/keep.tmp", ["*.tmp", "!keep.tmp"], False),
    ("/home/u/x/.cache/y", ["/home/*/.cache"], False),
    ("/home/u/.cache/y", ["/home/*/.cache"], True),
])
def test_excludes_match_as_restic_does(path: str, patterns: list[str], out: bool) -> None:
    from drkit.targets.sample import excluded

    assert excluded(path, patterns) is out
