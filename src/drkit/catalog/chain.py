"""The hash chain: each record's SHA-256 covers its canonical content and the previous hash.

The canonical form (documented for offline verification in ``drkit audit export``'s README):
JSON with the keys sorted, no insignificant white space (``,`` and ``:`` separators), UTF-8,
non-ASCII characters kept as they are (``ensure_ascii`` off), no NaN or Infinity (refused),
times as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, ``null`` for a missing value; ``evidence`` is hashed as
the exact text stored (itself canonical JSON). Which fields are hashed depends on the
record's format, which format 2 records carry in a ``format`` field:

- format 1 (drkit 0.1, no ``format`` field): :data:`FIELDS_V1`;
- format 2: :data:`FIELDS_V1` plus ``format`` (2), ``actor`` and ``config_hash``.

A record's hash is ``sha256(canonical text)`` in lowercase hex; the first record's
``prev_hash`` is 64 zeros. Changing how a format is canonicalised breaks every chain written
in it, so each format is frozen; a new field needs a new format.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

FORMAT = 2  # what new records are written in

FIELDS_V1 = (
    "seq", "run_id", "kind", "status", "target", "repository", "plan", "hostname",
    "drkit_version", "restic_version", "started_at", "finished_at", "snapshot_id", "error",
    "evidence", "prev_hash",
)
FIELDS_V2 = (*FIELDS_V1, "format", "actor", "config_hash")
HASHED_FIELDS = FIELDS_V2  # the columns a record's hash may cover
FIELDS = {1: FIELDS_V1, 2: FIELDS_V2}
_TIMES = ("started_at", "finished_at")
_INTS = ("seq", "format")


def canonical_time(value: datetime) -> str:
    """``value`` (naive = UTC) as a fixed-width ISO-8601 UTC string."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def optional_time(value: datetime | None) -> str | None:
    """:func:`canonical_time`, or None for None (report and status JSON)."""
    return canonical_time(value) if value is not None else None


def canonical_json(data: Any) -> str:
    """Deterministic JSON text of ``data`` (sorted keys, compact, non-ASCII kept). Raises
    ValueError for NaN or Infinity, which JSON cannot carry."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return canonical_time(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_format(fields: dict[str, Any]) -> int:
    """The format a record was written in (1 when it has none)."""
    value = fields.get("format")
    return int(value) if value else 1


def hashed_content(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record its hash covers, times canonical."""
    content = {name: fields.get(name) for name in FIELDS[record_format(fields)]}
    for name in _TIMES:
        value = content[name]
        if isinstance(value, datetime):
            content[name] = canonical_time(value)
    return content


def canonical_record(fields: dict[str, Any]) -> str:
    """The exact text a record's hash is the SHA-256 of."""
    return canonical_json(hashed_content(fields))


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_record` of ``fields``."""
    import hashlib  # here: the backup path imports this module before restic starts

    return hashlib.sha256(canonical_record(fields).encode("utf-8")).hexdigest()


# --- the same canonical text, fast, for ``audit verify`` over millions of records ---------

def _sorted_fields(format_: int) -> tuple[str, ...]:
    return tuple(sorted(FIELDS[format_]))


SORTED = {format_: _sorted_fields(format_) for format_ in FIELDS}


def _value(name: str, value: Any) -> str:
    if value is None:
        return "null"
    if name in _INTS:
        return str(int(value))
    if isinstance(value, datetime):
        value = canonical_time(value)
    return str(encode_basestring(value))


def fast_canonical(format_: int, values: dict[str, Any]) -> str:
    """:func:`canonical_record` built by hand (the field set is fixed, so the key order is
    too): several times faster than ``json.dumps``. Times must already be datetimes or
    canonical strings. Equal to :func:`canonical_record` (tested)."""
    return "{" + ",".join(f'"{name}":{_value(name, values.get(name))}'
                          for name in SORTED[format_]) + "}"


def sql_canonical(dialect: str, format_: int) -> str:
    """A SQL expression giving a record's canonical text (format ``format_``) in the
    database itself, for ``audit verify`` over millions of records: SQLite's
    ``json_object`` keeps the keys in the order given and escapes strings as Python's
    ``json`` does; PostgreSQL concatenates ``to_json`` of each value. Only a fast path: a
    record whose text from here does not hash to its hash is checked again with
    :func:`canonical_record` before it is called edited."""
    parts = []
    for name in SORTED[format_]:
        if name in _TIMES:
            if dialect == "postgresql":
                value = f"to_char({name}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            else:
                value = (f"substr({name}, 1, 10) || 'T' || substr({name}, 12) || "
                         f"CASE WHEN length({name}) = 19 THEN '.000000Z' ELSE 'Z' END")
        else:
            value = name
        parts.append((name, value))
    if dialect == "postgresql":
        pieces = []
        for index, (name, value) in enumerate(parts):
            encoded = (f"COALESCE({value}::text, 'null')" if name in _INTS else
                       f"COALESCE(to_json({value}::text)::text, 'null')")
            pieces.append(f"'{'{' if index == 0 else ','}\"{name}\":' || {encoded}")
        return " || ".join(pieces) + " || '}'"
    return "json_object(" + ", ".join(f"'{name}', {value}" for name, value in parts) + ")"
