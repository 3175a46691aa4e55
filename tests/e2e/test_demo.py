"""`drkit demo` runs the whole loop a new user sees, end to end, with the real parts."""

from __future__ import annotations

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
    assert "detected by content matches the manifest" in result.stderr
    assert "backup app-files -> primary: succeeded" in result.stderr
    assert "backup invoices -> primary: succeeded" in result.stderr
    assert "Traceback" not in out + result.stderr
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
