"""Failure notifications: a JSON event POSTed to ``notify.webhook`` when a run fails, a check
finds damage, or a drill is breached or failed. Delivery problems are logged, never fatal, and
the webhook URL (which often carries a token) is never logged."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from drkit import __version__
from drkit.catalog.chain import canonical_time
from drkit.catalog.inflight import utcnow
from drkit.config.models import Config
from drkit.config.secrets import SecretRef, redact
from drkit.errors import SecretError

log = logging.getLogger("drkit.notify")
TIMEOUT_S = 10.0


def notify_failure(config: Config, kind: str, status: str, **details: Any) -> bool:
    """POST one event to the configured webhook, if any. Returns whether it was delivered.

    ``details`` (target, repository, plan, error, run_id, record_id...) go into the event.
    Never raises: it runs after the run's record was appended, and nothing may then make the
    caller record the run a second time.
    """
    try:
        return _notify(config, kind, status, **details)
    except Exception as exc:  # a malformed reply, a bug: logged, never fatal
        log.warning("notification for %s %s not delivered: %s: %s", kind, status,
                    type(exc).__name__, redact(str(exc)))
        return False


def _notify(config: Config, kind: str, status: str, **details: Any) -> bool:
    webhook = config.notify.webhook if config.notify else None
    if webhook is None:
        return False
    event = {"event": f"{kind}_{status}", "kind": kind, "status": status,
             "host": socket.gethostname(), "drkit_version": __version__,
             "time": canonical_time(utcnow()), **details}
    try:
        url = webhook.url.resolve()
    except SecretError as exc:
        log.warning("notification not sent: webhook %s", exc)
        return False
    # The event leaves the machine: no secret may be in it, whatever an error echoed.
    return _post(url, redact(json.dumps(event, default=str)).encode("utf-8"),
                 "application/json", what=f"notification for {kind} {status}")


def _post(url: str, body: bytes, content_type: str, *, what: str) -> bool:
    """POST ``body``; log (without the URL) and return False when it is not delivered."""
    import urllib.request  # here: most runs never notify, and it costs start-up time

    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "User-Agent": f"drkit/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()
        return True
    except Exception as exc:  # refused, timed out, HTTP error, malformed reply (HTTPException)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.warning("%s not delivered: %s", what, redact(str(reason)))
        return False


def ping(url_ref: SecretRef, *, success: bool, body: str = "") -> bool:
    """Ping a healthchecks.io-style URL: the URL itself on success, ``URL/fail`` on failure
    (the body, a short reason, shows in the check's log). Never fatal; the URL is not logged."""
    try:
        url = url_ref.resolve().rstrip("/")
    except SecretError as exc:
        log.warning("healthcheck not pinged: %s", exc)
        return False
    except Exception as exc:  # never fatal
        log.warning("healthcheck not pinged: %s", type(exc).__name__)
        return False
    return _post(url if success else f"{url}/fail", redact(body[:10_000]).encode("utf-8"),
                 "text/plain; charset=utf-8",
                 what=f"healthcheck ping ({'success' if success else 'failure'})")
