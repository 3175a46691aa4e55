"""The hash chain: each record's SHA-256 covers its canonical content and the previous hash.

Canonical content is JSON with sorted keys, no insignificant white space, UTF-8, times as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``; evidence is hashed as the exact text stored. Changing how a
record is canonicalised breaks every existing chain, so this format is frozen.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

HASHED_FIELDS = (
    "seq", "run_id", "kind", "status", "target", "repository", "plan", "hostname",
    "drkit_version", "restic_version", "started_at", "finished_at", "snapshot_id", "error",
    "evidence", "prev_hash",
)


def canonical_time(value: datetime) -> str:
    """``value`` (naive = UTC) as a fixed-width ISO-8601 UTC string."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def optional_time(value: datetime | None) -> str | None:
    """:func:`canonical_time`, or None for None (report and status JSON)."""
    return canonical_time(value) if value is not None else None


def canonical_json(data: Any) -> str:
    """Deterministic JSON text of ``data`` (sorted keys, compact, non-ASCII kept)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return canonical_time(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``fields`` restricted to :data:`HASHED_FIELDS`."""
    import hashlib  # here: the backup path imports this module before restic starts

    content = {name: fields.get(name) for name in HASHED_FIELDS}
    for name in ("started_at", "finished_at"):
        value = content[name]
        if isinstance(value, datetime):
            content[name] = canonical_time(value)
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()
