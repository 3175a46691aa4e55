"""Which schedules become deployments, when a target is overdue for a catch-up backup, the
retry condition, and healthcheck pings."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.catalog.store import NewRecord, open_catalog
from drkit.config.loader import load_config
from drkit.drills.plans import load_plans
from drkit.jobs.schedule import cron_interval, declared_schedules, overdue_targets


def write(tmp_path: Path, config: dict[str, Any], plans: dict[str, str] | None = None) -> Path:
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "drkit.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "recovery_plans").mkdir()
    for name, text in (plans or {}).items():
        (tmp_path / "recovery_plans" / f"{name}.yaml").write_text(text)
    return path


CONFIG: dict[str, Any] = {
    "repositories": {"r": {"url": "/srv/r", "password": {"env": "P"}},
                     "s": {"url": "/srv/s", "password": {"env": "P"}}},
    "targets": {
        "app": {"kind": "files", "paths": ["/srv/app"], "repositories": ["r", "s"],
                "schedule": "0 * * * *", "retention": {"keep_daily": 7}},
        "db": {"kind": "files", "paths": ["/srv/db"], "repositories": ["r"],
               "schedule": "*/15 * * * *"},
        "manual": {"kind": "files", "paths": ["/srv/m"], "repositories": ["r"]},
    },
    "checks": {"schedule": "0 3 * * *"},
    "prune": {"schedule": "30 4 * * *"},
    "reports": {"schedule": "0 6 1 * *"},
}


def test_every_declared_schedule_becomes_one_deployment(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG, {"p": "name: p\nobjectives: {rpo: 1h, rto: 5m}\n"
                                         "schedule: '0 5 * * 1'\nsteps: [{target: app}]\n"})
    config = load_config(path)
    found = {(s.kind, s.name, s.cron): s.parameters
             for s in declared_schedules(config, load_plans(config))}
    assert found == {
        ("backup", "backup-app", "0 * * * *"): {"target": "app", "repositories": ["r", "s"]},
        ("backup", "backup-db", "*/15 * * * *"): {"target": "db", "repositories": ["r"]},
        ("check", "check", "0 3 * * *"): {"repositories": ["r", "s"]},
        ("prune", "prune", "30 4 * * *"): {"targets": ["app"]},  # only targets with retention
        ("drill", "drill-p", "0 5 * * 1"): {"plan": "p"},
        ("report", "report", "0 6 1 * *"): {},
    }


def test_cron_interval() -> None:
    now = datetime(2026, 11, 25, 12, 7)
    assert cron_interval("*/15 * * * *", "UTC", now) == 900
    assert cron_interval("0 * * * *", "Europe/Berlin", now) == 3600
    assert cron_interval("0 3 * * *", "UTC", now) == 86400


def test_overdue_targets_get_one_catch_up(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONFIG))
    catalog = open_catalog(config.catalog, base_dir=config.base_dir)
    now = datetime(2026, 11, 25, 12, 0)

    def good(target: str, repository: str, age: timedelta) -> None:
        catalog.append(NewRecord(kind="backup", status="succeeded", target=target,
                                 repository=repository, started_at=now - age,
                                 finished_at=now - age))

    assert overdue_targets(config, catalog, now) == ["app", "db"]  # never backed up
    good("app", "r", timedelta(minutes=30))
    good("db", "r", timedelta(minutes=10))
    assert overdue_targets(config, catalog, now) == ["app"]  # app has nothing in s yet
    good("app", "s", timedelta(minutes=50))
    assert overdue_targets(config, catalog, now) == []
    assert overdue_targets(config, catalog, now + timedelta(minutes=20)) == ["app", "db"]
    # A failed run does not count as a backup.
    catalog.append(NewRecord(kind="backup", status="failed", target="db", repository="r",
                             started_at=now, finished_at=now + timedelta(minutes=20)))
    assert "db" in overdue_targets(config, catalog, now + timedelta(minutes=20))


def test_retry_condition_retries_only_transient_failures() -> None:
    from prefect.states import Failed

    from drkit.flows.flows import RunFailed, retry_only_transient

    def check(exc: BaseException) -> bool:
        return retry_only_transient(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert check(RunFailed("storage unreachable", transient=True)) is True
    assert check(RunFailed("wrong password", transient=False)) is False
    assert check(ValueError("bug")) is False


@pytest.fixture
def pings() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    received: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc", received
    server.shutdown()


def test_healthcheck_pinged_on_success_and_failure(
        tmp_path: Path, pings: tuple[str, list[tuple[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from drkit.jobs.backup import ping_failures

    url, received = pings
    monkeypatch.setenv("HC", url)
    config = load_config(write(tmp_path, {**CONFIG, "targets": {
        "app": {"kind": "files", "paths": ["/srv/app"], "repositories": ["r"],
                "healthcheck": {"url": {"env": "HC"}}}}}))
    ping_failures(config, "app", {})
    ping_failures(config, "app", {"r": "storage unreachable"})
    assert received == [("/ping/abc", "ok"), ("/ping/abc/fail", "r: storage unreachable")]
    monkeypatch.setenv("HC", "http://127.0.0.1:9/dead")  # a dead URL is logged, never fatal
    ping_failures(config, "app", {})


def test_a_copy_schedule_is_a_copy_deployment_of_that_repository(tmp_path: Path) -> None:
    config = {**CONFIG, "repositories": {
        **CONFIG["repositories"],
        "vault": {"url": "/srv/vault", "password": {"env": "P"}, "copy_from": "r",
                  "copy_schedule": "15 2 * * *"}}}
    loaded = load_config(write(tmp_path, config))
    copies = [(s.kind, s.name, s.cron, s.parameters) for s in declared_schedules(loaded, {})
              if s.kind == "copy"]
    assert copies == [("copy", "copy-vault", "15 2 * * *", {"repository": "vault"})]


def test_copy_schedule_needs_a_copy_repository(tmp_path: Path) -> None:
    from drkit.errors import ConfigError

    config = {**CONFIG, "repositories": {
        **CONFIG["repositories"],
        "s": {"url": "/srv/s", "password": {"env": "P"}, "copy_schedule": "15 2 * * *"}}}
    with pytest.raises(ConfigError, match="copy_schedule applies to a copy repository"):
        load_config(write(tmp_path, config))


def test_a_late_run_is_skipped_only_when_every_repository_has_a_newer_good_backup(
        tmp_path: Path) -> None:
    """The skip rule with Prefect's aware times against the catalog's naive UTC ones, and a
    target bound to another host judged by that host's records."""
    from datetime import UTC
    from zoneinfo import ZoneInfo

    from drkit.jobs.schedule import record_skips, skip_reason

    settings = {**CONFIG, "targets": {**CONFIG["targets"], "app": {
        **CONFIG["targets"]["app"], "host": "web-1"}}}
    config = load_config(write(tmp_path, settings))
    catalog = open_catalog(config.catalog, base_dir=config.base_dir, hostname="web-1")
    base = datetime(2026, 11, 25, 12, 0)  # naive UTC, as the catalog keeps time
    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 that day: the same instant, other wall time

    def good(repository: str, at: datetime) -> None:
        catalog.append(NewRecord(kind="backup", status="succeeded", target="app",
                                 repository=repository, started_at=at, finished_at=at,
                                 snapshot_id=f"{repository}{at:%H%M}aaaa"))

    due = base.replace(tzinfo=UTC)
    assert skip_reason(config, catalog, "app", ["r", "s"], due) is None  # nothing yet
    good("r", base + timedelta(minutes=5))
    assert skip_reason(config, catalog, "app", ["r", "s"], due) is None  # s has none newer
    good("s", base - timedelta(minutes=5))  # older than the run's scheduled time
    assert skip_reason(config, catalog, "app", ["r", "s"], due) is None
    good("s", base + timedelta(seconds=1))
    newer = skip_reason(config, catalog, "app", ["r", "s"], due.astimezone(berlin))
    assert newer is not None and sorted(newer) == ["r", "s"]
    assert newer["s"]["recovery_point_at"] == "2026-11-25T12:00:01Z"
    # An hour later in Berlin's wall time is an hour later: nothing is newer than that.
    assert skip_reason(config, catalog, "app", ["r", "s"],
                       (due + timedelta(hours=1)).astimezone(berlin)) is None
    # Another host's backups of a target of the same name do not count.
    other = open_catalog(config.catalog, base_dir=config.base_dir, hostname="web-2")
    other.append(NewRecord(kind="backup", status="succeeded", target="app", repository="r",
                           started_at=base + timedelta(hours=3),
                           finished_at=base + timedelta(hours=3)))
    assert skip_reason(config, catalog, "app", ["r", "s"], due + timedelta(hours=2)) is None
    ids = record_skips(config, catalog, "app", due, newer, run="run-1")
    assert len(ids) == 2
