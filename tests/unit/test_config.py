"""Config loading: valid examples load; every error is reported at once with file:line:path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drkit.config import load_config
from drkit.config.secrets import SecretRef
from drkit.errors import ConfigError, SecretError
from drkit.targets.files import FilesTarget
from drkit.targets.sqlite import SqliteTarget

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "drkit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_shipped_example_config_is_valid() -> None:
    config = load_config(REPO_ROOT / "config" / "drkit.yaml")
    assert config.targets and config.repositories
    for target in config.targets.values():
        assert set(target.repositories) <= set(config.repositories)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
repositories:
  local: {url: ../backups, password: {file: ../secrets/restic}}
  remote: {url: "s3:http://127.0.0.1:9000/bkt/prefix", password: {env: P}}
targets:
  files: {kind: files, paths: [../data, /abs], repositories: [local]}
  db: {kind: sqlite, path: ../app.sqlite, repositories: [local, remote]}
""")
    config = load_config(path)
    base = path.parent
    top = tmp_path
    assert config.repositories["local"].url == str(top / "backups")
    assert config.repositories["local"].password.file == top / "secrets" / "restic"
    assert config.repositories["remote"].url == "s3:http://127.0.0.1:9000/bkt/prefix"
    files = config.targets["files"]
    assert isinstance(files, FilesTarget) and files.paths == [top / "data", Path("/abs")]
    db = config.targets["db"]
    assert isinstance(db, SqliteTarget) and db.path == top / "app.sqlite"
    assert config.state_dir == base / ".drkit"
    assert config.plans_dir == top / "recovery_plans"


def test_every_error_at_once_with_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, """\
parallelism: 0
repositories:
  primary:
    url: /srv/backups
    password: {env: RESTIC_PASSWORD}
targets:
  app-files:
    kind: files
    paths: [/srv/app/data]
    repositories: [primary, ofsite]
    schedule: "61 * * * *"
    colour: blue
  orders:
    kind: oracle
    repositories: [primary]
  invoices:
    kind: sqlite
    repositories: [primary]
""")
    found = problems(path)
    shown = str(path)
    assert f"{shown}:1: at 'parallelism': Input should be greater than 0" in found
    assert (f"{shown}:10: at 'targets.app-files.repositories[1]': unknown repository 'ofsite' "
            "(declared: primary)") in found
    assert f"{shown}:11: at 'targets.app-files.schedule': not a valid cron expression: " \
           "'61 * * * *'" in found
    assert f"{shown}:12: at 'targets.app-files.colour': unknown key" in found
    assert any(p.startswith(f"{shown}:13: at 'targets.orders': unknown target kind 'oracle'")
               for p in found)
    assert f"{shown}:16: at 'targets.invoices.path': required key is missing" in found
    assert len(found) == 6


def test_inline_secret_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
repositories:
  primary: {url: /r, password: hunter2-super-secret}
""")
    (problem,) = problems(path)
    assert "inline secrets are not allowed" in problem
    assert "hunter2" not in problem


def test_duplicate_keys_and_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, """
repositories:
  primary: {url: /r, password: {env: P}}
  primary: {url: /s, password: {env: P}}
""")
    assert any("duplicate key" in p and "'repositories.primary'" in p for p in problems(path))
    broken = write(tmp_path, "repositories:\n  primary: [unclosed\n")
    (problem,) = problems(broken)
    assert problem.startswith(f"{broken}:") and "not valid YAML" in problem


def test_missing_config_is_a_bad_request(tmp_path: Path) -> None:
    from drkit.errors import BadRequestError

    with pytest.raises(BadRequestError, match="no config at"):
        load_config(tmp_path / "nope.yaml")


def test_s3_settings_only_for_s3_urls(tmp_path: Path) -> None:
    path = write(tmp_path, """
repositories:
  local:
    url: /r
    password: {env: P}
    s3: {region: eu-west-1}
  half:
    url: "s3:http://h:9000/b"
    password: {env: P}
    s3: {access_key: {env: A}}
""")
    found = problems(path)
    assert any("'repositories.local'" in p and "apply only to s3:" in p for p in found)
    assert any("'repositories.half.s3'" in p and "both access_key and secret_key" in p
               for p in found)


def test_secret_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRKIT_T_SECRET", "s3cr3t")
    assert SecretRef(env="DRKIT_T_SECRET").resolve() == "s3cr3t"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    assert SecretRef(file=secret_file).resolve() == "from-file"
    monkeypatch.delenv("DRKIT_T_SECRET")
    with pytest.raises(SecretError, match="DRKIT_T_SECRET is not set"):
        SecretRef(env="DRKIT_T_SECRET").resolve()
    with pytest.raises(SecretError, match="cannot read secret file"):
        SecretRef(file=tmp_path / "absent").resolve()
    assert "s3cr3t" not in repr(SecretRef(env="DRKIT_T_SECRET"))


def test_config_path_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drkit.config.loader import find_config_path

    monkeypatch.delenv("DRKIT_CONFIG", raising=False)
    assert find_config_path(None) == Path("config") / "drkit.yaml"
    monkeypatch.setenv("DRKIT_CONFIG", os.fspath(tmp_path / "x.yaml"))
    assert find_config_path(None) == tmp_path / "x.yaml"
    assert find_config_path("explicit.yaml") == Path("explicit.yaml")


def test_report_evidence_bucket_and_scheduling_settings_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, """\
repositories:
  r: {url: /srv/r, password: {env: P}}
reports:
  output:
    s3: {bucket: evidence, repository: nope}
retries: {attempts: -1, delays: []}
prune: {schedule: "every day"}
""")
    found = problems(path)
    assert any(":5: at 'reports.output.s3.repository': unknown repository 'nope'" in p
               for p in found), found
    assert any("'retries.attempts'" in p for p in found), found
    assert any("'retries.delays'" in p for p in found), found
    assert any("'prune.schedule'" in p for p in found), found


def test_yaml_merge_keys_are_no_duplicates(tmp_path: Path) -> None:
    """`<<: *anchor` (a common way to share target settings) loads; a real duplicate key
    is still an error with its line."""
    path = tmp_path / "drkit.yaml"
    path.write_text(
        "repositories:\n  r: {url: /tmp/r, password: {env: X}}\n"
        "targets:\n"
        "  a: &files {kind: files, paths: [/srv/a], repositories: [r]}\n"
        "  b:\n    <<: *files\n    paths: [/srv/b]\n")
    config = load_config(path)
    assert [str(p) for p in config.targets["b"].paths] == ["/srv/b"]  # type: ignore[attr-defined]
    path.write_text("repositories:\n  r: {url: /tmp/r, password: {env: X}}\n"
                    "repositories:\n  s: {url: /tmp/s, password: {env: X}}\n")
    with pytest.raises(ConfigError, match=r"drkit.yaml:3: .*duplicate key"):
        load_config(path)
