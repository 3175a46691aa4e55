"""``audit verify``: re-hash the record chain, check every checkpoint's signature and that the
chain still passes through every anchored head. Read-only: it never writes to the catalog.

What each break looks like:

- a record edited in place no longer matches its hash; one deleted leaves a gap and a broken
  link; one inserted out of order breaks the links around it; records cut from the end
  disagree with the chain head row;
- an insider who edits a record *and* re-hashes every later one (and the head row) with
  drkit's own code leaves a consistent chain, but not one that passes through the heads the
  checkpoints signed: the checkpoint covering the edited record lists its original hash, so
  the record is named; records deleted from the end (head row fixed) leave a chain shorter
  than the newest anchored checkpoint;
- a checkpoint whose signature does not verify with the configured public key, or was made
  with another key, is named; so is a checkpoint missing from the catalog's own sequence
  (each links to the one before).

Speed: rows are read through the database driver itself and each canonical text is built by
:func:`drkit.catalog.chain.fast_canonical`-like templates; signatures are checked on every
core when there are many.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, inspect

from drkit.catalog.checkpoints import CHECKPOINT_FORMAT, TYPE, Anchor, Signatures
from drkit.catalog.models import GENESIS_HASH
from drkit.catalog.walk import Walk, hashes_at, outside, stitch

MAX_PROBLEMS = 50
_BATCH = 20000


# Which breaks are shown first: the records themselves (in chain order), then the
# checkpoints, then what was found around them (a flood of junk anchors never hides an
# edited record).
_GROUP = {**dict.fromkeys(("edited", "deleted", "relinked", "outside", "truncated",
                           "unreadable", "missing"), 0),
          **dict.fromkeys(("off_chain", "bad_signature", "other_key", "checkpoint_missing",
                           "checkpoint_row"), 1)}
_KEPT = 10_000  # problems held while walking (each kind is also counted)


@dataclass
class AuditResult:
    """The verdict: intact or not, what was checked, and every break found."""

    records: int = 0
    head_hash: str = GENESIS_HASH
    found: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # problems by kind
    checkpoints: int = 0           # distinct checkpoints whose signature was checked
    anchors: dict[str, int] = field(default_factory=dict)  # where they were found: how many
    newest_anchored_seq: int | None = None  # the newest checkpoint in the bucket, verified
    newest_signed_seq: int | None = None    # the newest checkpoint anywhere, verified
    signed: bool = False           # a public key was there to check signatures with
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.counts

    @property
    def problems(self) -> list[dict[str, Any]]:
        """The first :data:`MAX_PROBLEMS`, records' own breaks first, in chain order."""
        ordered = sorted(self.found, key=lambda p: (_GROUP.get(p["problem"], 2),
                                                    p["seq"] if p["seq"] is not None
                                                    else 1 << 62))
        return ordered[:MAX_PROBLEMS]

    def problem(self, kind: str, detail: str, *, record_id: int | None = None,
                seq: int | None = None, source: str | None = None) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.found) < _KEPT:
            self.found.append({"record_id": record_id, "seq": seq, "problem": kind,
                               "detail": detail, "source": source})

    def to_json(self) -> dict[str, Any]:
        problems = self.problems
        return {"intact": self.intact, "records": self.records, "head_hash": self.head_hash,
                "signed": self.signed, "checkpoints": self.checkpoints,
                "anchors": self.anchors, "newest_anchored_seq": self.newest_anchored_seq,
                "newest_signed_seq": self.newest_signed_seq,
                "first_break": problems[0] if problems else None,
                "problems": problems, "problem_counts": self.counts, "notes": self.notes}


# --- the walk ---------------------------------------------------------------------------------

def verify_catalog(engine: Engine, *, public_key: str | None,
                   anchors: Iterable[Anchor | str | tuple[str, str]],
                   result: AuditResult | None = None, retired_keys: Iterable[str] = ()
                   ) -> AuditResult:
    """Verify the chain in ``engine``'s catalog against ``anchors`` (the catalog's own
    checkpoints are read here; the others are given: the anchor file's, the bucket's; a
    string is a problem found while reading them). ``retired_keys``: public keys that signed
    checkpoints before the current one. Reads only. The chain is walked by other processes
    while the anchors are read and their signatures checked."""
    result = result or AuditResult()
    tables = set(inspect(engine).get_table_names())
    if "records" not in tables:
        result.problem("missing", "the catalog has no records table (not a drkit catalog?)")
        return result
    has = {c["name"] for c in inspect(engine).get_columns("records")}
    head = _head_row(engine)
    with engine.connect() as connection:
        top = connection.exec_driver_sql("SELECT max(seq) FROM records").scalar() or 0
        marks = {int(s) for (s,) in connection.exec_driver_sql("SELECT seq FROM checkpoints")
                 } if "checkpoints" in tables else set()
        connection.rollback()
    if head is not None and head[0] > 0:
        top = min(top, head[0])
    walking = Walk(engine, has, marks, top)  # the sequences the catalog's rows name
    checks: Signatures | None = None
    try:
        found: list[Anchor | str | tuple[str, str]] = []
        rows: dict[str, tuple[int, int, str]] = {}
        if "checkpoints" in tables:
            catalog, rows = _catalog_checkpoints(engine)
            found += catalog
        found += anchors  # the anchor file and the bucket, read while the chain is walked
        items, sources = _collect(found, result)
        keys = [k for k in (public_key, *retired_keys) if k]
        if items and not keys:
            result.notes.append("no evidence.public_key configured: checkpoint signatures "
                                "not checked")
            items = []
        checks = Signatures(items, keys) if items else None
        seen, last = _walked(engine, walking.parts(), head, result)
        interest: dict[int, list[Anchor]] = {}
        if checks is not None:
            interest = _checked_anchors(items, sources, checks.results(), keys, rows, result)
    finally:
        walking.close()
        if checks is not None:
            checks.close()
    last = _appended_meanwhile(engine, interest, last, result)
    seen.update(hashes_at(engine, {s for s in interest if s not in seen and s <= last}))
    _against_anchors(engine, interest, seen, last, result)
    return result


def _appended_meanwhile(engine: Engine, interest: dict[int, list[Anchor]], last: int,
                        result: AuditResult) -> int:
    """How far signed heads can be compared: beyond the walked chain to the head as it is
    now, when a run appended records and signed them after the head was read (those heads
    are compared with the stored hashes; their records are walked next time)."""
    beyond = [seq for seq in interest if seq > last]
    now = _head_row(engine) if beyond else None
    if now is None or now[0] <= last:
        return last
    meanwhile = [seq for seq in beyond if seq <= now[0]]
    if meanwhile:
        result.notes.append(f"{len(meanwhile)} checkpoint(s) up to seq {max(meanwhile)} were "
                            "written while the chain was walked: their heads were compared "
                            "with the stored hashes, their records are walked next time")
    return now[0]


def _catalog_checkpoints(engine: Engine) -> tuple[list[Anchor], dict[str, tuple[int, int, str]]]:
    """The catalog's checkpoints, and by payload digest each row's id and its own seq and
    head hash columns (which must say what the payload says)."""
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT id, payload, signature, seq, head_hash FROM checkpoints "
                       "ORDER BY seq, id")
        rows = cursor.fetchall()
    finally:
        raw.rollback()
        raw.close()
    anchors = [Anchor(payload=str(payload), signature=str(signature),
                      source=f"catalog checkpoint #{ident}")
               for ident, payload, signature, _seq, _head in rows]
    columns = {anchor.digest: (row[0], int(row[3]), str(row[4]))
               for anchor, row in zip(anchors, rows, strict=True)}
    return anchors, columns


def _head_row(engine: Engine) -> tuple[int, str] | None:
    with engine.connect() as connection:
        row = connection.exec_driver_sql("SELECT seq, hash FROM chain_head WHERE id = 1").first()
        connection.rollback()
    return (int(row[0]), str(row[1])) if row is not None else None


def _walked(engine: Engine, parts: list[Any], head: tuple[int, str] | None,
            result: AuditResult) -> tuple[dict[int, str], int]:
    """The walk's parts as one (:mod:`drkit.catalog.walk`): its problems recorded; the hashes
    at the sequences asked for and the last sequence returned."""
    problems, seen, last, tail, count = stitch(parts)
    problems += outside(engine)
    if head is None:
        problems.append(("truncated", "the chain head row is missing", None, None))
    elif head[0] != last or head[1] != tail:
        problems.append(("truncated", f"the chain head says {head[0]} records ending in "
                         f"{head[1][:16]}..., the table ends at {last}", None, None))
    for kind, detail, ident, seq in problems:
        result.problem(kind, detail, record_id=ident, seq=seq)
    result.records, result.head_hash = count, tail
    return seen, last


# --- checkpoints and anchors -------------------------------------------------------------------

def _collect(found: list[Anchor | str | tuple[str, str]], result: AuditResult
             ) -> tuple[list[Anchor], dict[tuple[str, str], list[str]]]:
    """The distinct anchors (the same checkpoint may be in the catalog, the file and the
    bucket) and where each was found; a string found is an unreadable anchor, a pair a
    problem of that kind."""
    unique: dict[tuple[str, str], Anchor] = {}
    sources: dict[tuple[str, str], list[str]] = {}
    for item in found:
        if isinstance(item, str):
            result.problem("unreadable_anchor", item)
            continue
        if isinstance(item, tuple):
            result.problem(item[0], item[1])
            continue
        kind = "catalog" if item.source.startswith("catalog") else \
            "bucket" if item.source.startswith("s3://") else "file"
        result.anchors[kind] = result.anchors.get(kind, 0) + 1
        key = (item.payload, item.signature)
        unique.setdefault(key, item)
        sources.setdefault(key, []).append(item.source)
    return list(unique.values()), sources


def _checked_anchors(items: list[Anchor], sources: dict[tuple[str, str], list[str]],
                     verdicts: list[bool], keys: list[str],
                     rows: dict[str, tuple[int, int, str]], result: AuditResult
                     ) -> dict[int, list[Anchor]]:
    """The anchors whose signature verifies with a known key, by the sequence they sign;
    every other one is a problem. Also: a catalog row whose columns do not say what its
    payload says, a gap in the catalog's own sequence of checkpoints, and a checkpoint found
    in the anchor file or the bucket but not in the catalog (deleted there)."""
    from drkit.signing import key_id, public_bytes

    known = {key_id(public_bytes(k)) for k in keys}
    result.signed = True
    result.checkpoints = len(items)
    interest: dict[int, list[Anchor]] = {}
    in_catalog: dict[str, tuple[int, Any, str]] = {}  # valid ones, by digest
    newest_bucket: int | None = None
    newest: int | None = None
    for anchor, valid in zip(items, verdicts, strict=True):
        found_in = sources[(anchor.payload, anchor.signature)]
        where = ", ".join(found_in)
        anchor = Anchor(payload=anchor.payload, signature=anchor.signature, source=where)
        try:
            data = anchor.fields
            seq = int(data["seq"])
            if data.get("type") != TYPE or data.get("format") != CHECKPOINT_FORMAT or \
                    not isinstance(data.get("head_hash"), str):
                raise ValueError("not a checkpoint")
        except (ValueError, KeyError, TypeError):
            result.problem("unreadable_anchor", f"{where}: not a drkit checkpoint")
            continue
        if data.get("key_id") not in known:
            result.problem("other_key", f"checkpoint at seq {seq} ({where}) was signed by key "
                           f"{data.get('key_id')}, not by evidence.public_key (or a retired "
                           "key)", seq=seq, source=where)
            continue
        if not valid:
            result.problem("bad_signature", f"checkpoint at seq {seq} ({where}): its signature "
                           "does not verify: it was altered or forged", seq=seq, source=where)
            continue
        interest.setdefault(seq, []).append(anchor)
        newest = seq if newest is None else max(newest, seq)
        if any(source.startswith("s3://") for source in found_in):
            newest_bucket = seq if newest_bucket is None else max(newest_bucket, seq)
        row = rows.get(anchor.digest)
        if row is not None:
            if (row[1], row[2]) != (seq, data["head_hash"]):
                result.problem("checkpoint_row", f"catalog checkpoint #{row[0]}: its seq and "
                               f"head_hash columns ({row[1]}, {row[2][:16]}...) are not what "
                               f"its signed payload says ({seq}): the row was edited",
                               seq=seq, source=where)
            in_catalog[anchor.digest] = (seq, data.get("previous"), where)
        else:
            result.problem("checkpoint_missing", f"checkpoint at seq {seq} is in {where} but "
                           "not in the catalog (deleted there)", seq=seq, source=where)
    previous: str | None = None
    for digest, (seq, links_to, where) in sorted(in_catalog.items(), key=lambda i: i[1][0]):
        if previous is not None and links_to != previous:
            result.problem("checkpoint_missing", f"checkpoint at seq {seq} ({where}) follows "
                           "a checkpoint that is not in the catalog (one was deleted)",
                           seq=seq, source=where)
        previous = digest
    result.newest_anchored_seq = newest_bucket
    result.newest_signed_seq = newest
    return interest


def _against_anchors(engine: Engine, interest: dict[int, list[Anchor]], seen: dict[int, str],
                     last: int, result: AuditResult) -> None:
    """Every signed head must lie on the chain: same hash at its sequence; none beyond the
    chain's end. Where one does not, its list of hashes names the records that changed."""
    changed = False
    for seq in sorted(interest):
        for anchor in interest[seq]:
            if seq > last or changed or seen.get(seq) == anchor.fields["head_hash"]:
                continue
            _name_changes(engine, anchor, result)  # the earliest signed head not on the chain
            changed = True
    beyond = [seq for seq in interest if seq > last]
    if beyond:
        newest = interest[max(beyond)][0]
        result.problem("truncated", f"checkpoint at seq {max(beyond)} ({newest.source}) "
                       f"signed a chain of {max(beyond)} records; the chain ends at {last}: "
                       f"records {last + 1}..{max(beyond)} were removed", seq=max(beyond),
                       source=newest.source)


def _name_changes(engine: Engine, anchor: Anchor, result: AuditResult) -> None:
    data = anchor.data
    first, hashes = int(data.get("first_seq", data["seq"])), list(data.get("hashes") or [])
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT seq, id, hash, kind, status, target, plan FROM records WHERE "
                       f"seq >= {first} AND seq <= {int(data['seq'])} ORDER BY seq")
        rows = {row[0]: row for row in cursor.fetchall()}
    finally:
        raw.rollback()
        raw.close()
    named = False
    for offset, signed_hash in enumerate(hashes):
        row = rows.get(first + offset)
        if row is not None and row[2] == signed_hash:
            continue
        named = True
        if row is None:
            result.problem("deleted", f"record at seq {first + offset} was removed after "
                           f"checkpoint {anchor.source} signed it", seq=first + offset,
                           source=anchor.source)
        else:
            subject = row[5] or row[6] or ""
            result.problem("edited", f"record {row[1]} ({row[3]} {subject}, now "
                           f"'{row[4]}') is not the record checkpoint {anchor.source} "
                           "signed: it was changed and the chain re-hashed after it",
                           record_id=row[1], seq=row[0], source=anchor.source)
        break
    if not named:
        result.problem("off_chain", f"checkpoint at seq {data['seq']} ({anchor.source}) is "
                       "not on the chain: records before it were changed and the chain "
                       "re-hashed", seq=int(data["seq"]), source=anchor.source)


def verify_chain(catalog: Any) -> AuditResult:
    """The chain of an open :class:`drkit.catalog.store.Catalog`, with its own checkpoints
    but no public key (signatures unchecked): what the catalog alone can tell."""
    return verify_catalog(catalog.engine, public_key=None, anchors=[])
