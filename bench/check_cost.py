"""What a read-data subset saves: a full `restic check --read-data` vs a `1/10` subset.

Backs a ~300 MB tree up to the local S3 endpoint, then times `drkit check --read-data-subset
100%` and `drkit check --read-data-subset 1/10`, measuring the bytes the S3 server read from
its disk to answer (its /proc/PID/io rchar). Prints both and the ratios (expect about 0.1 of
the data read; the time ratio is higher because the structure check costs the same in both).

Run with `make bench` (or `.venv/bin/python -m bench.check_cost [--mb 300]`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.backup_overhead import make_tree
from bench.common import tree_arguments
from drkit.locals3 import local_s3


def bytes_read(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/PID/io")


def main() -> int:
    args = tree_arguments(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="drkit-bench-check-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        print(f"generating {args.mb} MB in {args.files} files ...", flush=True)
        make_tree(tree, args.mb, args.files)
        with local_s3(work / "s3") as s3:
            env = {**os.environ, "BENCH_PW": secrets.token_urlsafe(16),
                   "BENCH_AK": s3.access_key, "BENCH_SK": s3.secret_key}
            config = work / "config" / "drkit.yaml"
            config.parent.mkdir()
            config.write_text(yaml.safe_dump({
                "repositories": {"s3": {
                    "url": s3.restic_url("bench", "check"), "password": {"env": "BENCH_PW"},
                    "s3": {"endpoint": s3.endpoint, "access_key": {"env": "BENCH_AK"},
                           "secret_key": {"env": "BENCH_SK"}}}},
                "targets": {"tree": {"kind": "files", "paths": [str(tree)],
                                     "repositories": ["s3"]}},
            }))
            drkit = [str(Path(sys.executable).parent / "drkit"), "--config", str(config)]
            for step in (["repo", "init"], ["backup"]):
                subprocess.run([*drkit, *step], env=env, check=True, capture_output=True)
            results = {}
            for subset in ("100%", "1/10"):
                before = bytes_read(s3.pid)
                start = time.perf_counter()
                done = subprocess.run([*drkit, "check", "--read-data-subset", subset], env=env,
                                      capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"check failed:\n{done.stderr}")
                results[subset] = (elapsed, bytes_read(s3.pid) - before)
                print(f"check --read-data-subset {subset:>4}: {elapsed:6.2f} s, "
                      f"{results[subset][1] / 2**20:8.1f} MiB read by the S3 server", flush=True)
    (full_s, full_b), (part_s, part_b) = results["100%"], results["1/10"]
    print(f"1/10 vs full: bytes read ratio {part_b / full_b:.3f} (expect ~0.1), "
          f"time ratio {part_s / full_s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
