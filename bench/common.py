"""What the benchmarks share: timing a command and the tree-size arguments."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    """Run ``argv``; return its wall time in seconds. Exits the benchmark if it fails."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return elapsed


def tree_arguments(description: str, *, mb: int = 300, files: int = 2000
                   ) -> argparse.Namespace:
    """``--mb``, ``--files`` and ``--rounds`` from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mb", type=int, default=mb)
    parser.add_argument("--files", type=int, default=files)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()
