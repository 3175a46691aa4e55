"""Monitoring costs (SPEC of issue 15): anomaly scoring adds ≤ 20 ms to a backup; `drkit
metrics` over 50 targets and 100,000 records ≤ 0.5 s.

Builds a valid chain of N records over the last --days days: 50 targets backed up in turn
with full restic summaries (2% failures, a few flagged anomalies), checks with measured sizes,
drills of 5 plans. Then times

- the scoring a backup does before it is recorded (read the target's history, score it), in
  process, and the entropy sample of 8 changed files, apart;
- the real `drkit metrics` CLI, start-up included, as node_exporter's cron would run it;
- one scrape of `drkit serve --metrics-port` (in a process with drkit loaded).

    .venv/bin/python -m bench.monitoring_scale [--records 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import timed, write_chain, write_project
from drkit.catalog.inflight import utcnow
from drkit.catalog.store import open_catalog

TARGETS = [f"app-{index:02d}" for index in range(50)]
PLANS = {f"plan-{p}": TARGETS[p * 10:(p + 1) * 10] for p in range(5)}


def fill(url: str, count: int, days: float) -> None:
    start = utcnow() - timedelta(days=days)
    step = timedelta(days=days) / count
    records = []
    for seq in range(1, count + 1):
        if seq % 1000 == 0:
            record: dict[str, Any] = {
                "kind": "check", "status": "passed", "repository": "primary", "evidence": {
                    "read_data_subset": "1/10", "errors": [], "data": {"duration_s": 30.0},
                    "stats": {"total_size": 10**11 + seq * 10**5}}}
        elif seq % 1000 == 500:
            record = {"kind": "drill", "status": "passed",
                      "plan": list(PLANS)[(seq // 1000) % len(PLANS)],
                      "evidence": {"rpo_achieved_s": 900.0, "rto_achieved_s": 120.0}}
        else:
            changed = 10 + seq % 20
            record = {"kind": "backup", "status": "failed" if seq % 50 == 0 else "succeeded",
                      "target": TARGETS[seq % len(TARGETS)], "repository": "primary",
                      "snapshot_id": f"{seq:08x}", "evidence": {"restic_summary": {
                          "files_new": seq % 7, "files_changed": changed,
                          "files_unmodified": 5000, "data_added": 10**6,
                          "total_files_processed": 5000 + changed + seq % 7,
                          "total_bytes_processed": 10**9, "snapshot_id": f"{seq:08x}"},
                          "anomaly": {"flagged": seq % 20011 == 0, "reasons": ["bench"]}}}
        records.append({**record, "at": start + step * seq})
    write_chain(url, records)


def scoring_ms(url: str, rounds: int) -> list[float]:
    """What `_TargetRun._judge` does for one backup, minus the entropy sample."""
    from dataclasses import asdict

    from drkit.catalog.anomalies import recent_backups
    from drkit.config.models import AnomalySettings
    from drkit.jobs.anomaly import score
    from drkit.restic.commands import BackupSummary

    catalog = open_catalog(url, hostname="bench")
    settings = AnomalySettings()
    summary = asdict(BackupSummary.from_json({
        "files_new": 3, "files_changed": 12, "files_unmodified": 5000, "data_added": 10**6,
        "total_files_processed": 5015, "total_bytes_processed": 10**9}))
    out = []
    for index in range(rounds):
        start = time.perf_counter()
        with catalog.read_session() as session:
            history = recent_backups(session, target=TARGETS[index % len(TARGETS)],
                                     repository="primary", host="bench",
                                     limit=2 * settings.window + 1)
        score(summary, history, settings)
        out.append((time.perf_counter() - start) * 1000)
    return out


def scrape_ms(config_path: Path, rounds: int) -> list[float]:
    """What one scrape of `serve --metrics-port` costs: the metrics computed and written by
    a process that has drkit loaded and the catalog open (the first scrape warms up)."""
    from drkit.config.loader import load_config
    from drkit.drills.plans import load_plans
    from drkit.jobs.common import open_config_catalog
    from drkit.jobs.metrics import exposition

    config = load_config(config_path)
    plans = load_plans(config)
    catalog = open_config_catalog(config)
    exposition(config, plans, catalog)
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        exposition(config, plans, catalog)
        out.append((time.perf_counter() - start) * 1000)
    return out


def entropy_ms(root: Path, rounds: int) -> list[float]:
    from drkit.targets.sample import entropy_sample

    tree = root / "tree"
    tree.mkdir()
    for index in range(2000):
        (tree / f"f{index:04d}.bin").write_bytes(os.urandom(100_000) if index % 2 else
                                                 b"text " * 20_000)
    return [float(entropy_sample([str(tree)], since=0.0, count=8)["ms"])
            for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=400.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drkit-bench-monitoring-") as work:
        root = Path(work)
        config = write_project(root, PLANS, TARGETS, rpo="1d", repository={"quota": "1TiB"})
        url = f"sqlite:///{root / 'config' / '.drkit' / 'catalog.db'}"
        fill(url, args.records, args.days)
        scores = scoring_ms(url, 200)
        samples = entropy_ms(root, 20)
        env = {**os.environ, "BENCH_PASSWORD": "unused"}
        os.environ["BENCH_PASSWORD"] = "unused"
        scrapes = scrape_ms(config, 20)
        drkit = [sys.executable, "-m", "drkit", "--config", str(config)]
        metrics = [timed([*drkit, "metrics"], env) for _ in range(args.rounds)]
        print(f"catalog: {args.records} records, {len(TARGETS)} targets, {len(PLANS)} plans")
        print(f"  anomaly scoring per backup    median {statistics.median(scores):.1f} ms "
              f"(max {max(scores):.1f})   target ≤ 20 ms")
        print(f"  entropy sample of 8 files     median {statistics.median(samples):.1f} ms "
              f"(max {max(samples):.1f}; 2,000-file tree walked)")
        print(f"  drkit metrics (CLI)           median {statistics.median(metrics):.2f} s "
              f"(min {min(metrics):.2f}, max {max(metrics):.2f})   target ≤ 0.5 s")
        print(f"  a scrape of serve's /metrics  median {statistics.median(scrapes):.0f} ms "
              f"(max {max(scrapes):.0f}; computed at the scrape, drkit loaded)")


if __name__ == "__main__":
    main()
