"""``status``: each copy's age is measured from its recovery point (the last good backup's
start), not from when that backup finished."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml

from drkit.catalog.store import NewRecord, open_catalog
from drkit.config.loader import load_config
from drkit.drills.plans import load_plans
from drkit.jobs.status import target_statuses

NOW = datetime(2026, 3, 2, 12, 0)


def minutes_ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_age_is_measured_from_the_recovery_point(tmp_path: Path) -> None:
    repo = {"password": {"env": "DRKIT_TEST_PASSWORD"}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "drkit.yaml").write_text(yaml.safe_dump({
        "repositories": {"primary": {"url": str(tmp_path / "primary"), **repo},
                         "offsite": {"url": str(tmp_path / "offsite"), **repo}},
        "targets": {"app": {"kind": "files", "paths": [str(tmp_path)],
                            "repositories": ["primary", "offsite"]}}}))
    (tmp_path / "recovery_plans").mkdir()
    (tmp_path / "recovery_plans" / "p.yaml").write_text(
        "name: p\nobjectives: {rpo: 1h, rto: 10m}\nsteps: [{target: app}]\n")
    config = load_config(tmp_path / "config" / "drkit.yaml")
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}", hostname=config.host)
    # primary: a 45-minute backup that began 50 min ago; offsite: one that took an hour and
    # finished 10 min ago, so the data it holds is 70 min old: beyond the RPO of 1 h.
    for repository, started, finished in (("primary", 50, 5), ("offsite", 70, 10)):
        catalog.append(NewRecord(kind="backup", status="succeeded", target="app",
                                 repository=repository, started_at=minutes_ago(started),
                                 finished_at=minutes_ago(finished)))
    (status,) = target_statuses(config, catalog, load_plans(config), now=NOW)
    primary, offsite = status.repositories
    assert (primary.age_s, primary.rpo_ok) == (50 * 60, True)
    assert (offsite.age_s, offsite.rpo_ok) == (70 * 60, False)
    assert offsite.last_success_at == minutes_ago(10)  # unchanged: when the backup finished
    assert (status.age_s, status.rpo_ok, status.healthy) == (70 * 60, False, False)
    document = status.to_json()
    assert document["recovery_point_at"] == "2026-03-02T10:50:00.000000Z"
    assert document["last_success_at"] == "2026-03-02T11:50:00.000000Z"
    assert [r["recovery_point_at"] for r in document["repositories"]] == [
        "2026-03-02T11:10:00.000000Z", "2026-03-02T10:50:00.000000Z"]
