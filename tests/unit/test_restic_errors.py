"""restic failures are classified the same on 0.14 (text only) and 0.17+ (exit codes)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drkit.restic.commands import backup_args, parse_restic_time
from drkit.restic.errors import (
    RepositoryAlreadyExists,
    RepositoryLocked,
    RepositoryNotFound,
    ResticFailed,
    StorageUnreachable,
    WrongPassword,
    classify,
)
from drkit.restic.runner import mask, mask_url

# stderr as restic 0.14 prints it (all exit 1), seen on Debian 12.
V014 = {
    "wrong": "Fatal: wrong password or no key found\n",
    "missing": ("Fatal: unable to open config file: stat /r/config: no such file or directory\n"
                "Is there a repository at the following location?\n/r\n"),
    "down": ('Fatal: unable to open config file: Stat: Get "http://127.0.0.1:1/b/?location=": '
             "dial tcp 127.0.0.1:1: connect: connection refused\n"
             "Is there a repository at the following location?\ns3:http://127.0.0.1:1/b\n"),
    "locked": ("unable to create lock in backend: repository is already locked exclusively "
               "by PID 4242 on host by root (UID 0, GID 0)\n"),
    "exists": "Fatal: create repository at /r failed: Fatal: config file already exists\n",
}


@pytest.mark.parametrize(("stderr", "expected"), [
    (V014["wrong"], WrongPassword),
    (V014["missing"], RepositoryNotFound),
    (V014["down"], StorageUnreachable),
    (V014["locked"], RepositoryLocked),
    (V014["exists"], RepositoryAlreadyExists),
    ("Fatal: something nobody expected\n", ResticFailed),
])
def test_restic_014_text(stderr: str, expected: type) -> None:
    error = classify(1, stderr, action="backup t -> r")
    assert type(error) is expected
    assert str(error).startswith("backup t -> r: ")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("code", "expected"), [
    (10, RepositoryNotFound), (11, RepositoryLocked), (12, WrongPassword),
])
def test_restic_017_exit_codes(code: int, expected: type) -> None:
    # 0.17+ words things differently; the exit code alone must be enough.
    assert type(classify(code, "Fatal: some newer wording\n", action="x")) is expected


def test_transient_errors_are_marked() -> None:
    assert classify(1, V014["down"], action="x").transient
    assert classify(11, "", action="x").transient
    assert not classify(12, "", action="x").transient


def test_masking() -> None:
    assert mask_url("rest:https://user:pa55word@host:8000/repo") == \
        "rest:https://user:***@host:8000/repo"
    assert mask_url("s3:http://127.0.0.1:9000/b/p") == "s3:http://127.0.0.1:9000/b/p"
    assert mask("token=abcdef and abcdef", ["abcdef"]) == "token=*** and ***"


def test_backup_args_never_carry_secrets_and_end_paths() -> None:
    args = backup_args(["-weird-name", "/srv"], tags=["drkit", "drkit-target=t"], host=None,
                       excludes=["*.tmp"], dry_run=True)
    assert args[:2] == ("backup", "--json")
    assert args[-3:] == ("--", "-weird-name", "/srv")  # a path starting with '-' is no flag
    assert "--dry-run" in args and args[6:8] == ("--exclude", "*.tmp")


def test_parse_restic_time_nanoseconds() -> None:
    assert parse_restic_time("2026-11-25T15:20:46.174288586Z") == \
        datetime(2026, 11, 25, 15, 20, 46, 174288, tzinfo=UTC)
    assert parse_restic_time("2026-11-25T16:20:46.1+01:00") == \
        datetime(2026, 11, 25, 15, 20, 46, 100000, tzinfo=UTC)
