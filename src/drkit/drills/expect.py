"""``expect`` forms of ``sql`` checks: numbers (``>= N``, ``== N`` and >, <, <=, !=), text
(``== 'text'``, ``!= 'text'``, ``matches REGEX``), booleans (``is true``, ``is false``) and
``within DURATION of snapshot`` (the value is a time no older than that before the snapshot).

Text is compared exactly as the database printed it (``== 'd41d8cd98f00b204e9800998ecf8427e'``
for an md5 of the data); a quote inside the text is doubled, as in SQL (``== 'it''s'``).
A regular expression must match the whole value (Python ``re.fullmatch``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drkit.config.models import parse_duration

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}
_NUMERIC = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_WITHIN = re.compile(r"^\s*within\s+(\S+)\s+of\s+snapshot\s*$", re.IGNORECASE)
_TEXT = re.compile(r"^\s*(==|!=)\s*'((?:[^']|'')*)'\s*$", re.DOTALL)
_MATCHES = re.compile(r"^\s*matches\s+(.+?)\s*$", re.DOTALL)
_BOOLEAN = re.compile(r"^\s*is\s+(true|false)\s*$", re.IGNORECASE)
_TRUE = {"t", "true", "1", "yes", "on"}     # how PostgreSQL, MySQL and SQLite print true
_FALSE = {"f", "false", "0", "no", "off"}


@dataclass(frozen=True)
class Expectation:
    text: str
    op: str | None = None
    number: float | None = None
    within_s: float | None = None
    text_value: str | None = None       # == / != 'text'
    pattern: re.Pattern[str] | None = None
    boolean: bool | None = None


def parse_expectation(text: str) -> Expectation:
    """Parse an ``expect`` string. Raises ValueError naming the accepted forms."""
    match = _NUMERIC.match(text)
    if match:
        return Expectation(text=text, op=match.group(1), number=float(match.group(2)))
    match = _WITHIN.match(text)
    if match:
        return Expectation(text=text, within_s=parse_duration(match.group(1)))
    match = _TEXT.match(text)
    if match:
        return Expectation(text=text, op=match.group(1),
                           text_value=match.group(2).replace("''", "'"))
    match = _BOOLEAN.match(text)
    if match:
        return Expectation(text=text, boolean=match.group(1).lower() == "true")
    match = _MATCHES.match(text)
    if match:
        try:
            pattern = re.compile(match.group(1))
        except re.error as exc:
            raise ValueError(f"expect {text!r}: not a regular expression ({exc})") from None
        return Expectation(text=text, pattern=pattern)
    raise ValueError(f"unknown expectation {text!r} (write '>= N', '== N', '< N', ..., "
                     "== 'text', != 'text', 'matches REGEX', 'is true', 'is false' or "
                     "'within 1h of snapshot')")


def as_time(value: Any) -> datetime:
    """A database value as an aware UTC time: ISO text (naive = UTC) or a Unix timestamp."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    text = str(value).strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d\d$", text):  # psql prints offsets as +00
        text += ":00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def evaluate(expectation: Expectation, value: Any, snapshot_time: datetime) -> tuple[bool, str]:
    """Whether ``value`` meets ``expectation``; and a one-line explanation for the evidence."""
    if value is None:
        return False, "query returned no value (NULL or no row)"
    if expectation.within_s is not None:
        try:
            when = as_time(value)
        except (ValueError, TypeError, OSError):
            return False, f"value {value!r} is not a time"
        lag = (snapshot_time - when).total_seconds()
        ok = lag <= expectation.within_s
        return ok, (f"newest data {when.isoformat()} is {lag:.0f} s older than the snapshot "
                    f"(allowed {expectation.within_s:.0f} s)")
    if expectation.text_value is not None:
        same = str(value) == expectation.text_value
        ok = same if expectation.op == "==" else not same
        verdict = "meets" if ok else "does not meet"
        return ok, f"value {value!r} {verdict} {expectation.text.strip()}"
    if expectation.pattern is not None:
        ok = expectation.pattern.fullmatch(str(value)) is not None
        return ok, (f"value {value!r} {'matches' if ok else 'does not match'} "
                    f"{expectation.pattern.pattern}")
    if expectation.boolean is not None:
        word = str(value).strip().lower()
        if word not in _TRUE | _FALSE:
            return False, f"value {value!r} is not a boolean"
        ok = (word in _TRUE) == expectation.boolean
        return ok, f"value {value!r} {'is' if ok else 'is not'} {str(expectation.boolean).lower()}"
    assert expectation.op is not None and expectation.number is not None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False, f"value {value!r} is not a number"
    ok = _COMPARE[expectation.op](number, expectation.number)
    return ok, f"value {value!r} {'meets' if ok else 'does not meet'} {expectation.text.strip()}"
