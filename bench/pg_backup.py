"""drkit backup of a ~200 MB PostgreSQL database vs `pg_dump -Fc | restic backup --stdin`.

Starts a throwaway PostgreSQL (as the test suite does), fills a database to about 200 MB,
then, alternating for 3 rounds into fresh local repositories, times `drkit backup` of a
postgres target and the same pipeline typed by hand. Prints the median ratio (target <= 1.05).

Run with `make bench` (or `.venv/bin/python -m bench.pg_backup [--mb 200]`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tests.databases import postgres_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with postgres_server() as pg, tempfile.TemporaryDirectory(prefix="drkit-bench-pg-") as tmp:
        work = Path(tmp)
        pg.sql("create database bench")
        rows = args.mb * 1024 * 1024 // 200
        print(f"filling a {args.mb} MB database ({rows} rows) ...", flush=True)
        pg.sql("create table events (id bigserial primary key, at timestamptz default now(),"
               " payload text); insert into events (payload) select md5(g::text) || "
               f"repeat(md5((g * 7)::text), 4) from generate_series(1, {rows}) g", "bench")
        size = pg.sql("select pg_size_pretty(pg_database_size('bench'))")
        print(f"database size: {size}", flush=True)
        env = {**os.environ, "RESTIC_PASSWORD": "bench-pw", "BENCH_PW": "bench-pw",
               "ORDERS_DSN": pg.dsn("bench")}
        pg_env = {**env, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user,
                  "PGPASSWORD": pg.password, "PGDATABASE": "bench"}
        drkit = str(Path(sys.executable).parent / "drkit")
        ratios = []
        for round_no in range(1, args.rounds + 1):
            config = work / f"r{round_no}" / "config" / "drkit.yaml"
            config.parent.mkdir(parents=True)
            drkit_repo, bare_repo = work / f"drkit-{round_no}", work / f"bare-{round_no}"
            config.write_text(yaml.safe_dump({
                "repositories": {"r": {"url": str(drkit_repo), "password": {"env": "BENCH_PW"}}},
                "targets": {"bench": {"kind": "postgres", "dsn": {"env": "ORDERS_DSN"},
                                      "repositories": ["r"]}}}))
            for repo in (drkit_repo, bare_repo):
                subprocess.run(["restic", "-r", str(repo), "init", "-q"], env=env, check=True)
            times = {}
            for who in (["drkit", "bare"] if round_no % 2 else ["bare", "drkit"]):
                start = time.perf_counter()
                if who == "drkit":
                    done = subprocess.run([drkit, "--config", str(config), "backup"], env=env,
                                          capture_output=True, text=True)
                else:
                    done = subprocess.run(
                        ["bash", "-o", "pipefail", "-c", "pg_dump -Fc | restic -r "
                         f"{bare_repo} backup -q --stdin --stdin-filename bench.dump"],
                        env=pg_env, capture_output=True, text=True)
                times[who] = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"{who} failed: {done.stderr}")
            ratio = times["drkit"] / times["bare"]
            ratios.append(ratio)
            print(f"round {round_no}: drkit {times['drkit']:.2f} s, pg_dump | restic "
                  f"{times['bare']:.2f} s, ratio {ratio:.3f}", flush=True)
    print(f"median ratio drkit/bare over {args.rounds} rounds: {statistics.median(ratios):.3f} "
          "(target <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
