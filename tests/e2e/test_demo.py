"""`drkit demo` runs the whole loop a new user sees, end to end, with the real parts."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_the_loop(restic_binary: str) -> None:
    result = subprocess.run([sys.executable, "-m", "drkit", "demo"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("$ drkit validate", "$ drkit repo init", "$ drkit backup", "$ drkit snapshots",
                 "$ drkit drill example --prove-checks", "verdict: passed", "$ drkit status",
                 "demo: done"):
        assert step in out
    # The example plan's checks have teeth: each step's damaged copy was caught.
    assert "invoices: detected by fingerprints equal to the backup's" in result.stderr
    # (the damaged file is chosen at random: config.json also fails the grep check)
    assert re.search(r"app-files: checks against a damaged copy: .*: detected by "
                     r"(command: grep -q replicas config.json, )?content matches the manifest",
                     result.stderr)
    assert "backup app-files -> primary: succeeded" in result.stderr
    assert "backup invoices -> primary: succeeded" in result.stderr
    assert "Traceback" not in out + result.stderr
    # The records are signed, verified and exported; the bundle checks out without drkit.
    assert "$ drkit audit verify" in out and "chain intact: " in out
    assert re.search(r"checkpoints: \d+ signed and verified", out)
    assert re.search(r"OK: \d+ records, \d+ signed checkpoints, key [0-9a-f]{16}", out)
    directory = next(line.split(": ", 1)[1] for line in out.splitlines()
                     if line.startswith("demo directory: "))
    from pathlib import Path

    assert not Path(directory).exists()  # cleaned up
    report = Path(next(line.split(": ", 1)[1] for line in out.splitlines()
                       if line.startswith("compliance report")))
    html = report.read_text()
    assert "Backup and recovery compliance report" in html and "<svg" in html
    assert "example" in html and "app-files" in html
    report.unlink()
