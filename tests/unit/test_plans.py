"""Recovery plans: validation with locations, durations, expectations, scoring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from drkit.config import load_config
from drkit.config.models import parse_duration
from drkit.drills.expect import evaluate, parse_expectation
from drkit.drills.plans import load_plans
from drkit.drills.restore import DrillError, ensure_space
from drkit.drills.result import StepResult
from drkit.drills.runner import score
from drkit.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def project(tmp_path: Path, plans: dict[str, str]) -> Path:
    config = tmp_path / "config" / "drkit.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "repositories": {"r": {"url": "/r", "password": {"env": "P"}}},
        "targets": {"app-files": {"kind": "files", "paths": ["/srv"], "repositories": ["r"]},
                    "db": {"kind": "sqlite", "path": "/srv/db.sqlite", "repositories": ["r"]}},
    }))
    (tmp_path / "recovery_plans").mkdir()
    for name, text in plans.items():
        (tmp_path / "recovery_plans" / name).write_text(text)
    return config


def test_shipped_plans_validate_against_the_example_config() -> None:
    config = load_config(REPO_ROOT / "config" / "drkit.yaml")
    plans = load_plans(config)
    assert set(plans) == {"example", "orders-service"}
    example = plans["example"]
    assert example.objectives.rpo == 3600 and example.objectives.rto == 900
    shipped = REPO_ROOT / "src" / "drkit" / "templates" / "example-plan.yaml"
    assert (REPO_ROOT / "recovery_plans" / "example.yaml").read_text() == shipped.read_text()


def test_every_plan_error_at_once_with_file_and_line(tmp_path: Path) -> None:
    config = load_config(project(tmp_path, {
        "a.yaml": (
            "name: a\n"
            "objectives: {rpo: 1 hour, rto: 15m}\n"
            "steps:\n"
            "  - target: app-file\n"
            "    checks:\n"
            "      - files_exist: [x]\n"
            "      - smoke: [y]\n"
            "  - target: db\n"
            "    checks:\n"
            "      - sql: select 1\n"
            "        expect: about 3\n"
        ),
        "b.yml": "name: a\nobjectives: {rpo: 1h, rto: 1m}\nsteps: [{target: db}]\n",
    }))
    with pytest.raises(ConfigError) as caught:
        load_plans(config)
    problems = caught.value.problems
    a = tmp_path / "recovery_plans" / "a.yaml"
    assert any(p.startswith(f"{a}:2: at 'objectives.rpo': not a duration") for p in problems)
    assert f"{a}:4: at 'steps[0].target': unknown target 'app-file' (declared: app-files, db)" \
        in problems
    assert any(p.startswith(f"{a}:7: at 'steps[0].checks[1]': unknown check kind")
               for p in problems)
    assert any(p.startswith(f"{a}:11: at 'steps[1].checks[0].expect': unknown expectation")
               for p in problems)
    # b.yml is valid but reuses a's name only if a loaded; a failed, so b stands alone.
    assert len(problems) == 4


def test_duplicate_plan_names(tmp_path: Path) -> None:
    text = "name: same\nobjectives: {rpo: 1h, rto: 1m}\nsteps: [{target: db}]\n"
    config = load_config(project(tmp_path, {"a.yaml": text, "b.yaml": text}))
    with pytest.raises(ConfigError, match="plan name 'same' is also used by"):
        load_plans(config)


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86400 and parse_duration(45) == 45
    for bad in ("", "1 hour", "-5m", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_expectations() -> None:
    snap = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert evaluate(parse_expectation(">= 1000"), 1500, snap)[0]
    assert not evaluate(parse_expectation(">= 1000"), 999, snap)[0]
    assert evaluate(parse_expectation("== 3"), "3", snap)[0]
    assert not evaluate(parse_expectation("== 3"), None, snap)[0]
    within = parse_expectation("within 1h of snapshot")
    assert evaluate(within, "2026-11-25 11:30:00", snap)[0]  # naive text is UTC
    ok, detail = evaluate(within, (snap - timedelta(hours=2)).isoformat(), snap)
    assert not ok and "7200 s older" in detail
    assert evaluate(within, snap.timestamp() - 60, snap)[0]  # unix time
    assert not evaluate(within, "not a time", snap)[0]
    with pytest.raises(ValueError):
        parse_expectation("roughly 5")


def test_scoring() -> None:
    good = StepResult(target="t", repository="r")
    bad = StepResult(target="t", repository="r", error="restore failed")
    kw = {"rpo": 3600.0, "rto": 900.0}
    assert score([good], failed=False, rpo_achieved=10, rto_achieved=10, **kw) == "passed"
    assert score([good], failed=False, rpo_achieved=4000, rto_achieved=10, **kw) == "breached"
    assert score([good], failed=False, rpo_achieved=10, rto_achieved=901, **kw) == "breached"
    assert score([bad], failed=False, rpo_achieved=10, rto_achieved=10, **kw) == "failed"
    assert score([good], failed=True, rpo_achieved=10, rto_achieved=10, **kw) == "failed"
    assert score([good], failed=False, rpo_achieved=10, rto_achieved=None, **kw) == "failed"


def test_free_space_is_checked_before_restoring(tmp_path: Path) -> None:
    ensure_space(tmp_path, 1024)
    with pytest.raises(DrillError, match="not enough space"):
        ensure_space(tmp_path, 10**18)


def test_retention_flags_and_subset_slices() -> None:
    from drkit.config.models import Retention
    from drkit.errors import BadRequestError
    from drkit.jobs.check import slices_of
    from drkit.jobs.prune import retention_flags

    assert retention_flags(Retention(keep_daily=7, keep_last=3, keep_weekly=0)) == (
        "--keep-last", "3", "--keep-daily", "7")
    assert slices_of("5%") == 20 and slices_of("1/3") == 3 and slices_of("100%") == 1
    assert slices_of("33%") == 3
    for bad in ("0%", "150%", "half"):
        with pytest.raises(BadRequestError):
            slices_of(bad)


def test_restore_into_needs_a_database_target(tmp_path: Path) -> None:
    config = load_config(project(tmp_path, {"a.yaml": (
        "name: a\nobjectives: {rpo: 1h, rto: 1m}\nsteps:\n"
        "  - target: db\n    restore_into: {postgres: {dsn: {env: DRILL_DSN}}}\n")}))
    with pytest.raises(ConfigError) as caught:
        load_plans(config)
    (problem,) = caught.value.problems
    assert ":5: at 'steps[0].restore_into': restore_into applies to database targets" in problem
    assert "target 'db' is a sqlite target" in problem
