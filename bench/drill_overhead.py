"""drkit drill vs bare restic restore + sha256sum -c of the same ~300 MB data.

A files target of ~300 MB in ~2,000 files is backed up once to the local S3 endpoint. Then,
alternating for 3 rounds: `drkit drill` of a plan over it (restic restore --verify, tree
comparison against the snapshot listing, a files_exist check, scoring, catalog record) and
by hand `restic restore` into a fresh directory followed by `sha256sum -c` of a manifest made
beforehand. Prints each timing and the median ratio drkit / bare (target <= 1.10).

Run with `make bench` (or `.venv/bin/python bench/drill_overhead.py [--mb 300 --files 2000]`).
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
from bench.common import timed, tree_arguments
from drkit.locals3 import local_s3


def main() -> int:
    args = tree_arguments(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="drkit-bench-drill-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        print(f"generating {args.mb} MB in {args.files} files ...", flush=True)
        make_tree(tree, args.mb, args.files)
        manifest = work / "SHA256SUMS"
        with open(manifest, "w") as out:
            subprocess.run(["find", ".", "-type", "f", "-exec", "sha256sum", "{}", "+"],
                           cwd=tree, stdout=out, check=True)
        with local_s3(work / "s3") as s3:
            password = secrets.token_urlsafe(16)
            env = {**os.environ, "BENCH_PW": password, "BENCH_AK": s3.access_key,
                   "BENCH_SK": s3.secret_key, "AWS_ACCESS_KEY_ID": s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3.secret_key, "RESTIC_PASSWORD": password}
            url = s3.restic_url("bench", "drill")
            config = work / "config" / "drkit.yaml"
            config.parent.mkdir()
            config.write_text(yaml.safe_dump({
                "drills": {"sandbox_dir": str(work / "sandboxes")},
                "repositories": {"s3": {
                    "url": url, "password": {"env": "BENCH_PW"},
                    "s3": {"endpoint": s3.endpoint, "access_key": {"env": "BENCH_AK"},
                           "secret_key": {"env": "BENCH_SK"}}}},
                "targets": {"tree": {"kind": "files", "paths": [str(tree)],
                                     "repositories": ["s3"]}},
            }))
            (work / "recovery_plans").mkdir()
            (work / "recovery_plans" / "bench.yaml").write_text(yaml.safe_dump({
                "name": "bench", "objectives": {"rpo": "1d", "rto": "1h"},
                "steps": [{"target": "tree", "checks": [{"files_exist": ["d00/"]}]}]}))
            drkit = [str(Path(sys.executable).parent / "drkit"), "--config", str(config)]
            timed([*drkit, "repo", "init"], env)
            timed([*drkit, "backup"], env)
            ratios: list[float] = []
            with_cleanup: list[float] = []
            for round_no in range(1, args.rounds + 1):
                times: dict[str, float] = {}
                order = ["drkit", "bare"] if round_no % 2 else ["bare", "drkit"]
                for who in order:
                    if who == "drkit":
                        times[who] = timed([*drkit, "drill", "bench"], env)
                    else:
                        target = work / f"bare-{round_no}"
                        restore = timed(["restic", "-r", url, "restore", "latest", "--target",
                                       str(target)], env)
                        check = timed(["sha256sum", "--quiet", "-c", str(manifest)], env,
                                    cwd=target / str(tree).lstrip("/"))
                        times[who] = restore + check
                        start = time.perf_counter()
                        shutil.rmtree(target)  # drkit removes its sandbox inside its timing
                        times["bare_cleanup"] = time.perf_counter() - start
                ratio = times["drkit"] / times["bare"]
                ratios.append(ratio)
                with_cleanup.append(times["drkit"] / (times["bare"] + times["bare_cleanup"]))
                print(f"round {round_no}: drkit drill {times['drkit']:.2f} s, restic restore + "
                      f"sha256sum -c {times['bare']:.2f} s (+ rm -r {times['bare_cleanup']:.2f} s)"
                      f", ratio {ratio:.3f}", flush=True)
    median = statistics.median(ratios)
    print(f"median ratio drill/bare over {args.rounds} rounds: {median:.3f} (target <= 1.10)")
    print(f"median ratio with the bare restore's removal counted too (drkit always removes "
          f"its sandbox): {statistics.median(with_cleanup):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
