"""Bounded samples of a source tree: files changed since a time (for the entropy sample of
anomaly detection) and random files (for ``check --spot``).

Both walk at most ``budget`` directory entries and read at most ``head`` bytes per file, so
their cost does not grow with the tree: on a huge tree the sample comes from the part walked
(the result says so, ``truncated``).
"""

from __future__ import annotations

import fnmatch
import math
import os
import random
import stat
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

HEAD = 64 * 1024
MIN_JUDGED = 4096   # smaller files cannot show their entropy reliably
BUDGET = 50_000
SAMPLE_BUDGET = 20_000  # a backup's entropy sample: ~0.1 s of lstat at most


@dataclass
class Walked:
    """Regular files met while walking (path, stat), and whether the walk stopped early."""

    files: list[tuple[str, os.stat_result]]
    entries: int
    truncated: bool


def excluded(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path`` matches one of restic's ``--exclude`` ``patterns``, approximately:
    a pattern with a ``/`` is matched against the path's end, one without against each of
    its components (``*.tmp``, ``cache/``)."""
    parts = path.split(os.sep)
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if not bare:
            continue
        if "/" in bare:
            if fnmatch.fnmatchcase(path, bare) or \
                    fnmatch.fnmatchcase(path, "*/" + bare.lstrip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, bare) for part in parts):
            return True
    return False


def walk(paths: Sequence[str], *, budget: int = BUDGET, exclude: Sequence[str] = ()
         ) -> Walked:
    """Regular files under ``paths`` (symlinks not followed, ``exclude`` patterns left out),
    at most ``budget`` entries."""
    files: list[tuple[str, os.stat_result]] = []
    entries = 0
    stack = list(reversed(paths))
    while stack:
        path = stack.pop()
        if exclude and excluded(path, exclude):
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        entries += 1
        if entries > budget:
            return Walked(files, entries - 1, True)
        if stat.S_ISREG(info.st_mode):
            files.append((path, info))
        elif stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(path) as listing:
                    names = sorted(entry.path for entry in listing)
            except OSError:
                continue
            stack.extend(reversed(names))
    return Walked(files, entries, False)


def entropy_bits(data: bytes) -> float:
    """Shannon entropy of ``data`` in bits per byte (8.0: indistinguishable from random)."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


def looks_encrypted(data: bytes) -> bool:
    """High entropy and incompressible: encrypted (or already compressed) content."""
    return entropy_bits(data) > 7.5 and len(zlib.compress(data, 1)) > 0.95 * len(data)


def _heads(paths: Iterator[str]) -> Iterator[bytes]:
    for path in paths:
        try:
            with open(path, "rb") as handle:
                yield handle.read(HEAD)
        except OSError:
            continue


def entropy_sample(paths: Sequence[str], *, since: float, count: int,
                   budget: int = SAMPLE_BUDGET, rng: random.Random | None = None,
                   exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Up to ``count`` files modified after ``since`` (epoch seconds), read at their head:
    how many look encrypted. Files under 4 KiB are not judged."""
    clock = time.monotonic()
    walked = walk(paths, budget=budget, exclude=exclude)
    changed = [path for path, info in walked.files
               if max(info.st_mtime, info.st_ctime) > since and info.st_size >= MIN_JUDGED]
    chosen = (rng or random.SystemRandom()).sample(changed, min(count, len(changed)))
    judged = [looks_encrypted(head) for head in _heads(iter(chosen)) if len(head) >= MIN_JUDGED]
    return {"sampled": len(judged), "changed_files_seen": len(changed),
            "encrypted_share": round(sum(judged) / len(judged), 4) if judged else None,
            "walked": walked.entries, "truncated": walked.truncated,
            "ms": round((time.monotonic() - clock) * 1000, 1)}
