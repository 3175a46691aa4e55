"""`drkit report` and `drkit status` over a catalog of 100,000 records (SPEC: each ≤ 1 s).

Builds a valid hash chain of N records spread over the last --days days (default 400: a
catalog that grew to 100,000 records over a bit more than a year): 10 targets backed up in
turn (2% failures), checks and drills in between. Then times the real CLI, start-up included,
as a user runs it: the default report (last 30 days), status, and once the worst case, a
report of every record in the catalog.

    .venv/bin/python -m bench.report_scale [--records 100000] [--days 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from bench.common import timed, write_chain, write_project
from drkit.catalog.inflight import utcnow

TARGETS = [f"app-{index}" for index in range(10)]
PLANS = {"plan-a": TARGETS[:3], "plan-b": TARGETS[3:6], "plan-c": TARGETS[6:]}


def fill_catalog(url: str, count: int, days: float) -> None:
    """Append ``count`` records forming one valid chain (bulk insert, one transaction)."""
    start = utcnow() - timedelta(days=days)
    step = timedelta(days=days) / count
    records = []
    for seq in range(1, count + 1):
        at = start + step * seq
        if seq % 1000 == 0:
            record = {"kind": "check", "status": "passed" if seq % 7000 else "failed",
                      "repository": "primary", "evidence": {
                          "read_data_subset": "1/10", "errors": [], "duration_s": 3.2,
                          "posture": {"bucket": "b", "versioning": "Enabled",
                                      "object_lock": True, "object_lock_mode": "COMPLIANCE",
                                      "object_lock_days": 30, "encryption": "AES256"}}}
        elif seq % 1000 == 500:
            plan = list(PLANS)[(seq // 1000) % 3]
            record = {"kind": "drill", "status": "passed", "plan": plan, "evidence": {
                "plan": plan, "rpo_achieved_s": 900.0 + seq % 300,
                "rto_achieved_s": 120.0 + seq % 60, "rpo_objective_s": 3600.0,
                "rto_objective_s": 900.0, "steps": []}}
        else:
            record = {"kind": "backup", "status": "failed" if seq % 50 == 0 else "succeeded",
                      "target": TARGETS[seq % len(TARGETS)], "repository": "primary",
                      "snapshot_id": f"{seq:08x}", "evidence": {"restic_summary": {
                          "files_new": seq % 17, "data_added": seq * 13,
                          "snapshot_id": f"{seq:08x}"}}}
        if record["status"] == "failed":
            record["error"] = "repository locked"
        records.append({**record, "at": at})
    write_chain(url, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=400.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drkit-bench-report-") as work:
        root = Path(work)
        config = write_project(root, PLANS, TARGETS, rpo="1h")
        fill_catalog(f"sqlite:///{root / 'config' / '.drkit' / 'catalog.db'}", args.records,
                     args.days)
        env = {**os.environ, "BENCH_PASSWORD": "unused"}
        drkit = [sys.executable, "-m", "drkit", "--config", str(config)]
        out = root / "out"
        results: dict[str, list[float]] = {"report --format json": [],
                                           "report --format csv": [], "status --json": []}
        for _ in range(args.rounds):
            results["report --format json"].append(timed(
                [*drkit, "report", "--format", "json", "--output", str(out)], env))
            results["report --format csv"].append(timed(
                [*drkit, "report", "--format", "csv", "--output", str(out)], env))
            results["status --json"].append(timed([*drkit, "status", "--json"], env))
        report = json.loads(subprocess.run(
            [*drkit, "report", "--format", "json"], env=env, capture_output=True,
            text=True, check=True).stdout)
        in_period = len(report["records"])
        everything = timed([*drkit, "report", "--format", "json", "--since",
                            f"{args.days + 1:g}d", "--output", str(out)], env)
        print(f"catalog: {args.records} records over {args.days:g} days; default report "
              f"period (30 days) holds {in_period} of them; {args.rounds} rounds")
        for name, times in results.items():
            print(f"  drkit {name:22s} median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f})   target ≤ 1 s")
        print(f"  drkit report --format json over all {args.records} records: "
              f"{everything:.2f} s ({out.stat().st_size / 1e6:.0f} MB written)")


if __name__ == "__main__":
    main()
