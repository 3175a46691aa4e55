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


def _glob(pattern: list[str], parts: list[str]) -> bool:
    """Whether path components ``parts`` match ``pattern``'s components exactly: ``*`` and
    ``?`` within one component, ``**`` over any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and \
        _glob(pattern[1:], parts[1:])


def excluded(path: str, patterns: Sequence[str]) -> bool:
    """Whether restic's ``--exclude`` ``patterns`` exclude ``path``, as restic matches them:
    by path components (``*`` stays within one, ``**`` crosses any number); a pattern that
    starts with ``/`` is anchored at the root, any other may match from any component on; a
    match excludes what lies below too; a later ``!pattern`` includes again."""
    parts = [part for part in path.split(os.sep) if part]
    verdict = False
    for raw in patterns:
        negate = raw.startswith("!")
        text = (raw[1:] if negate else raw).rstrip("/")
        if not text:
            continue
        pattern = [part for part in text.split("/") if part]
        if not text.startswith("/"):
            pattern = ["**", *pattern]
        if any(_glob(pattern, parts[:end]) for end in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict


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
