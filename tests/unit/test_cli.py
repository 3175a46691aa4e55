"""The command line: fast start, exit codes, init, concurrency limit (with a fake restic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

FAKE_RESTIC = textwrap.dedent('''\
    #!{python}
    import json, os, sys, time, pathlib
    args = sys.argv[1:]
    if args[:1] == ["version"]:
        print("restic 0.17.3 compiled with go1.22.5 on linux/amd64")
        sys.exit(0)
    state = pathlib.Path(os.environ["RESTIC_FAKE_STATE"])
    with open(state / "calls.jsonl", "a") as log:
        log.write(json.dumps({{"argv": sys.argv,
                              "repo": os.environ.get("RESTIC_REPOSITORY"),
                              "has_password": "RESTIC_PASSWORD" in os.environ}}) + "\\n")
    if args[0] == "backup":
        paths = args[args.index("--") + 1:]
        if any("fail" in p for p in paths):
            print("Fatal: simulated failure", file=sys.stderr)
            sys.exit(1)
        # A barrier, not a sleep: go on once a second backup runs beside this one, or once
        # every other successful backup is running or done (none can join any more).
        marker = state / f"running-{{os.getpid()}}"
        marker.touch()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            running = len(list(state.glob("running-*")))
            if running >= 2 or running + len(list(state.glob("done-*"))) >= 5:
                break
            time.sleep(0.01)
        with open(state / "concurrency", "a") as out:
            out.write(f"{{len(list(state.glob('running-*')))}}\\n")
        (state / f"done-{{os.getpid()}}").touch()
        marker.unlink()
        print(json.dumps({{"message_type": "summary", "snapshot_id": "feed%04d" % os.getpid(),
                          "files_new": 1, "data_added": 10}}))
''')


def drkit(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drkit", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom drkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('prefect', 'boto3', 'sqlalchemy', 'pydantic', 'rich')"
            " if m in sys.modules]\nprint(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bad_flag_and_missing_command_exit_2(tmp_path: Path) -> None:
    assert drkit("backup", "--no-such-flag", cwd=tmp_path).returncode == 2
    assert drkit(cwd=tmp_path).returncode == 2
    missing = drkit("status", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no config at config/drkit.yaml" in missing.stderr and "drkit init" in missing.stderr


def test_init_writes_a_valid_starter_and_never_overwrites(tmp_path: Path) -> None:
    first = drkit("init", str(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config = tmp_path / "config" / "drkit.yaml"
    assert config.exists() and (tmp_path / "recovery_plans" / "example.yaml").exists()
    assert drkit("validate", cwd=tmp_path).returncode == 0
    config.write_text(config.read_text() + "\n# my edits\n")
    again = drkit("init", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 2 and "not overwriting" in again.stderr
    assert config.read_text().endswith("# my edits\n")


@pytest.fixture
def fake_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    fake = tmp_path / "fake-restic"
    fake.write_text(FAKE_RESTIC.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    targets = {}
    for index in range(6):
        data = tmp_path / ("fail-data" if index == 3 else f"data{index}")
        data.mkdir()
        targets[f"t{index}"] = {"kind": "files", "paths": [str(data)], "repositories": ["r"]}
    config = {"restic_binary": str(fake), "parallelism": 2,
              "repositories": {"r": {"url": str(tmp_path / "repo"),
                                     "password": {"env": "FAKE_PW"}}},
              "targets": targets}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "drkit.yaml").write_text(yaml.safe_dump(config))
    return tmp_path, {"RESTIC_FAKE_STATE": str(state), "FAKE_PW": "fake-password-123"}


def test_parallelism_limit_and_failure_isolation(fake_project: tuple[Path, dict[str, str]]
                                                 ) -> None:
    root, env = fake_project
    result = drkit("backup", "--json", cwd=root, env=env)
    assert result.returncode == 1
    runs = json.loads(result.stdout)["runs"]
    by_target = {run["target"]: run for run in runs}
    assert by_target["t3"]["status"] == "failed"
    assert "simulated failure" in by_target["t3"]["error"]
    assert all(by_target[f"t{i}"]["status"] == "succeeded" for i in (0, 1, 2, 4, 5))
    assert "1 of 6 backups failed: t3 -> r" in result.stderr
    seen = [int(line) for line in (root / "state" / "concurrency").read_text().split()]
    assert max(seen) == 2  # never more than `parallelism` restic processes at once
    calls = [json.loads(line) for line in (root / "state" / "calls.jsonl").read_text().split("\n")
             if line]
    for call in calls:
        assert "fake-password-123" not in " ".join(call["argv"])
        assert call["has_password"] and call["repo"] == str(root / "repo")
    assert {"--tag", "drkit", "drkit-target=t0"} <= set(next(
        c["argv"] for c in calls if str(root / "data0") in c["argv"]))


def test_serve_without_any_schedule_is_a_bad_request(fake_project: tuple[Path, dict[str, str]]
                                                     ) -> None:
    root, env = fake_project  # targets without 'schedule:'
    result = drkit("serve", cwd=root, env={**env, "PREFECT_API_URL": ""})
    assert result.returncode == 2 and "nothing to schedule" in result.stderr
    assert "Traceback" not in result.stderr
