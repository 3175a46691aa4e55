"""The ``http`` check: start the restored service, wait until its URL answers as expected,
stop it (with its process group) whatever happened.

Requests go straight to the URL, never through a proxy from drkit's environment, and never
follow a redirect (a restored application redirecting to its production address must not be
checked there: the 3xx is the answer); the body read is bounded. Before starting the service
the URL must not answer: whatever answers then (production on the same host, a service left
running) would answer for the restored one. The service is started through the one supervisor
like every other child.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from drkit.supervise import ChildError, ChildSpec, Limits, Supervised, start

BODY_LIMIT = 1 << 20     # bytes of a response read
POLL_S = 0.1             # between two attempts while the service is not answering yet
REQUEST_S = 10.0         # one request


@dataclass
class Answer:
    status: int | None   # None: no answer (refused, reset, timed out)
    body: str
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx reaches the caller as the answer


def fetch(url: str, timeout: float) -> Answer:
    """One GET of ``url`` without any proxy or redirect."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(url, timeout=max(0.1, timeout)) as response:
            body = response.read(BODY_LIMIT)
            return Answer(response.status, body.decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:  # an answer all the same (404, 503 ...)
        body = exc.read(BODY_LIMIT) if exc.fp is not None else b""
        return Answer(exc.code, body.decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(None, "", str(reason))


def wait_for_answer(url: str, *, status: int, body: str | None, limits: Limits,
                    service: Supervised | None) -> tuple[bool, str]:
    """Ask ``url`` until it answers with ``status`` and a body matching ``body``, the
    ``service`` exits, or ``limits`` expire; return whether it did and what was seen."""
    pattern = re.compile(body) if body is not None else None
    last: Answer | None = None
    while True:
        if service is not None and service.proc.poll() is not None:
            return False, (f"the service exited with code {service.proc.returncode} before "
                           f"{url} answered as expected" + _seen(last))
        remaining = limits.remaining()
        if remaining is not None and remaining <= 0:
            return False, f"{limits.message()} waiting for {url}" + _seen(last)
        last = fetch(url, min(REQUEST_S, remaining if remaining is not None else REQUEST_S))
        if last.status == status and (pattern is None or pattern.search(last.body)):
            return True, f"{url} answered {last.status}" + (
                f", body matches {body!r}" if body is not None else "")
        time.sleep(POLL_S)


def _seen(answer: Answer | None) -> str:
    if answer is None:
        return ""
    if answer.status is None:
        return f" (last attempt: {answer.error})"
    excerpt = " ".join(answer.body.split())[:200]
    return f" (last answer: status {answer.status}, body {excerpt!r})"


def run_service_check(url: str, *, argv: Sequence[str] | None, env: Mapping[str, str],
                      cwd: Path, status: int, body: str | None, limits: Limits
                      ) -> tuple[bool, str, dict[str, str]]:
    """Start ``argv`` (if any), wait for ``url``, stop the service; return (passed, detail,
    the service's output)."""
    service: Supervised | None = None
    if argv is not None:
        before = fetch(url, REQUEST_S)
        if before.status is not None:
            return False, (f"{url} already answers (status {before.status}) before the service "
                           "was started: something else would answer for the restored "
                           "service"), {}
        try:
            # No deadline of its own: the wait below is bounded by ``limits`` and the service
            # is stopped right after it, whatever happened.
            service = start(ChildSpec(argv=list(argv), what=f"service {argv[0]}", env=env,
                                      cwd=cwd))
        except ChildError as exc:
            return False, str(exc), {}
    try:
        ok, detail = wait_for_answer(url, status=status, body=body, limits=limits,
                                     service=service)
    finally:
        output: dict[str, str] = {}
        if service is not None:
            service.stop("check done")
            exit_ = service.wait()
            output = {key: text for key, text in (("stdout", exit_.stdout),
                                                  ("stderr", exit_.stderr)) if text}
    return ok, detail, output
