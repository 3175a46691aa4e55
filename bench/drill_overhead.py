"""drkit drill vs bare restic restore + sha256sum -c vs restverify run, side by side.

A files target of ~120 MiB in 1,500 files (``--mb``, ``--files``) is backed up once into a
local repository (``--s3`` for the local S3 endpoint instead). Then, for 3 rounds in rotating
order, with the page cache dropped before each step (when this user may):
- ``drkit drill`` of a plan over it (restic restore --verify: every restored byte re-read and
  hashed; the restored tree compared with the snapshot's listing; a files_exist check;
  scoring; catalog record; sandbox removed);
- by hand: ``restic restore`` into a fresh directory, then ``sha256sum -c`` of a manifest made
  beforehand (100% of the content), then ``rm -r``;
- ``restverify run -r REPO -s SOURCE`` (restore, compare with the source tree, hash a sample
  of ~200 files), if restverify is installed (``make bench`` installs it).
Prints each timing and the median ratios to bare (target: drkit <= 1.15, faster than
restverify).

Run with ``make bench`` (or ``.venv/bin/python -m bench.drill_overhead [--mb 120 ...]``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from bench.backup_overhead import make_tree
from bench.common import timed
from drkit.locals3 import local_s3


def drop_caches() -> bool:
    """Drop the page cache (root only); False when this user may not."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=120)
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="repository on the local S3 endpoint")
    args = parser.parse_args()
    restverify = shutil.which("restverify") or (
        str(Path(sys.executable).parent / "restverify")
        if (Path(sys.executable).parent / "restverify").exists() else None)
    with tempfile.TemporaryDirectory(prefix="drkit-bench-drill-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        tree = work / "tree"
        print(f"generating {args.mb} MiB in {args.files} files ...", flush=True)
        make_tree(tree, args.mb, args.files)
        manifest = work / "SHA256SUMS"
        with open(manifest, "w") as out:
            subprocess.run(["find", ".", "-type", "f", "-exec", "sha256sum", "{}", "+"],
                           cwd=tree, stdout=out, check=True)
        password = secrets.token_urlsafe(16)
        env = {**os.environ, "BENCH_PW": password, "RESTIC_PASSWORD": password,
               "XDG_CONFIG_HOME": str(work / "xdg-config"),
               "XDG_STATE_HOME": str(work / "xdg-state"),
               "XDG_CACHE_HOME": str(work / "xdg-cache")}
        repo: dict[str, object]
        if args.s3:
            s3 = stack.enter_context(local_s3(work / "s3"))
            url = s3.restic_url("bench", "drill")
            env.update({"BENCH_AK": s3.access_key, "BENCH_SK": s3.secret_key,
                        "AWS_ACCESS_KEY_ID": s3.access_key,
                        "AWS_SECRET_ACCESS_KEY": s3.secret_key})
            repo = {"url": url, "password": {"env": "BENCH_PW"},
                    "s3": {"endpoint": s3.endpoint, "access_key": {"env": "BENCH_AK"},
                           "secret_key": {"env": "BENCH_SK"}}}
        else:
            url = str(work / "repo")
            repo = {"url": url, "password": {"env": "BENCH_PW"}}
        config = work / "config" / "drkit.yaml"
        config.parent.mkdir()
        config.write_text(yaml.safe_dump({
            "repositories": {"repo": repo},
            "targets": {"tree": {"kind": "files", "paths": [str(tree)],
                                 "repositories": ["repo"]}},
        }))
        (work / "recovery_plans").mkdir()
        (work / "recovery_plans" / "bench.yaml").write_text(yaml.safe_dump({
            "name": "bench", "objectives": {"rpo": "1d", "rto": "1h"},
            "steps": [{"target": "tree", "checks": [{"files_exist": ["d00/"]}]}]}))
        drkit = [str(Path(sys.executable).parent / "drkit"), "--config", str(config)]
        timed([*drkit, "repo", "init"], env)
        timed([*drkit, "backup"], env)
        # restic's own cache is warm for all three (each one's first round warms it).
        who_all = ["drkit", "bare"] + (["restverify"] if restverify else [])
        if restverify is None:
            print("restverify not installed: compared with bare restic only", flush=True)
        dropped = drop_caches()
        print("page cache dropped before each step" if dropped else
              "page cache NOT dropped (needs root): figures include cached reads", flush=True)
        results: dict[str, list[float]] = {who: [] for who in who_all}
        for round_no in range(args.rounds):
            order = who_all[round_no % len(who_all):] + who_all[:round_no % len(who_all)]
            times: dict[str, float] = {}
            for who in order:
                drop_caches()
                if who == "drkit":
                    times[who] = timed([*drkit, "drill", "bench"], env)
                elif who == "bare":
                    target = work / f"bare-{round_no}"
                    start = time.perf_counter()
                    timed(["restic", "-r", url, "restore", "latest", "--target", str(target)],
                          env)
                    timed(["sha256sum", "--quiet", "-c", str(manifest)], env,
                          cwd=target / str(tree).lstrip("/"))
                    shutil.rmtree(target)  # drkit removes its sandbox inside its timing
                    times[who] = time.perf_counter() - start
                else:
                    assert restverify is not None
                    times[who] = timed([restverify, "run", "-r", url, "-s", str(tree),
                                        "--json"], env)
            for who, seconds in times.items():
                results[who].append(seconds)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{who} {times[who]:.2f} s" for who in who_all), flush=True)
    bare = statistics.median(results["bare"])
    for who in who_all:
        median = statistics.median(results[who])
        print(f"median {who}: {median:.2f} s ({median / bare:.2f}x bare)")
    print("target: drkit <= 1.15x bare and faster than restverify")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
