"""The supervisor of children: process groups, deadlines, escapes, which side failed first."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drkit import supervise
from drkit.pipeline import first_failure
from drkit.supervise import ChildError, ChildSpec, Exit, Limits, run, start
from tests.helpers import unique_sleep, wait_for


@pytest.fixture(autouse=True)
def _resume_after() -> Iterator[None]:
    yield
    supervise.resume()


def left(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_a_deadline_kills_the_whole_group() -> None:
    sleep = unique_sleep()
    begun = time.monotonic()
    exit_ = run(ChildSpec(argv=["sh", "-c", f"{sleep} & {sleep}"], what="hung"),
                limits=Limits.after(0.5))
    assert exit_.stopped == "timeout" and exit_.returncode < 0
    assert time.monotonic() - begun < 10
    assert not left(sleep)


def test_a_process_that_leaves_the_group_but_holds_the_output_is_killed_too() -> None:
    sleep = unique_sleep()
    begun = time.monotonic()
    exit_ = run(ChildSpec(argv=["sh", "-c", f"setsid {sleep} & echo started"], what="escape"))
    assert exit_.returncode == 0 and "started" in exit_.stdout
    # Without it, reading the output would wait for the escaped sleep, past any deadline.
    assert time.monotonic() - begun < supervise.ESCAPE_GRACE_S + 5
    assert not left(sleep)


def test_terminate_all_escalates_and_no_child_starts_afterwards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "STOP_GRACE_S", 0.5)
    stubborn = start(ChildSpec(argv=["sh", "-c", "trap '' TERM; echo ready; sleep 100"],
                               what="stubborn"), capture_stdout=False)
    assert stubborn.proc.stdout is not None
    assert stubborn.proc.stdout.readline() == b"ready\n"  # its trap is in place
    supervise.terminate_all()
    exit_ = stubborn.wait()
    assert exit_.returncode == -signal.SIGKILL and exit_.stopped == "interrupt"
    with pytest.raises(ChildError, match="drkit is stopping"):
        start(ChildSpec(argv=["true"], what="late"))


def test_a_restic_style_child_gets_its_own_stop_signal() -> None:
    marker = unique_sleep()
    child = start(ChildSpec(argv=["sh", "-c", f"trap 'echo got-int; exit 7' INT; echo ready; "
                                              f"{marker} & wait"],
                            what="restic-like", stop_signal=signal.SIGINT), capture_stdout=False)
    assert child.proc.stdout is not None
    assert child.proc.stdout.readline() == b"ready\n"
    child.stop("interrupt")
    assert child.proc.stdout.read() == b"got-int\n"
    assert child.wait().returncode == 7
    wait_for(lambda: not left(marker), "the group to be gone", 10)


@pytest.mark.parametrize(("producer", "consumer", "first"), [
    (Exit(0), Exit(0), None),
    (Exit(1, ended_at=1.0), Exit(0, ended_at=2.0), "producer"),   # torn stream, restic done
    # restic failed; the dump only noticed later, in its own words (mysqldump: errno 32) -
    # even when the dump's exit was seen first, restic's failure came first.
    (Exit(2, stderr="Got errno 32 on write", ended_at=1.0), Exit(1, ended_at=2.0), "consumer"),
    (Exit(-15, stopped="consumer ended"), Exit(12), "consumer"),
    (Exit(0), Exit(-2, stopped="watch"), "consumer"),
])
def test_which_side_failed_first(producer: Exit, consumer: Exit, first: str | None) -> None:
    assert first_failure(producer, consumer) == first


def test_at_the_deadline_the_consumer_stops_before_its_input_ends(tmp_path: Path) -> None:
    """A hung producer piped into a consumer that stores what it read once its input ends
    (as restic stores a stream): at the deadline the consumer must be stopped before the
    producer, or it stores a torn stream. This consumer even ignores SIGTERM (SIGKILLed after
    the grace): the producer is still not stopped before it is gone."""
    from drkit.pipeline import run_pipeline

    stored = tmp_path / "stored"
    sleep = unique_sleep()
    piped = run_pipeline(
        ChildSpec(argv=["sh", "-c", f"echo partial; exec {sleep}"], what="hung producer"),
        ChildSpec(argv=["sh", "-c", f"trap '' TERM; cat > {tmp_path}/got; echo yes > {stored}"],
                  what="consumer"),
        limits=Limits.after(1.0))
    assert piped.consumer.stopped == "timeout"
    assert piped.producer.stopped == "consumer ended"
    assert not stored.exists(), "the consumer saw its input end and stored a torn stream"
    assert subprocess.run(["pgrep", "-f", sleep], capture_output=True).returncode == 1
