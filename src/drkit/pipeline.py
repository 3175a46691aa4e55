"""A producer piped into a consumer (a dump into ``restic backup --stdin``), supervised as one
unit by :mod:`drkit.supervise`: one deadline for both, both stopped together, and a verdict
on which of the two failed first."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from drkit.supervise import (
    NO_LIMITS,
    STOP_GRACE_S,
    ChildSpec,
    Exit,
    Limits,
    follow_output,
    start,
    stop_surely,
)

PRODUCER_LAG_S = 2.0  # past the consumer's deadline and its stop's grace


@dataclass
class PipelineExit:
    """How a producer piped into a consumer ended, and which of them failed first."""

    producer: Exit
    consumer: Exit
    first_failure: str | None = field(default=None)  # "producer" | "consumer" | None


def first_failure(producer: Exit, consumer: Exit) -> str | None:
    """Which side failed first, judged by cause, not by which exit was seen first. A producer
    that dies only ends the consumer's input (restic then stores what it got), so a failed
    consumer failed first (the producer's broken pipe, or drkit stopping it, only followed);
    a consumer that finished while the producer failed read a torn stream. (The one way a
    producer makes restic fail, an empty input, is the caller's to recognise.)"""
    if producer.ok and consumer.ok:
        return None
    return "producer" if consumer.ok else "consumer"


def run_pipeline(producer: ChildSpec, consumer: ChildSpec, *, limits: Limits = NO_LIMITS,
                 on_consumer_line: Callable[[bytes], None] | None = None,
                 watch: Callable[[], str | None] | None = None,
                 on_consumer_stderr: Callable[[str], None] | None = None,
                 on_started: Callable[[], None] | None = None) -> PipelineExit:
    """Pipe ``producer``'s stdout into ``consumer``'s stdin, watched as one unit: one deadline
    for both, both stopped when either is stopped or on Ctrl-C, the producer stopped when the
    consumer ends first. Raises :class:`ChildError` if either cannot start.

    At the deadline the consumer is stopped first and the producer only once the consumer
    has ended: a producer stopped first would end the consumer's input, and restic would
    store the torn stream as a snapshot before its own stop arrives."""
    behind = limits if limits.deadline is None else \
        replace(limits, deadline=limits.deadline + STOP_GRACE_S + PRODUCER_LAG_S)
    source = start(producer, stdout=subprocess.PIPE, capture_stdout=False, limits=behind,
                   stdout_is_ours=False)
    assert source.proc.stdout is not None
    try:
        sink = start(consumer, stdin=source.proc.stdout, limits=limits, watch=watch,
                     capture_stdout=on_consumer_line is None,
                     on_stderr_line=on_consumer_stderr)
    except BaseException:
        source.stop("interrupt", grace=0)
        source.wait()
        raise
    source.proc.stdout.close()  # the consumer holds the read end now
    try:
        follow_output(sink, on_started, on_consumer_line)
        consumer_exit = sink.wait()
        if not consumer_exit.ok:  # nobody reads the producer's output any more
            source.stop("consumer ended")
        # Otherwise the consumer read the stream to its end: the producer closed its output
        # and is exiting (its own watchdog holds it to the deadline).
        producer_exit = source.wait()
    except BaseException:
        for child in (sink, source):
            stop_surely(child)
        raise
    return PipelineExit(producer=producer_exit, consumer=consumer_exit,
                        first_failure=first_failure(producer_exit, consumer_exit))
