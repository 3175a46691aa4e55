"""``drkit demo``: the whole loop on a local S3 endpoint, in a temporary directory.

It starts ``rclone serve s3`` on a free port with fresh credentials, makes sample files and a
SQLite database, writes a config for them and the example recovery plan, then runs the real
commands one after the other: validate, repo init, backup, snapshots, check, drill, status,
report (an HTML report left next to the temporary directory, its path printed), audit verify
and audit export (an evidence bundle, then checked by its own verify.py). Its records are
signed with a key made for the demo.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
from contextlib import closing
from importlib import resources
from pathlib import Path

from drkit.locals3 import LocalS3, local_s3

CONFIG = """\
# Written by `drkit demo`. The secrets come from the environment the demo sets.
catalog: sqlite:///.drkit/catalog.db
plans_dir: ../recovery_plans
parallelism: 2
drills:
  sandbox_dir: ../sandbox
repositories:
  primary:
    url: {url}
    password: {{env: DRKIT_DEMO_RESTIC_PASSWORD}}
    s3:
      endpoint: {endpoint}
      region: us-east-1
      access_key: {{env: DRKIT_DEMO_S3_ACCESS_KEY}}
      secret_key: {{env: DRKIT_DEMO_S3_SECRET_KEY}}
checks:
  read_data_subset: "10%"          # each check reads the next tenth of the data
targets:
  app-files:
    kind: files
    paths: [../app/files]
    exclude: ["*.tmp"]
    repositories: [primary]
    schedule: "0 * * * *"
    retention: {{keep_hourly: 24, keep_daily: 7}}
  invoices:
    kind: sqlite
    path: ../app/invoices.sqlite
    repositories: [primary]
    schedule: "*/15 * * * *"
    fingerprints:                    # taken on the backed-up copy; drills compare them
      invoices: "select count(*) from invoices"
      total_cents: "select sum(amount_cents) from invoices"
evidence:                            # every run's records end in a signed checkpoint
  signing_key: {{file: ../keys/evidence.key}}
  public_key: {public_key}
"""


def make_sample_data(root: Path) -> None:
    """Sample application data: nested files (one with a unicode name) and a SQLite database."""
    files = root / "files"
    (files / "uploads" / "2026").mkdir(parents=True, exist_ok=True)
    (files / "config.json").write_text('{"service": "orders", "replicas": 3}\n')
    for index in range(20):
        (files / "uploads" / "2026" / f"scan-{index:03d}.bin").write_bytes(os.urandom(64 * 1024))
    (files / "uploads" / "reçu-été.txt").write_text("merci\n", encoding="utf-8")
    # What the application's own deploy would write: a manifest the drill checks the restored
    # files against (``sha256sum -c``), which is what lets --prove-checks pass.
    (files / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(files)}\n"
        for path in sorted(files.rglob("*")) if path.is_file()), encoding="utf-8")
    (files / "scratch.tmp").write_text("excluded\n")
    with closing(sqlite3.connect(root / "invoices.sqlite")) as db:
        db.execute("create table invoices (id integer primary key, customer text, "
                   "amount_cents integer, created_at text default current_timestamp)")
        db.executemany("insert into invoices (customer, amount_cents) values (?, ?)",
                       [(f"customer-{i % 37}", 1000 + i) for i in range(1500)])
        db.commit()


def write_demo_config(workdir: Path, s3: LocalS3) -> Path:
    """Write ``workdir/config/drkit.yaml`` for a repository on ``s3``; set its secrets' env."""
    os.environ["DRKIT_DEMO_RESTIC_PASSWORD"] = secrets.token_urlsafe(24)
    os.environ["DRKIT_DEMO_S3_ACCESS_KEY"] = s3.access_key
    os.environ["DRKIT_DEMO_S3_SECRET_KEY"] = s3.secret_key
    from drkit.signing import generate, public_base64, public_bytes

    private, public = generate()  # what `drkit keygen` writes
    (workdir / "keys").mkdir(mode=0o700)
    key = workdir / "keys" / "evidence.key"
    key.write_text(private)
    key.chmod(0o600)
    path = workdir / "config" / "drkit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG.format(url=s3.restic_url("drkit-demo", "restic"),
                                  endpoint=s3.endpoint,
                                  public_key=public_base64(public_bytes(public))))
    plans = workdir / "recovery_plans"
    plans.mkdir(exist_ok=True)
    plan = resources.files("drkit").joinpath("templates", "example-plan.yaml")
    (plans / "example.yaml").write_text(plan.read_text(encoding="utf-8"))
    return path


def run_demo(*, keep: bool = False, verbose: bool = False) -> int:
    """Run the demo; return 0 when every step held, else the first failing step's code."""
    from drkit.cli import main

    workdir = Path(tempfile.mkdtemp(prefix="drkit-demo-"))
    # The report outlives the demo directory, so it can be opened afterwards.
    report = Path(tempfile.gettempdir()) / f"drkit-demo-report-{workdir.name[11:]}.html"
    print(f"demo directory: {workdir}")
    code = 0
    try:
        with local_s3(workdir / "s3", log_file=workdir / "rclone.log") as s3:
            print(f"local S3 endpoint: {s3.endpoint} (rclone serve s3, data in {s3.data_dir})")
            make_sample_data(workdir / "app")
            config = write_demo_config(workdir, s3)
            base = ["--config", str(config)] + (["--verbose"] if verbose else [])
            bundle = workdir / "evidence-bundle"
            for step in (["validate"], ["repo", "init"], ["backup"], ["snapshots"],
                         ["check"], ["drill", "example", "--prove-checks", "--scenario",
                                     "the application server's disk is lost",
                                     "--approved-by", "demo DR lead"], ["status"],
                         ["report", "--output", str(report)], ["audit", "verify"],
                         ["audit", "export", "--since", "1d", "--output", str(bundle)]):
                print(f"\n$ drkit {' '.join(step)}", flush=True)
                result = main(base + step)
                if result != 0:
                    print(f"demo: 'drkit {' '.join(step)}' exited {result}")
                    code = code or result
                    break
            if code == 0:  # an auditor checks the bundle without drkit
                import subprocess
                import sys

                key = json.loads((bundle / "bundle.json").read_text())["key_id"]
                print(f"\n$ python3 -I {bundle / 'verify.py'} --key-id {key}", flush=True)
                code = subprocess.run([sys.executable, "-I", str(bundle / "verify.py"),
                                       "--key-id", key]).returncode
    finally:
        if keep:
            print(f"\nkept {workdir} (config in {workdir / 'config' / 'drkit.yaml'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if code == 0:
        print(f"\ncompliance report (open it in a browser): {report}")
    print("\ndemo: done" if code == 0 else "\ndemo: FAILED")
    return code
