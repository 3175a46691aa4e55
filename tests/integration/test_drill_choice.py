"""Every copy gets drilled (repository: all | rotate), recovery points picked at random within
a window, RPO per copy in status, and plans overdue for a drill. Real restic, local
repositories."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Project

OLD = "2020-01-02 03:04:05"


def stale_offsite_restic(project: Project, offsite: Path) -> str:
    """restic, except that backups into ``offsite`` are dated 2020: an off-site copy whose
    newest snapshot is years old, as when its uploads silently stopped."""
    wrapper = project.root / "restic-stale-offsite"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$RESTIC_REPOSITORY" = "{offsite}" ] && [ "$1" = backup ]; then
            shift
            exec {project.restic_binary} backup --time "{OLD}" "$@"
        fi
        exec {project.restic_binary} "$@"
        """))
    wrapper.chmod(0o755)
    return str(wrapper)


def two_copies(project: Project, step: dict[str, Any], *, restic: str | None = None,
               plan_extra: dict[str, Any] | None = None, initialise: tuple[str, ...] = (
                   "primary", "offsite")) -> None:
    data = project.root / "app"
    data.mkdir()
    (data / "config.json").write_text('{"replicas": 3}')
    repo = {"password": {"env": "DRKIT_TEST_PASSWORD"}}
    project.write_config({
        **({"restic_binary": restic} if restic else {}),
        "repositories": {"primary": {"url": str(project.root / "primary"), **repo},
                         "offsite": {"url": str(project.root / "offsite"), **repo}},
        "targets": {"files": {"kind": "files", "paths": [str(data)],
                              "repositories": ["primary", "offsite"]}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "p.yaml").write_text(yaml.safe_dump({
        "name": "p", "objectives": {"rpo": "1h", "rto": "15m"}, **(plan_extra or {}),
        "steps": [{"target": "files", "checks": [{"files_exist": ["config.json"]}], **step}]}))
    result = project.run("validate")
    assert result.returncode == 0, result.stderr
    for name in initialise:
        assert project.run("repo", "init", name).returncode == 0


def test_repository_all_drills_every_copy_and_a_stale_one_breaches(project: Project) -> None:
    two_copies(project, {"repository": "all"},
               restic=stale_offsite_restic(project, project.root / "offsite"))
    backup = project.run("backup")
    assert backup.returncode == 0, backup.stderr
    result = project.run("drill", "p", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    drill = json.loads(result.stdout)
    assert [s["repository"] for s in drill["steps"]] == ["primary", "offsite"]
    assert all(c["status"] == "passed" for s in drill["steps"] for c in s["checks"])
    assert drill["steps"][1]["snapshot_time"].startswith("2020-01-02T03:04:05")
    assert "repository: all (2 of 2)" in drill["steps"][1]["chosen_by"]
    assert drill["status"] == "breached" and drill["rpo_met"] is False
    assert drill["rpo_achieved_s"] > 5 * 365 * 86400  # the off-site copy's age, not primary's


def test_repository_rotate_takes_a_different_copy_each_drill(project: Project) -> None:
    two_copies(project, {"repository": "rotate"})
    assert project.run("backup").returncode == 0
    taken = []
    for _ in range(3):
        result = project.run("drill", "p", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        (step,) = json.loads(result.stdout)["steps"]
        taken.append(step["repository"])
    assert taken == ["primary", "offsite", "primary"]


def test_random_pick_chooses_among_good_backups_of_the_window(project: Project) -> None:
    two_copies(project, {"pick": {"random_within": "30d"}})
    good = []
    for _ in range(3):
        backup = project.run("backup", "--json")
        assert backup.returncode == 0, backup.stderr
        good.append(json.loads(backup.stdout)["runs"][0]["snapshot_id"])
    result = project.run("drill", "p", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (step,) = json.loads(result.stdout)["steps"]
    assert step["snapshot_id"][:8] in good
    assert "picked at random among the 3 good backups of the last 2592000 s" \
        in step["chosen_by"]


def test_status_shows_each_copy_against_the_rpo(project: Project) -> None:
    """The off-site repository was never initialised: its backups fail. The fresh primary
    must not hide that the target's off-site copy misses the RPO."""
    two_copies(project, {}, initialise=("primary",))
    assert project.run("backup").returncode == 1
    result = project.run("status", "--json")
    assert result.returncode == 1
    (target,) = json.loads(result.stdout)["targets"]
    primary, offsite = target["repositories"]
    assert primary["rpo_ok"] is True and offsite["rpo_ok"] is False
    assert offsite["age_s"] is None and target["rpo_ok"] is False


def test_plan_overdue_for_a_drill_fails_status(project: Project) -> None:
    two_copies(project, {}, plan_extra={"drill_every": "90d"})
    assert project.run("backup").returncode == 0
    before = project.run("status", "--json")
    assert before.returncode == 1
    (plan,) = json.loads(before.stdout)["plans"]
    assert plan["overdue"] is True and plan["drill_every_s"] == 90 * 86400
    assert "overdue" in project.run("status").stdout
    assert project.run("drill", "p").returncode == 0
    after = project.run("status", "--json")
    assert after.returncode == 0, after.stdout
    (plan,) = json.loads(after.stdout)["plans"]
    assert plan["overdue"] is False
