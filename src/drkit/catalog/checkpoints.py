"""Signed checkpoints of the chain's head, and their anchors outside the database.

A checkpoint's payload is canonical JSON (:func:`drkit.catalog.chain.canonical_json`)::

    {"format": 1, "type": "drkit-checkpoint", "seq": N, "head_hash": H,
     "first_seq": F, "hashes": [hash of record F, ..., hash of record N],
     "previous": sha256 of the previous checkpoint's payload (or null),
     "created_at": T, "host": ..., "actor": ..., "key_id": ...}

signed with Ed25519 (the signature, base64, is over the payload's UTF-8 bytes). It is written
under the chain head's lock, so checkpoints follow each other: each covers the records since
the previous one (``hashes``: an edit is named exactly) and links to it (``previous``).

Copies go into an append-only file (a line each: the signature, a tab, the payload;
fsync'd) and, by :mod:`drkit.storage.anchors`, into an object-locked bucket: an insider
holding the database (and even the key) cannot change them, so ``audit verify`` can tell
whether the chain still passes through every anchored head.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import select

from drkit.catalog.chain import HASHED_FIELDS, canonical_json, canonical_time, record_hash
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import GENESIS_HASH, ChainHead, Checkpoint, Record

CHECKPOINT_FORMAT = 1
TYPE = "drkit-checkpoint"
PARALLEL_SIGNATURES = 2000  # from this many checkpoints on, signatures are checked on all cores


@dataclass(frozen=True)
class Anchor:
    """A checkpoint as found somewhere (the catalog, the anchor file, the bucket)."""

    payload: str
    signature: str
    source: str

    @cached_property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.payload)
        return loaded

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.payload.encode("utf-8")).hexdigest()

    @cached_property
    def fields(self) -> dict[str, Any]:
        """The payload's fields but its list of hashes, read without parsing that list (an
        audit reads tens of thousands of checkpoints; the list matters only for one that is
        not on the chain)."""
        start = self.payload.find(',"hashes":[')
        end = self.payload.find('],"head_hash":', start)
        if start < 0 or end < 0:
            return self.data
        try:
            head: dict[str, Any] = json.loads(self.payload[:start] + "}")
            head.update(json.loads("{" + self.payload[end + 2:]))
        except ValueError:
            return self.data
        return head

    def line(self) -> str:
        """Its object in the evidence bucket: JSON, payload and signature."""
        return json.dumps({"payload": self.payload, "signature": self.signature},
                          separators=(",", ":"), ensure_ascii=False)

    def file_line(self) -> str:
        """Its line in an anchor file: the signature, a tab, the payload (canonical JSON
        holds no raw tab or newline)."""
        return f"{self.signature}\t{self.payload}"


def write_checkpoint(catalog: Any, signer: Any, *, actor: str | None) -> Anchor | None:
    """Sign the chain's head (under its lock) and store the checkpoint in the catalog; None
    when the newest checkpoint already covers the head (another process just wrote one).

    Only what verifies is signed: the records since the newest valid checkpoint (signed by
    this key, its row saying what its payload says, its head on the chain) are re-hashed and
    their links checked first; a break there is raised (:class:`DrkitError`), never signed."""
    from drkit.errors import DrkitError

    with catalog.session() as session:
        head = session.execute(select(ChainHead).where(ChainHead.id == 1)
                               .with_for_update()).scalar_one()
        last = _last_valid(session, signer)
        last_seq, last_head = (int(last[1]["seq"]), str(last[1]["head_hash"])) \
            if last is not None else (0, GENESIS_HASH)
        if head.seq == 0 or last_seq >= head.seq:
            return None
        first = last_seq + 1
        hashes: list[str] = []
        previous, expected = last_head, first
        for record in session.scalars(select(Record).where(
                Record.seq >= first, Record.seq <= head.seq).order_by(Record.seq)):
            fields = {column: getattr(record, column) for column in HASHED_FIELDS}
            if record.seq != expected or record.prev_hash != previous or \
                    record_hash(fields) != record.hash:
                raise DrkitError(f"refusing to sign the chain: record {record.id} (seq "
                                 f"{record.seq}) does not verify since the last checkpoint",
                                 hint="drkit audit verify names what broke")
            hashes.append(record.hash)
            previous, expected = record.hash, record.seq + 1
        if expected != head.seq + 1 or previous != head.hash:
            raise DrkitError("refusing to sign the chain: its head row does not match its "
                             "records", hint="drkit audit verify names what broke")
        now = utcnow()
        payload = canonical_json({
            "format": CHECKPOINT_FORMAT, "type": TYPE, "seq": head.seq,
            "head_hash": head.hash, "first_seq": first, "hashes": hashes,
            "previous": last[0] if last is not None else None,
            "created_at": canonical_time(now), "host": catalog.hostname, "actor": actor,
            "key_id": signer.key_id})
        signature = signer.sign(payload.encode("utf-8"))
        row = Checkpoint(seq=head.seq, head_hash=head.hash, created_at=now,
                         hostname=catalog.hostname, key_id=signer.key_id, payload=payload,
                         signature=signature)
        session.add(row)
        session.flush()
        return Anchor(payload=payload, signature=signature, source=f"catalog #{row.id}")


def _lazily(first: list[Any], session: Any, query: Any) -> Iterator[Any]:
    """``first``, then the rest of ``query``'s rows, fetched only if needed (rows someone
    added that do not verify make drkit look further back)."""
    yield from first
    yield from session.scalars(query.offset(len(first)).execution_options(yield_per=500))


def _last_valid(session: Any, signer: Any) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint a signature of this key vouches for (its payload's digest and
    data): its row must say what its payload says, and its head must be on the chain."""
    from drkit.signing import Verifier

    verifier = Verifier.from_raw(signer.public)
    newest_first = select(Checkpoint).order_by(Checkpoint.seq.desc(), Checkpoint.id.desc())
    first = list(session.scalars(newest_first.limit(20)))  # the usual case: the newest
    rows: Iterable[Any] = _lazily(first, session, newest_first) if len(first) == 20 else first
    for row in rows:
        try:
            data = json.loads(row.payload)
            ok = (verifier.verify(row.payload.encode("utf-8"), row.signature)
                  and int(data["seq"]) == row.seq and data["head_hash"] == row.head_hash
                  and session.scalar(select(Record.hash).where(Record.seq == row.seq))
                  == row.head_hash)
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            return hashlib.sha256(row.payload.encode("utf-8")).hexdigest(), data
    return None


def mark_anchored(catalog: Any, head_hash: str, where: str) -> None:
    """Note where the checkpoint of ``head_hash`` was anchored (not part of its payload)."""
    with catalog.session() as session:
        row = session.scalars(select(Checkpoint).where(Checkpoint.head_hash == head_hash)
                              .limit(1)).first()
        if row is not None:
            row.anchored = where


def catalog_checkpoints(session: Any) -> list[Anchor]:
    """Every checkpoint in the catalog, oldest first."""
    return [Anchor(payload=row.payload, signature=row.signature, source=f"catalog #{row.id}")
            for row in session.execute(select(Checkpoint.id, Checkpoint.payload,
                                              Checkpoint.signature)
                                       .order_by(Checkpoint.seq, Checkpoint.id))]


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append ``anchor`` to the anchor file (created 0644 in a 0700 directory), fsync'd."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (anchor.file_line() + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchor_file(path: Path) -> Iterator[Anchor | str]:
    """The anchors in the file, oldest first; a line that is not one yields its problem."""
    if not path.exists():
        return
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield f"{path}:{number}: not an anchor line (not UTF-8 text)"
                continue
            if not line.strip():
                continue
            signature, tab, payload = line.partition("\t")
            if tab and payload.startswith("{"):
                yield Anchor(payload=payload, signature=signature, source=f"{path}:{number}")
            else:
                yield f"{path}:{number}: not an anchor line"


class Signatures:
    """The checkpoints' signatures, each checked with the key its payload names among
    ``keys``; on the other cores when there are many (the caller walks the chain meanwhile):
    :meth:`results` waits for them."""

    def __init__(self, items: list[Anchor], keys: list[str]) -> None:
        self._pairs = [(a.payload, a.signature) for a in items]
        self._keys = keys
        self._pool: Any = None
        self._futures: list[Any] = []
        if len(self._pairs) >= PARALLEL_SIGNATURES and (os.cpu_count() or 1) >= 2:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            workers = min(os.cpu_count() or 1, 8)
            size = -(-len(self._pairs) // workers)
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"))
            self._futures = [self._pool.submit(_verify_chunk, (keys, self._pairs[i:i + size]))
                             for i in range(0, len(self._pairs), size)]

    def results(self) -> list[bool]:
        if self._pool is None:
            return _verify_chunk((self._keys, self._pairs))
        try:
            return [ok for future in self._futures for ok in future.result()]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (also when the caller gives up before :meth:`results`)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


_KEY_ID = re.compile(r'"key_id":"([0-9a-f]{16})"')


def _verify_chunk(job: tuple[list[str], list[tuple[str, str]]]) -> list[bool]:
    """Each payload's signature, checked with the key its payload names (if known)."""
    from drkit.signing import Verifier

    verifiers = {v.key_id: v for v in (Verifier(key) for key in job[0])}
    out = []
    for payload, signature in job[1]:
        named = _KEY_ID.search(payload)
        verifier = verifiers.get(named.group(1)) if named else None
        out.append(verifier is not None and
                   verifier.verify(payload.encode("utf-8"), signature))
    return out
