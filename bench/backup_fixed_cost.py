"""drkit's fixed cost per backup: `drkit backup` vs bare `restic backup`, caches dropped.

A 120 MiB, 1,500-file tree is backed up into fresh local repositories (one for drkit, one
for restic) in each round, alternating which goes first; before each timed run the page cache
is dropped (as root: `echo 3 > /proc/sys/vm/drop_caches`; elsewhere the runs are warm and the
output says so). drkit's run includes everything it does: config validation, the journal,
the catalog record, the table. Prints the medians, drkit's fixed overhead (drkit - restic) and
the ratio (targets: overhead < 0.25 s, ratio <= 1.15).

Run with `make bench` (or `.venv/bin/python -m bench.backup_fixed_cost [--mb 120 --files 1500]`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.backup_overhead import make_tree
from bench.common import tree_arguments


def drop_caches() -> bool:
    """Drop the page cache (root only); return whether it was dropped."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed_ok(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{result.stderr}")
    return elapsed


def main() -> int:
    args = tree_arguments(__doc__.splitlines()[0], mb=120, files=1500)
    args.rounds = max(args.rounds, 5)
    drkit = str(Path(sys.executable).parent / "drkit")
    with tempfile.TemporaryDirectory(prefix="drkit-bench-fixed-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        print(f"generating {args.mb} MiB in {args.files} files ...", flush=True)
        make_tree(tree, args.mb, args.files)
        password = secrets.token_urlsafe(16)
        env = {**os.environ, "BENCH_PW": password, "RESTIC_PASSWORD": password}
        config = work / "config" / "drkit.yaml"
        config.parent.mkdir()
        config.write_text(yaml.safe_dump({
            "repositories": {"r": {"url": str(work / "drkit-repo"),
                                   "password": {"env": "BENCH_PW"}}},
            "targets": {"tree": {"kind": "files", "paths": [str(tree)], "repositories": ["r"]}},
        }))
        times: dict[str, list[float]] = {"drkit": [], "restic": []}
        cold = True
        for round_no in range(args.rounds):
            for repo in ("drkit-repo", "bare-repo"):
                shutil.rmtree(work / repo, ignore_errors=True)
            timed_ok([drkit, "--config", str(config), "repo", "init"], env)
            timed_ok(["restic", "-r", str(work / "bare-repo"), "init", "-q"], env)
            order = ["drkit", "restic"] if round_no % 2 else ["restic", "drkit"]
            for who in order:
                cold = drop_caches() and cold
                argv = [drkit, "--config", str(config), "backup"] if who == "drkit" else \
                    ["restic", "-r", str(work / "bare-repo"), "backup", "-q", str(tree)]
                times[who].append(timed_ok(argv, env))
            print(f"round {round_no + 1}: drkit {times['drkit'][-1]:.2f} s, "
                  f"restic {times['restic'][-1]:.2f} s", flush=True)
    drkit_s = statistics.median(times["drkit"])
    restic_s = statistics.median(times["restic"])
    print(f"{'caches dropped' if cold else 'WARM caches (not root: cannot drop them)'}; "
          f"medians over {args.rounds} rounds: drkit {drkit_s:.3f} s, restic {restic_s:.3f} s, "
          f"fixed overhead {drkit_s - restic_s:.3f} s (target < 0.25), "
          f"ratio {drkit_s / restic_s:.3f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
