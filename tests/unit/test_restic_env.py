"""What restic's environment holds: its repository's secrets and backend variables, no more."""

from __future__ import annotations

import pytest

from drkit.config.models import Repository
from drkit.config.secrets import SecretRef
from drkit.restic.runner import ResticRepository


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PW": "repo-password-1", "OTHER_REPO_PW": "other-password-2",
                        "ORDERS_DSN": "postgresql://u:dsn-pass@db/orders",
                        "SSH_AUTH_SOCK": "/run/agent.sock", "B2_ACCOUNT_KEY": "b2-key",
                        "RESTIC_CACHE_DIR": "/var/cache/restic", "RESTIC_PASSWORD": "shell-pw",
                        "MY_TOKEN": "token-3"}.items():
        monkeypatch.setenv(name, value)


def env_of(url: str, **extra: object) -> dict[str, str]:
    repo = ResticRepository(name="r", config=Repository(url=url, password=SecretRef(env="PW"),
                                                        **extra))  # type: ignore[arg-type]
    env, _ = repo.environment()
    return env


def test_only_the_repositorys_own_secrets_reach_restic() -> None:
    env = env_of("/srv/repo")
    assert env["RESTIC_PASSWORD"] == "repo-password-1"  # the config's, not the shell's
    assert env["RESTIC_CACHE_DIR"] == "/var/cache/restic" and "PATH" in env
    for name in ("OTHER_REPO_PW", "ORDERS_DSN", "SSH_AUTH_SOCK", "B2_ACCOUNT_KEY", "MY_TOKEN"):
        assert name not in env


def test_backend_variables_and_the_env_list_pass() -> None:
    assert env_of("sftp:backup@host:/srv/repo")["SSH_AUTH_SOCK"] == "/run/agent.sock"
    assert env_of("b2:bucket:repo")["B2_ACCOUNT_KEY"] == "b2-key"
    assert env_of("rest:https://host/repo", env=["MY_TOKEN"])["MY_TOKEN"] == "token-3"
    assert "B2_ACCOUNT_KEY" not in env_of("sftp:backup@host:/srv/repo")
