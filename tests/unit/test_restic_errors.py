"""restic failures are classified the same on 0.14 (text only) and 0.17+ (exit codes)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drkit.restic import watch
from drkit.restic.commands import backup_args, parse_restic_time
from drkit.restic.errors import (
    AccessDenied,
    RepositoryAlreadyExists,
    RepositoryLocked,
    RepositoryNotFound,
    ResticFailed,
    StorageUnreachable,
    WrongPassword,
    classify,
    fatal_line,
)
from drkit.restic.runner import mask_url
from drkit.restic.watch import StorageWatch, go_duration
from drkit.supervise import mask

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


# Causes before symptoms: "unable to create lock" is a lock conflict only when restic says the
# repository is already locked (seen with 0.14: storage stopped as the lock is written).
LOCK_BUT_NETWORK = ('Fatal: unable to create lock in backend: Save(<lock/1a2b3c4d5e>) failed: '
                    'client.PutObject: Put "http://127.0.0.1:9/b/locks/1a2b": dial tcp '
                    "127.0.0.1:9: connect: connection refused\n")
LOCK_BUT_PERMISSION = ("Fatal: unable to create lock in backend: open /r/locks/1a2b: "
                       "permission denied\n")
SIGNATURE = ("Fatal: unable to open config file: Stat: The request signature we calculated does "
             "not match the signature you provided. Check your key and signing method.\n"
             "Is there a repository at the following location?\ns3:http://127.0.0.1:9/b\n")
# restic 0.18 with --json writes its fatal error as a JSON line.
V018_JSON = ('{"message_type":"exit_error","code":1,"message":"Fatal: unable to save snapshot: '
             'client.PutObject: dial tcp 127.0.0.1:9: connect: connection refused"}\n')


@pytest.mark.parametrize(("stderr", "expected", "transient"), [
    (LOCK_BUT_NETWORK, StorageUnreachable, True),
    (LOCK_BUT_PERMISSION, AccessDenied, False),
    (SIGNATURE, AccessDenied, False),
    (V018_JSON, StorageUnreachable, True),
])
def test_causes_before_symptoms(stderr: str, expected: type, transient: bool) -> None:
    error = classify(1, stderr, action="check r")
    assert type(error) is expected
    assert error.transient is transient


def test_unreadable_source_files_are_no_access_error() -> None:
    # A backup warns about unreadable source files; its fatal cause is something else.
    stderr = ("error: open /srv/secret: permission denied\n"
              "Fatal: unable to open config file: stat /r/config: no such file or directory\n"
              "Is there a repository at the following location?\n/r\n")
    assert type(classify(1, stderr, action="x")) is RepositoryNotFound


def test_fatal_line_reads_restic_018_json() -> None:
    assert fatal_line(V018_JSON).startswith("unable to save snapshot: client.PutObject")
    retrying = ("Save(<data/5d>) returned error, retrying after 552ms: dial tcp: refused\n"
                "Fatal: unable to save snapshot: context canceled\n")
    assert fatal_line(retrying) == "unable to save snapshot: context canceled"


def test_go_durations() -> None:
    assert go_duration("552.330144ms") == pytest.approx(0.552330144)
    assert go_duration("1m0.5s") == pytest.approx(60.5)
    assert go_duration("12.777523904s") == pytest.approx(12.777523904)


RETRY = ('Save(<data/5d840e4c5d>) returned error, retrying after {delay}: client.PutObject: '
         'Put "http://127.0.0.1:19555/b/data/5d": dial tcp 127.0.0.1:19555: connect: '
         "connection refused")


def test_storage_watch_stops_a_long_outage_and_forgets_a_short_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(watch.time, "monotonic", lambda: now[0])
    seen = StorageWatch(timeout_s=60)
    assert seen.verdict() is None
    seen.see(RETRY.format(delay="1.5s"))
    now[0] += 20
    assert seen.verdict() is None  # 20 s into an outage, limit 60 s
    now[0] += 20  # no new retry line for 40 s (1.5 s back-off + 30 s grace): it went through
    assert seen.verdict() is None
    seen.see(RETRY.format(delay="10s"))  # a new outage starts
    for _ in range(7):
        now[0] += 10
        seen.see(RETRY.format(delay="10s"))
    verdict = seen.verdict()
    assert verdict is not None and verdict.startswith("storage unreachable for 70 s")
    assert "connection refused" in verdict and seen.retries == 9


def test_storage_watch_stops_a_refusal_at_once() -> None:
    seen = StorageWatch(timeout_s=600)
    seen.see("Stat(<config/>) returned error, retrying after 816ms: Stat: The request signature "
             "we calculated does not match the signature you provided.")
    verdict = seen.verdict()
    assert verdict is not None and verdict.startswith("the storage refused access")


def test_storage_watch_stops_restic_stuck_on_a_vanished_lock_file() -> None:
    seen = StorageWatch(timeout_s=600)
    seen.see("Load(<lock/c2609c80a9>, 0, 0) returned error, retrying after 552.330144ms: open "
             "repo/locks/c2609c80a961e95ccb45ce69dac581a747082c00de86b502de77294394d2d7cd: no "
             "such file or directory")
    verdict = seen.verdict()
    assert verdict is not None and verdict.startswith("a lock file vanished")
    assert seen.kind == "vanished_lock" and seen.retries == 0  # no storage trouble
