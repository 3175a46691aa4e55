"""50 small targets into one repository at parallelism 8: `drkit backup` vs 50 bare restic runs.

Each target is a small directory (20 files of 4-64 KiB). drkit backs all of them up with
`parallelism: 8` (one catalog record each); the bare side runs the same 50 `restic backup`
commands 8 at a time. Fresh local repositories each round, alternating which goes first.
Prints each timing and the median ratio drkit / bare (target: about 1.0; restic's own
per-process cost, lock handling among concurrent processes included, is the floor).

Run with `make bench` (or `.venv/bin/python -m bench.many_targets [--targets 50 --rounds 3]`).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def make_targets(root: Path, count: int) -> list[Path]:
    rng = random.Random(7)
    dirs = []
    for index in range(count):
        folder = root / f"t{index:02d}"
        folder.mkdir(parents=True)
        for item in range(20):
            (folder / f"f{item}.bin").write_bytes(os.urandom(rng.randint(4, 64) * 1024))
        dirs.append(folder)
    return dirs


def bare(dirs: list[Path], repo: Path, env: dict[str, str], parallelism: int,
         restic: str) -> float:
    def one(folder: Path) -> None:
        result = subprocess.run([restic, "-r", str(repo), "backup", "-q", "--tag", "bench",
                                 str(folder)], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"bare restic failed: {result.stderr}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        list(pool.map(one, dirs))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--restic", default="restic", help="the restic binary to compare with")
    args = parser.parse_args()
    drkit = str(Path(sys.executable).parent / "drkit")
    with tempfile.TemporaryDirectory(prefix="drkit-bench-many-") as tmp:
        work = Path(tmp)
        dirs = make_targets(work / "data", args.targets)
        password = secrets.token_urlsafe(16)
        env = {**os.environ, "BENCH_PW": password, "RESTIC_PASSWORD": password}
        config = work / "config" / "drkit.yaml"
        config.parent.mkdir()
        config.write_text(yaml.safe_dump({
            "restic_binary": args.restic, "parallelism": args.parallelism,
            "repositories": {"r": {"url": str(work / "drkit-repo"),
                                   "password": {"env": "BENCH_PW"}}},
            "targets": {folder.name: {"kind": "files", "paths": [str(folder)],
                                      "repositories": ["r"]} for folder in dirs},
        }))
        ratios = []
        for round_no in range(1, args.rounds + 1):
            for repo in ("drkit-repo", "bare-repo"):
                shutil.rmtree(work / repo, ignore_errors=True)
            shutil.rmtree(work / "config" / ".drkit", ignore_errors=True)
            subprocess.run([drkit, "--config", str(config), "repo", "init"], env=env,
                           check=True, capture_output=True)
            subprocess.run([args.restic, "-r", str(work / "bare-repo"), "init", "-q"], env=env,
                           check=True)
            times = {}
            for who in (["drkit", "bare"] if round_no % 2 else ["bare", "drkit"]):
                if who == "bare":
                    times[who] = bare(dirs, work / "bare-repo", env, args.parallelism,
                                      args.restic)
                    continue
                start = time.perf_counter()
                result = subprocess.run([drkit, "--config", str(config), "backup"], env=env,
                                        capture_output=True, text=True)
                times[who] = time.perf_counter() - start
                if result.returncode != 0:
                    sys.exit(f"drkit backup failed:\n{result.stderr[-2000:]}")
            ratios.append(times["drkit"] / times["bare"])
            print(f"round {round_no}: drkit {times['drkit']:.2f} s, bare {times['bare']:.2f} s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"{args.targets} targets at parallelism {args.parallelism}: median ratio "
          f"drkit/bare {statistics.median(ratios):.3f} over {args.rounds} rounds (target ~1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
