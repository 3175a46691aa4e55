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

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, inspect

from drkit.catalog.checkpoints import CHECKPOINT_FORMAT, TYPE, Anchor
from drkit.catalog.models import GENESIS_HASH
from drkit.catalog.walk import stitch, walk

MAX_PROBLEMS = 50
PARALLEL_SIGNATURES = 2000  # from this many checkpoints on, signatures are checked on all cores
_BATCH = 20000


@dataclass
class AuditResult:
    """The verdict: intact or not, what was checked, and every break found."""

    records: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: int = 0           # distinct checkpoints whose signature was checked
    anchors: dict[str, int] = field(default_factory=dict)  # where they were found: how many
    newest_anchored_seq: int | None = None
    signed: bool = False           # a public key was there to check signatures with
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def problem(self, kind: str, detail: str, *, record_id: int | None = None,
                seq: int | None = None, source: str | None = None) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"record_id": record_id, "seq": seq, "problem": kind,
                                  "detail": detail, "source": source})

    def to_json(self) -> dict[str, Any]:
        return {"intact": self.intact, "records": self.records, "head_hash": self.head_hash,
                "signed": self.signed, "checkpoints": self.checkpoints,
                "anchors": self.anchors, "newest_anchored_seq": self.newest_anchored_seq,
                "first_break": self.problems[0] if self.problems else None,
                "problems": self.problems, "notes": self.notes}


# --- reading rows fast ------------------------------------------------------------------------

# --- the walk ---------------------------------------------------------------------------------

def verify_catalog(engine: Engine, *, public_key: str | None, anchors: Iterable[Anchor | str],
                   result: AuditResult | None = None) -> AuditResult:
    """Verify the chain in ``engine``'s catalog against ``anchors`` (the catalog's own
    checkpoints are read here; the others are given: the anchor file's, the bucket's; a
    string is a problem found while reading them). Reads only."""
    result = result or AuditResult()
    tables = set(inspect(engine).get_table_names())
    if "records" not in tables:
        result.problem("missing", "the catalog has no records table (not a drkit catalog?)")
        return result
    has = {c["name"] for c in inspect(engine).get_columns("records")}
    found = list(anchors)
    if "checkpoints" in tables:
        found = [*_catalog_checkpoints(engine), *found]
    items, sources = _collect(found, result)
    if items and public_key is None:
        result.notes.append("no evidence.public_key configured: checkpoint signatures not "
                            "checked")
        items = []
    checks = _Signatures(items, public_key) if items and public_key else None
    seen, last = _walk(engine, has, _seqs(items), result)
    interest: dict[int, list[Anchor]] = {}
    if checks is not None and public_key is not None:
        from drkit.signing import Verifier

        interest = _checked_anchors(items, sources, checks.results(), Verifier(public_key),
                                    result)
    _head(engine, result, last)
    _against_anchors(engine, interest, seen, last, result)
    return result


def _catalog_checkpoints(engine: Engine) -> list[Anchor]:
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT id, payload, signature FROM checkpoints ORDER BY seq, id")
        rows = cursor.fetchall()
    finally:
        raw.rollback()
        raw.close()
    return [Anchor(payload=str(payload), signature=str(signature),
                   source=f"catalog checkpoint #{ident}") for ident, payload, signature in rows]


def _walk(engine: Engine, has: set[str], interest: set[int],
          result: AuditResult) -> tuple[dict[int, str], int]:
    """Re-hash and link every record (:mod:`drkit.catalog.walk`); return the hashes at the
    sequences anchors sign and the last sequence."""
    problems, seen, last, head, count = stitch(walk(engine, has, interest))
    for kind, detail, ident, seq in sorted(problems, key=lambda p: p[3] or 0):
        result.problem(kind, detail, record_id=ident, seq=seq)
    result.records, result.head_hash = count, head
    return seen, last


def _head(engine: Engine, result: AuditResult, last: int) -> None:
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT seq, hash FROM chain_head WHERE id = 1")
        row = cursor.fetchone()
    finally:
        raw.rollback()
        raw.close()
    if row is not None and (row[0] != last or row[1] != result.head_hash):
        result.problem("truncated", f"the chain head says {row[0]} records ending in "
                       f"{str(row[1])[:16]}..., the table ends at {last}")


# --- checkpoints and anchors -------------------------------------------------------------------

_SEQ = re.compile(r'[{,]"seq":(\d+)[,}]')


def _collect(found: list[Anchor | str], result: AuditResult
             ) -> tuple[list[Anchor], dict[tuple[str, str], list[str]]]:
    """The distinct anchors (the same checkpoint may be in the catalog, the file and the
    bucket) and where each was found; a string found is a problem."""
    unique: dict[tuple[str, str], Anchor] = {}
    sources: dict[tuple[str, str], list[str]] = {}
    for item in found:
        if isinstance(item, str):
            result.problem("unreadable_anchor", item)
            continue
        kind = "catalog" if item.source.startswith("catalog") else \
            "bucket" if item.source.startswith("s3://") else "file"
        result.anchors[kind] = result.anchors.get(kind, 0) + 1
        key = (item.payload, item.signature)
        unique.setdefault(key, item)
        sources.setdefault(key, []).append(item.source)
    return list(unique.values()), sources


def _seqs(anchors: list[Anchor]) -> set[int]:
    """The sequences the anchors sign, read without parsing them whole."""
    return {int(m.group(1)) for a in anchors if (m := _SEQ.search(a.payload))}


def _checked_anchors(items: list[Anchor], sources: dict[tuple[str, str], list[str]],
                     verdicts: list[bool], verifier: Any, result: AuditResult
                     ) -> dict[int, list[Anchor]]:
    """The anchors whose signature verifies, by the sequence they sign; every other one is
    a problem."""
    result.signed = True
    result.checkpoints = len(items)
    interest: dict[int, list[Anchor]] = {}
    previous_by_source: dict[str, str] = {}
    for anchor, valid in zip(items, verdicts, strict=True):
        where = ", ".join(sources[(anchor.payload, anchor.signature)])
        anchor = Anchor(payload=anchor.payload, signature=anchor.signature, source=where)
        try:
            data = anchor.data
            seq = int(data["seq"])
            if data.get("type") != TYPE or data.get("format") != CHECKPOINT_FORMAT or \
                    not isinstance(data.get("head_hash"), str):
                raise ValueError("not a checkpoint")
        except (ValueError, KeyError, TypeError):
            result.problem("unreadable_anchor", f"{where}: not a drkit checkpoint")
            continue
        if data.get("key_id") != verifier.key_id:
            result.problem("other_key", f"checkpoint at seq {seq} ({where}) was signed by key "
                           f"{data.get('key_id')}, not evidence.public_key's "
                           f"{verifier.key_id}", seq=seq, source=where)
            continue
        if not valid:
            result.problem("bad_signature", f"checkpoint at seq {seq} ({where}): its signature "
                           "does not verify: it was altered or forged", seq=seq, source=where)
            continue
        interest.setdefault(seq, []).append(anchor)
        if anchor.source.startswith("catalog"):
            expected = previous_by_source.get("catalog")
            if data.get("previous") != expected and expected is not None:
                result.problem("checkpoint_missing", f"checkpoint at seq {seq} ({where}) "
                               "follows a checkpoint that is not in the catalog (one was "
                               "deleted)", seq=seq, source=where)
            previous_by_source["catalog"] = anchor.digest
    anchored = [seq for seq, items_ in interest.items()
                if any(not source.startswith("catalog") for a in items_
                       for source in sources[(a.payload, a.signature)])]
    result.newest_anchored_seq = max(anchored) if anchored else None
    return interest


class _Signatures:
    """Signature checks that run on the other cores while the chain is walked."""

    def __init__(self, items: list[Anchor], public_key: str) -> None:
        self._pairs = [(a.payload, a.signature) for a in items]
        self._public_key = public_key
        self._pool: Any = None
        self._futures: list[Any] = []
        if len(self._pairs) >= PARALLEL_SIGNATURES and (os.cpu_count() or 1) >= 2:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            workers = min(os.cpu_count() or 1, 8)
            size = -(-len(self._pairs) // workers)
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"))
            self._futures = [self._pool.submit(_verify_chunk, (public_key,
                                                               self._pairs[i:i + size]))
                             for i in range(0, len(self._pairs), size)]

    def results(self) -> list[bool]:
        if self._pool is None:
            return _verify_chunk((self._public_key, self._pairs))
        try:
            return [ok for future in self._futures for ok in future.result()]
        finally:
            self._pool.shutdown()


def _verify_chunk(job: tuple[str, list[tuple[str, str]]]) -> list[bool]:
    from drkit.signing import Verifier

    verifier = Verifier(job[0])
    return [verifier.verify(payload.encode("utf-8"), signature) for payload, signature in job[1]]


def _against_anchors(engine: Engine, interest: dict[int, list[Anchor]], seen: dict[int, str],
                     last: int, result: AuditResult) -> None:
    """Every signed head must lie on the chain: same hash at its sequence; none beyond the
    chain's end. Where one does not, its list of hashes names the records that changed."""
    changed = False
    for seq in sorted(interest):
        for anchor in interest[seq]:
            if seq > last or changed or seen.get(seq) == anchor.data["head_hash"]:
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
