"""Seeing trouble before a restore does, with the real CLI, restic and an S3 endpoint:
repository-side freshness across two hosts, the spot check, capacity measured by checks,
and Prometheus metrics that say what `status --json` says."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Project, S3Endpoint
from tests.helpers import wait_for


def host_project(root: Path, project: Project, endpoint: S3Endpoint, bucket: str, host: str,
                 target: str, extra: dict[str, Any] | None = None,
                 hook: str | None = None) -> Project:
    """A deployment on ``host`` backing up ``target`` into the shared repository."""
    root.mkdir()
    data = root / "data"
    data.mkdir()
    for index in range(5):
        (data / f"{target}-{index}.txt").write_text(f"{target} {index}\n" * 500)
    other = Project(root=root, env={**project.env, **endpoint.env()},
                    restic_binary=project.restic_binary)
    if hook is not None:
        other.env["HOOK_URL"] = hook
    other.write_config({
        **({"notify": {"webhook": {"url": {"env": "HOOK_URL"}}}} if hook else {}),
        "host": host,
        "repositories": {"shared": {**endpoint.repository(bucket), **(extra or {})}},
        "targets": {target: {"kind": "files", "paths": [str(data)],
                             "repositories": ["shared"]}},
    })
    plans = root / "recovery_plans"
    plans.mkdir()
    (plans / f"{target}.yaml").write_text(yaml.safe_dump({
        "name": target, "objectives": {"rpo": "1d", "rto": "1h"},
        "steps": [{"target": target, "checks": [{"files_exist": [f"{target}-0.txt"]}]}]}))
    return other


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def newest_snapshot(project: Project, target: str, host: str) -> datetime:
    """The newest snapshot of ``target`` by ``host`` that the repository holds now, as
    `status --freshness` reads it (every host's, without recording anything)."""
    rows = project.run("status", "--freshness", "--json")
    (row,) = [r for r in json.loads(rows.stdout)["freshness"]
              if r["target"] == target and r["host"] == host]
    return datetime.fromisoformat(row["newest_at"].replace("Z", "+00:00"))


def test_a_host_whose_snapshots_stop_arriving_is_flagged(
        project: Project, rclone_endpoint: S3Endpoint,
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    """Beta's worker backs up once and stops. Alpha's scheduler and catalog have nothing to
    say (its own target is fresh), but the shared repository's own snapshot list shows beta
    went silent: past the repository's max_snapshot_age (3 s here), alpha's freshness check
    fails, is recorded and notified, and status and metrics show it."""
    bucket = f"fresh-{time.monotonic_ns()}"
    alpha = host_project(project.root / "alpha", project, rclone_endpoint, bucket, "alpha",
                         "web", {"max_snapshot_age": "3s"}, hook=webhook[0])
    beta = host_project(project.root / "beta", project, rclone_endpoint, bucket, "beta",
                        "orders")
    assert alpha.run("repo", "init").returncode == 0
    assert beta.run("backup").returncode == 0, "beta's worker runs once"
    assert alpha.run("backup").returncode == 0
    silent_since = newest_snapshot(alpha, "orders", "beta")
    wait_for(lambda: datetime.now(UTC) > silent_since + timedelta(seconds=4),
             "beta's snapshot to be older than 3 s")
    assert alpha.run("status").returncode == 0  # alpha's own view: nothing wrong

    result = alpha.run("check", "--freshness", "--json")
    assert result.returncode == 1, result.stdout
    (check,) = json.loads(result.stdout)["checks"]
    (error,) = check["errors"]
    assert "target orders of host beta" in error and "has its worker stopped" in error
    (event,) = [e for e in webhook[1] if e["event"] == "freshness_failed"]
    assert event["repository"] == "shared" and event["errors"] == [error]
    assert alpha.run("status", "--json").returncode == 1  # the recorded verdict
    assert "target orders of host beta" in alpha.run("status").stderr
    key = frozenset({"host": "alpha", "repository": "shared", "target": "orders",
                     "snapshot_host": "beta"}.items())
    samples = scrape(alpha.run("metrics").stdout)
    assert samples[("drkit_freshness_stale", key)] == 1
    assert samples[("drkit_freshness_newest_snapshot_timestamp_seconds", key)] == \
        pytest.approx(silent_since.timestamp(), abs=1e-3)

    # Beta comes back. Judged as of a second after its new snapshot, all is fresh; that
    # judgement is recorded as asked, and never taken for the current verdict.
    assert beta.run("backup").returncode == 0
    back = newest_snapshot(alpha, "orders", "beta")
    asked = alpha.run_json("check", "--freshness", "--as-of",
                           (back + timedelta(seconds=1)).isoformat())["checks"][0]
    assert asked["status"] == "passed", asked
    rows = {(r["target"], r["host"]): r for r in asked["freshness"]["rows"]}
    assert rows[("orders", "beta")]["snapshots"] == 2
    assert rows[("web", "alpha")]["rpo_s"] == 86400  # its plan's RPO, not the repository's
    before = alpha.run_json("check", "--freshness", "--as-of",
                            (silent_since - timedelta(seconds=1)).isoformat(),
                            expect=1)["checks"][0]
    assert [r["target"] for r in before["freshness"]["rows"] if r["stale"]] == ["web"]
    assert alpha.run("status").returncode == 1  # still the verdict of now
    # The integrity check's verdict is its own: the repository is intact.
    full = alpha.run("check", "--json")
    (intact,) = json.loads(full.stdout)["checks"]
    assert full.returncode == 0 and intact["status"] == "passed" and intact["errors"] == []
    assert alpha.run("check", "--as-of", back.isoformat()).returncode == 2  # --freshness only


def test_metrics_say_what_status_says(project: Project, rclone_endpoint: S3Endpoint) -> None:
    bucket = f"metrics-{time.monotonic_ns()}"
    alpha = host_project(project.root / "alpha", project, rclone_endpoint, bucket, "alpha",
                         "web", {"quota": "1GiB"})
    assert alpha.run("repo", "init").returncode == 0
    assert alpha.run("backup").returncode == 0
    assert alpha.run("check", "--read-data-subset", "1/2").returncode == 0
    assert alpha.run("drill", "web").returncode == 0
    status = alpha.run_json("status")
    text = alpha.run("metrics").stdout
    samples = scrape(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"host": "alpha", **labels}.items()))]

    target = status["targets"][0]
    repo = target["repositories"][0]
    finished = datetime.fromisoformat(repo["last_success_at"].replace("Z", "+00:00"))
    assert value("drkit_backup_last_success_timestamp_seconds", target="web",
                 repository="shared") == pytest.approx(finished.timestamp(), abs=1e-3)
    assert value("drkit_backup_rpo_ok", target="web", repository="shared") == 1
    assert value("drkit_target_rpo_objective_seconds", target="web") == \
        target["rpo_objective_s"]
    assert value("drkit_anomalies_open", target="web") == 0
    plan = status["plans"][0]
    assert value("drkit_drill_passed", plan="web") == 1
    assert value("drkit_drill_rto_achieved_seconds", plan="web") == plan["rto_achieved_s"]
    assert value("drkit_check_passed", repository="shared") == 1
    assert value("drkit_check_read_data_slice", repository="shared") == 1
    capacity = status["capacity"][0]
    assert capacity["size"] > 0 and capacity["quota"] == 2**30
    assert value("drkit_repository_size_bytes", repository="shared") == capacity["size"]
    assert value("drkit_repository_quota_bytes", repository="shared") == 2**30
    # what a full read would take, at the rate the half read achieved
    assert capacity["full_read_s"] > 0
    assert value("drkit_repository_full_read_seconds", repository="shared") == \
        capacity["full_read_s"]

    # The same through `serve`'s listener, scraped over HTTP.
    from drkit.catalog.store import open_catalog
    from drkit.config.loader import load_config
    from drkit.drills.plans import load_plans
    from drkit.jobs.metrics import serve_metrics

    os.environ.update(alpha.env)
    config = load_config(str(alpha.config_path))
    catalog = open_catalog(config.catalog, base_dir=config.base_dir, hostname=config.host)
    load = lambda: (config, load_plans(config), catalog)  # noqa: E731 - read at each scrape
    with serve_metrics("127.0.0.1", 0, load) as url, \
            urllib.request.urlopen(url, timeout=30) as response:
        served = scrape(response.read().decode())
    assert served[("drkit_repository_size_bytes",
                   frozenset({"host": "alpha", "repository": "shared"}.items()))] == \
        capacity["size"]


def test_checks_measure_capacity_and_a_short_history_forecasts_nothing(
        project: Project, rclone_endpoint: S3Endpoint) -> None:
    """Each check records the repository's stored size; two checks minutes apart are no
    trend (a forecast needs 3 measurements over 3 days: tests/unit cover the alert)."""
    bucket = f"quota-{time.monotonic_ns()}"
    alpha = host_project(project.root / "alpha", project, rclone_endpoint, bucket, "alpha",
                         "web", {"quota": "50MiB", "warn_before": "3650d"})
    assert alpha.run("repo", "init").returncode == 0
    assert alpha.run("backup").returncode == 0
    assert alpha.run("check").returncode == 0
    first = alpha.run_json("status")["capacity"][0]["size"]
    (alpha.root / "data" / "more.bin").write_bytes(os.urandom(3 * 2**20))
    assert alpha.run("backup").returncode == 0
    assert alpha.run("check").returncode == 0
    status = alpha.run_json("status")
    (found,) = status["capacity"]
    assert found["size"] >= first + 3 * 2**20  # random data: stored as it is
    assert found["growth_per_day"] is None and found["warn"] is False
    (grown,) = status["target_capacity"]
    assert grown["target"] == "web" and grown["added_bytes"] >= 3 * 2**20


def test_spot_check_catches_a_file_changed_behind_drkits_back(
        project: Project, rclone_endpoint: S3Endpoint) -> None:
    alpha = host_project(project.root / "alpha", project, rclone_endpoint,
                         f"spot-{time.monotonic_ns()}", "alpha", "web")
    assert alpha.run("repo", "init").returncode == 0
    assert alpha.run("backup").returncode == 0
    passed = alpha.run_json("check", "--spot", "web")
    assert passed["status"] == "passed" and passed["sampled"] == 5
    assert passed["differing"] == []

    victim = alpha.root / "data" / "web-3.txt"
    stat = victim.stat()
    victim.write_text("X" * stat.st_size)  # same size, timestamp put back
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = alpha.run("check", "--spot", "web", "--json")
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found["differing"] == [str(victim)]
    assert "changed behind drkit's back" in result.stderr

    for index in range(4):  # the count moves past the 5% tolerated
        (alpha.root / "data" / f"new-{index}.txt").write_text("new")
    result = alpha.run("check", "--spot", "web", "--json")
    assert result.returncode == 1
    assert "the source holds 9 files, the snapshot 5" in result.stderr
    assert alpha.run("check", "--spot", "nonesuch").returncode == 2


def test_metrics_say_drkit_is_down_when_the_catalog_cannot_be_read(project: Project) -> None:
    """The textfile recipe must not keep publishing the last good file: `drkit metrics`
    prints drkit_up 0 (and exits 1 with the reason) when the catalog does not answer."""
    from drkit.locals3 import free_port

    project.write_config({
        "host": "alpha",
        "catalog": f"postgresql+psycopg://drkit@127.0.0.1:{free_port()}/nowhere",
        "repositories": {"r": {"url": str(project.root / "r"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}}})
    result = project.run("metrics")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot open catalog" in result.stderr
    (up,) = [s for f in text_string_to_metric_families(result.stdout) for s in f.samples]
    assert (up.name, up.labels, up.value) == ("drkit_up", {"host": "alpha"}, 0.0)
