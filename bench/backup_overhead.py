"""drkit backup vs bare restic backup of the same tree into equivalent fresh repositories.

A ~300 MB, ~2,000-file tree is backed up to the local S3 endpoint (rclone serve s3) by
`drkit backup` and by `restic backup`, alternating, for 3 rounds; each round uses two fresh
repositories. Prints each timing and the median ratio drkit / restic (target <= 1.05).

Run with `make bench` (or `.venv/bin/python bench/backup_overhead.py [--mb 300 --files 2000]`).
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import timed, tree_arguments
from drkit.locals3 import LocalS3, local_s3


def make_tree(root: Path, total_mb: int, files: int) -> None:
    rng = random.Random(42)
    mean = total_mb * 1024 * 1024 // files
    for index in range(files):
        folder = root / f"d{index % 40:02d}" / f"s{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = max(1, int(rng.uniform(0.2, 1.8) * mean))
        (folder / f"f{index:05d}.bin").write_bytes(os.urandom(size))


def main() -> int:
    args = tree_arguments(__doc__.splitlines()[0])

    with tempfile.TemporaryDirectory(prefix="drkit-bench-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        print(f"generating {args.mb} MB in {args.files} files ...", flush=True)
        make_tree(tree, args.mb, args.files)
        with local_s3(work / "s3") as s3:
            return run_rounds(work, tree, s3, args.rounds)


def run_rounds(work: Path, tree: Path, s3: LocalS3, rounds: int) -> int:
    password = secrets.token_urlsafe(16)
    env = {**os.environ, "BENCH_PW": password, "BENCH_AK": s3.access_key,
           "BENCH_SK": s3.secret_key, "AWS_ACCESS_KEY_ID": s3.access_key,
           "AWS_SECRET_ACCESS_KEY": s3.secret_key, "RESTIC_PASSWORD": password}
    drkit = [str(Path(sys.executable).parent / "drkit")]
    ratios = []
    for round_no in range(1, rounds + 1):
        drkit_url = s3.restic_url("bench", f"drkit-{round_no}")
        bare_url = s3.restic_url("bench", f"bare-{round_no}")
        config = work / f"round{round_no}" / "config" / "drkit.yaml"
        config.parent.mkdir(parents=True)
        config.write_text(yaml.safe_dump({
            "repositories": {"s3": {
                "url": drkit_url, "password": {"env": "BENCH_PW"},
                "s3": {"endpoint": s3.endpoint, "access_key": {"env": "BENCH_AK"},
                       "secret_key": {"env": "BENCH_SK"}}}},
            "targets": {"tree": {"kind": "files", "paths": [str(tree)],
                                 "repositories": ["s3"]}},
        }))
        timed([*drkit, "--config", str(config), "repo", "init"], env)
        timed(["restic", "-r", bare_url, "init"], env)
        # Alternate which goes first so that cache warmth favours neither.
        order = ["drkit", "restic"] if round_no % 2 else ["restic", "drkit"]
        times = {}
        for who in order:
            if who == "drkit":
                times[who] = timed([*drkit, "--config", str(config), "backup"], env)
            else:
                times[who] = timed(["restic", "-r", bare_url, "backup", "-q", str(tree)], env)
        ratio = times["drkit"] / times["restic"]
        ratios.append(ratio)
        print(f"round {round_no}: drkit {times['drkit']:.2f} s, restic {times['restic']:.2f} s, "
              f"ratio {ratio:.3f}", flush=True)
    median = statistics.median(ratios)
    print(f"median ratio drkit/restic over {rounds} rounds: {median:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
