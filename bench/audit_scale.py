"""`drkit audit verify` over a large signed chain (SPEC: 1,000,000 records ≤ 10 s, signatures
included), and what appending a checkpoint adds to a run (issue: ≤ 20 ms).

Builds a valid chain of N format-2 records in a SQLite catalog with a signed checkpoint every
--per-checkpoint records (default 20: a `drkit backup` of ten targets to two repositories is
one run, one checkpoint), each also in the local anchor file, as drkit writes them. Then
times the real CLI, start-up included: `audit verify --offline` (no bucket to read here).
Then appends one record and one checkpoint at a time to that catalog (--appends times) and
reports how long writing the checkpoint took (sign, store, append to the anchor file with
fsync), against the run that appended the record.

    .venv/bin/python -m bench.audit_scale [--records 1000000] [--per-checkpoint 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from bench.common import timed
from drkit.catalog.chain import canonical_json, fast_canonical
from drkit.catalog.checkpoints import Anchor, append_anchor, write_checkpoint
from drkit.catalog.store import NewRecord, open_catalog
from drkit.signing import Signer, generate, public_base64, public_bytes


def fill(db_path: Path, anchor_file: Path, signer: Signer, count: int, every: int) -> int:
    """Write ``count`` chained records and a checkpoint every ``every``; return how many."""
    open_catalog(f"sqlite:///{db_path}")  # the schema
    db = sqlite3.connect(db_path)
    start = datetime(2026, 1, 1)
    previous = "0" * 64
    rows, checkpoints, hashes = [], [], []
    last_payload: str | None = None
    columns = ("seq", "run_id", "kind", "status", "target", "repository", "plan", "hostname",
               "drkit_version", "restic_version", "started_at", "finished_at", "snapshot_id",
               "error", "evidence", "prev_hash", "hash", "format", "actor", "config_hash")
    with open(anchor_file, "w", encoding="utf-8") as anchors:
        for seq in range(1, count + 1):
            at = start + timedelta(seconds=30 * seq)
            text = at.strftime("%Y-%m-%d %H:%M:%S.%f")
            fields = {"seq": seq, "run_id": str(uuid.UUID(int=seq)), "kind": "backup",
                      "status": "succeeded", "target": f"app-{seq % 10}",
                      "repository": "primary", "plan": None, "hostname": "bench",
                      "drkit_version": "0.1.0", "restic_version": "0.14.0",
                      "started_at": at - timedelta(seconds=20), "finished_at": at,
                      "snapshot_id": f"{seq:064x}", "error": None,
                      "evidence": canonical_json({"restic_summary": {
                          "files_new": seq % 17, "data_added": seq * 13,
                          "total_bytes_processed": seq * 101}}),
                      "prev_hash": previous, "format": 2, "actor": "bench",
                      "config_hash": "c" * 64}
            previous = hashlib.sha256(fast_canonical(2, fields).encode()).hexdigest()
            hashes.append(previous)
            rows.append((*[fields[c] for c in columns[:10]],
                         (at - timedelta(seconds=20)).strftime("%Y-%m-%d %H:%M:%S.%f"), text,
                         *[fields[c] for c in columns[12:16]], previous, 2, "bench",
                         "c" * 64))
            if seq % every == 0 or seq == count:
                payload = canonical_json({
                    "format": 1, "type": "drkit-checkpoint", "seq": seq, "head_hash": previous,
                    "first_seq": seq - len(hashes) + 1, "hashes": hashes,
                    "previous": hashlib.sha256(last_payload.encode()).hexdigest()
                    if last_payload else None, "created_at": at.isoformat() + "Z",
                    "host": "bench", "actor": "bench", "key_id": signer.key_id})
                signature = signer.sign(payload.encode())
                checkpoints.append((seq, previous, text, "bench", signer.key_id, payload,
                                    signature))
                anchors.write(Anchor(payload, signature, "").file_line() + "\n")
                last_payload, hashes = payload, []
            if len(rows) == 50_000:
                _flush(db, columns, rows, checkpoints)
    _flush(db, columns, rows, checkpoints)
    db.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (count, previous))
    db.commit()
    db.close()
    return (count + every - 1) // every


def _flush(db: sqlite3.Connection, columns: tuple[str, ...], rows: list[tuple[object, ...]],
           checkpoints: list[tuple[object, ...]]) -> None:
    db.executemany(f"INSERT INTO records ({', '.join(columns)}) VALUES "
                   f"({', '.join('?' for _ in columns)})", rows)
    db.executemany("INSERT INTO checkpoints (seq, head_hash, created_at, hostname, key_id, "
                   "payload, signature) VALUES (?, ?, ?, ?, ?, ?, ?)", checkpoints)
    db.commit()
    rows.clear()
    checkpoints.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-checkpoint", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=30)
    args = parser.parse_args()
    private, public = generate()
    signer = Signer(private)
    with tempfile.TemporaryDirectory(prefix="drkit-bench-audit-") as work:
        root = Path(work)
        (root / "config" / ".drkit" / "evidence").mkdir(parents=True)
        (root / "recovery_plans").mkdir()
        key = root / "evidence.key"
        key.write_text(private)
        config = root / "config" / "drkit.yaml"
        config.write_text(yaml.safe_dump({
            "host": "bench",
            "repositories": {"primary": {"url": str(root / "repo"),
                                         "password": {"env": "BENCH_PASSWORD"}}},
            "evidence": {"signing_key": {"file": str(key)},
                         "public_key": public_base64(public_bytes(public))}}))
        db_path = root / "config" / ".drkit" / "catalog.db"
        anchor_file = root / "config" / ".drkit" / "evidence" / "checkpoints.anchors"
        started = time.perf_counter()
        checkpoints = fill(db_path, anchor_file, signer, args.records, args.per_checkpoint)
        print(f"built {args.records} records and {checkpoints} signed checkpoints in "
              f"{time.perf_counter() - started:.0f} s ({db_path.stat().st_size / 1e6:.0f} MB)")
        env = {**os.environ, "BENCH_PASSWORD": "unused"}
        drkit = [sys.executable, "-m", "drkit", "--config", str(config)]
        times = [timed([*drkit, "audit", "verify", "--offline"], env)
                 for _ in range(args.rounds)]
        print(f"  drkit audit verify --offline: median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}) for {args.records} records and "
              f"{checkpoints} checkpoints (x2: catalog and anchor file)   target ≤ 10 s")
        verdict = json.loads(__import__("subprocess").run(
            [*drkit, "audit", "verify", "--offline", "--json"], env=env, capture_output=True,
            text=True).stdout)
        assert verdict["intact"] and verdict["records"] == args.records, verdict["problems"]

        catalog = open_catalog(f"sqlite:///{db_path}", hostname="bench")
        append_ms, checkpoint_ms = [], []
        for index in range(args.appends):
            now = datetime.utcnow()
            begin = time.perf_counter()
            catalog.append(NewRecord(kind="backup", status="succeeded", target="app-0",
                                     started_at=now, finished_at=now,
                                     evidence={"n": index}))
            middle = time.perf_counter()
            anchor = write_checkpoint(catalog, signer, actor="bench")
            assert anchor is not None
            append_anchor(anchor_file, anchor)
            end = time.perf_counter()
            append_ms.append((middle - begin) * 1000)
            checkpoint_ms.append((end - middle) * 1000)
        print(f"  appending one record: median {statistics.median(append_ms):.1f} ms; "
              f"then its checkpoint (sign, store, anchor file with fsync): median "
              f"{statistics.median(checkpoint_ms):.1f} ms (max {max(checkpoint_ms):.1f})   "
              "target ≤ 20 ms")


if __name__ == "__main__":
    main()
