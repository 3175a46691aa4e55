"""What the benchmarks share: timing a command and the tree-size arguments."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    """Run ``argv``; return its wall time in seconds. Exits the benchmark if it fails."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return elapsed


def tree_arguments(description: str, *, mb: int = 300, files: int = 2000
                   ) -> argparse.Namespace:
    """``--mb``, ``--files`` and ``--rounds`` from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mb", type=int, default=mb)
    parser.add_argument("--files", type=int, default=files)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def write_chain(url: str, records: list[dict[str, Any]]) -> None:
    """Append ``records`` (kind, status, at, evidence; target, repository, plan, snapshot_id,
    error when they have them) to the catalog at ``url`` as one valid hash chain: bulk
    inserts in one transaction, each record started 20 s before it finished, host "bench"."""
    import uuid
    from datetime import timedelta

    from sqlalchemy import insert, update

    from drkit.catalog.chain import canonical_json, record_hash
    from drkit.catalog.models import AnomalyIndex, ChainHead, Record
    from drkit.catalog.store import open_catalog

    catalog = open_catalog(url)
    previous, rows = "0" * 64, []
    for seq, record in enumerate(records, start=1):
        fields = {"seq": seq, "run_id": str(uuid.uuid4()), "kind": record["kind"],
                  "status": record["status"], "target": record.get("target"),
                  "repository": record.get("repository"), "plan": record.get("plan"),
                  "hostname": "bench", "drkit_version": "0.1.0", "restic_version": "0.14.0",
                  "started_at": record["at"] - timedelta(seconds=20),
                  "finished_at": record["at"], "snapshot_id": record.get("snapshot_id"),
                  "error": record.get("error"), "evidence": canonical_json(record["evidence"]),
                  "prev_hash": previous}
        fields["hash"] = previous = record_hash(fields)
        rows.append(fields)
    with catalog.session() as session:
        for chunk in range(0, len(rows), 5000):
            session.execute(insert(Record), rows[chunk:chunk + 5000])
        session.execute(update(ChainHead).where(ChainHead.id == 1)
                        .values(seq=len(rows), hash=previous))
        flagged = [{"record_id": seq, "hostname": "bench", "target": record.get("target"),
                    "repository": record.get("repository")}
                   for seq, record in enumerate(records, start=1)
                   if (record["evidence"].get("anomaly") or {}).get("flagged") is True]
        if flagged:  # what Catalog.append writes beside a flagged backup
            session.execute(insert(AnomalyIndex), flagged)


def write_project(root: Path, plans: dict[str, list[str]], targets: list[str], *, rpo: str,
                  repository: dict[str, Any] | None = None) -> Path:
    """A bench deployment under ``root``: host "bench" (the records' hostname), one local
    repository ``primary`` (with ``repository``'s settings), ``targets`` as files targets,
    ``plans`` (name -> targets) with objectives ``rpo``/15m. Returns the config's path."""
    import yaml

    (root / "config").mkdir()
    (root / "recovery_plans").mkdir()
    for plan, steps in plans.items():
        (root / "recovery_plans" / f"{plan}.yaml").write_text(yaml.safe_dump({
            "name": plan, "objectives": {"rpo": rpo, "rto": "15m"},
            "steps": [{"target": t} for t in steps]}))
    config = root / "config" / "drkit.yaml"
    config.write_text(yaml.safe_dump({
        "host": "bench",  # the records' hostname: status shows this host's backups
        "repositories": {"primary": {"url": str(root / "repo"), **(repository or {}),
                                     "password": {"env": "BENCH_PASSWORD"}}},
        "targets": {t: {"kind": "files", "paths": [str(root)], "repositories": ["primary"]}
                    for t in targets}}))
    return config
