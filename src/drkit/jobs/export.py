"""``drkit audit export``: an evidence bundle for a period that anyone can verify offline,
with ``sha256sum``, ``openssl`` and ``jq`` alone, or with the bundle's own ``verify.py``
(Python's standard library only).

The bundle (a new or empty directory)::

    README.md          how to verify it by hand, and the canonical form of a record
    verify.py          the same checks, standard library only
    bundle.json        period, sequence range, counts, key id, formats, drkit version
    public_key.pem     the evidence public key (what signed the checkpoints)
    records.jsonl      the records of the period, one per line, each exactly the text its
                       hash is the SHA-256 of (a contiguous range of the chain)
    checkpoints/       SEQ.json (a payload exactly as signed) and SEQ.sig (its raw
                       64-byte Ed25519 signature, as openssl pkeyutl reads it)
    reports/           the reports the period's report records name, when still on disk
                       with the SHA-256 they were recorded with
    manifest.sha256    `sha256sum -c manifest.sha256` checks every file

Read-only on the catalog.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from drkit import __version__
from drkit.catalog.chain import SORTED, canonical_record, canonical_time
from drkit.catalog.checkpoints import catalog_checkpoints
from drkit.catalog.models import Record
from drkit.catalog.store import open_readonly
from drkit.catalog.walk import stream_rows
from drkit.config.models import Config
from drkit.errors import BadRequestError, DrkitError
from drkit.signing import public_bytes, public_pem


@dataclass
class Bundle:
    directory: Path
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    reports: int = 0
    key_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "key_id": self.key_id,
                "records": self.records,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "checkpoints": self.checkpoints, "reports": self.reports}


def export_bundle(config: Config, *, since: datetime, until: datetime, output: Path
                  ) -> Bundle:
    """Write the bundle of the records finished in ``[since, until)`` into ``output``."""
    if config.evidence.public_key is None:
        raise BadRequestError("no evidence.public_key in the config: a bundle is verified "
                              "with it", hint="drkit keygen writes a key pair")
    output = output.absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BadRequestError(f"{output} is not a new or empty directory")
    from drkit.jobs.audit import verify as verify_chain

    verdict = verify_chain(config)  # a bundle vouches only for a chain that verifies
    if not verdict.intact:
        broken = verdict.problems[0]
        raise DrkitError(f"the chain does not verify ({broken['problem']}: "
                         f"{broken['detail']}): no bundle written",
                         hint="drkit audit verify names every problem")
    engine = open_readonly(config.catalog, base_dir=config.base_dir)
    try:
        with engine.connect() as connection:
            seqs = connection.execute(
                select(func.min(Record.seq), func.max(Record.seq))
                .where(Record.finished_at >= since, Record.finished_at < until)).one()
            connection.rollback()
        if seqs[0] is None:
            raise DrkitError(f"no record finished between {since:%Y-%m-%d %H:%M} and "
                             f"{until:%Y-%m-%d %H:%M}: nothing to export")
        first, last = int(seqs[0]), int(seqs[1])
        bundle = Bundle(directory=output, first_seq=first, last_seq=last)
        (output / "checkpoints").mkdir(parents=True, exist_ok=True)
        (output / "reports").mkdir()
        reports = _records(engine, first, last, output / "records.jsonl", bundle)
        _checkpoints(engine, first, last, output / "checkpoints", bundle)
    finally:
        engine.dispose()
    for name, digest in reports:
        source = Path(name)
        if source.is_file() and hashlib.sha256(source.read_bytes()).hexdigest() == digest:
            shutil.copyfile(source, output / "reports" / source.name)
            bundle.reports += 1
    raw = public_bytes(config.evidence.public_key)
    bundle.key_id = hashlib.sha256(raw).hexdigest()[:16]
    (output / "public_key.pem").write_text(public_pem(raw))
    (output / "bundle.json").write_text(json.dumps({
        "period": {"since": canonical_time(since), "until": canonical_time(until)},
        "first_seq": first, "last_seq": last, "records": bundle.records,
        "checkpoints": bundle.checkpoints, "key_id": hashlib.sha256(raw).hexdigest()[:16],
        "record_formats": [1, 2], "checkpoint_format": 1, "drkit_version": __version__},
        indent=2) + "\n")
    readme = resources.files("drkit").joinpath("templates/bundle_readme.md").read_text()
    (output / "README.md").write_text(
        readme.replace("{FIRST_SEQ}", str(first)).replace("{LAST_SEQ}", str(last))
        .replace("{KEY_ID}", hashlib.sha256(raw).hexdigest()[:16]))
    verify = resources.files("drkit").joinpath("templates/bundle_verify.py").read_text()
    (output / "verify.py").write_text(verify)
    _manifest(output)
    return bundle


def _records(engine: Any, first: int, last: int, path: Path, bundle: Bundle
             ) -> list[tuple[str, str]]:
    """Write the canonical text of records ``first..last``; return the reports they name
    (path, SHA-256)."""
    names = ["seq", "kind", *[n for n in SORTED[2] if n not in ("seq", "kind")]]
    reports = []
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for row in stream_rows(engine, names, where=f"seq >= {first} AND seq <= {last}"):
            fields = dict(zip(names, row, strict=True))
            for key in ("started_at", "finished_at"):
                if isinstance(fields[key], str):  # SQLite's stored text
                    fields[key] = datetime.fromisoformat(fields[key])
            if not fields.get("format"):
                fields.pop("format", None)  # format 1: no such field was hashed
            out.write(canonical_record(fields) + "\n")
            bundle.records += 1
            if fields["kind"] == "report":
                evidence = json.loads(fields["evidence"])
                if evidence.get("path") not in (None, "stdout") and evidence.get("sha256"):
                    reports.append((str(evidence["path"]), str(evidence["sha256"])))
    return reports


def _checkpoints(engine: Any, first: int, last: int, directory: Path, bundle: Bundle) -> None:
    """Every checkpoint whose records overlap ``first..last`` (and the one before, which
    the first links to)."""
    with engine.connect() as connection:
        anchors = catalog_checkpoints(connection)
        connection.rollback()
    for anchor in anchors:
        data = anchor.data
        if int(data["seq"]) < first or int(data.get("first_seq", data["seq"])) > last:
            continue
        name = f"{int(data['seq']):012d}"
        (directory / f"{name}.json").write_bytes(anchor.payload.encode("utf-8"))
        (directory / f"{name}.sig").write_bytes(base64.b64decode(anchor.signature))
        bundle.checkpoints += 1


def _manifest(output: Path) -> None:
    lines = []
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        name = str(path.relative_to(output))
        if name != "manifest.sha256":
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n")
    (output / "manifest.sha256").write_text("".join(lines))
