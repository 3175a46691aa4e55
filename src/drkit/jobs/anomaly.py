"""Is this backup unlike its target's own history? (ransomware, a lost mount, a dump gone wrong)

Every successful backup is scored against the target's last normal runs in the same
repository, from restic's summary of each run (:func:`figures_of`):

- ``changed``: the share of the files already backed up that changed (encryption in place
  rewrites nearly all of them);
- ``removed``: the share of the previous run's files that are gone;
- ``size``: the bytes restic read, log-scaled (a source that shrank to almost nothing);
- ``added``: the share of the bytes read that was new data (data that no longer
  deduplicates: encrypted, or rewritten whole);
- ``packed``: stored bytes per added byte (restic >= 0.17 reports both): encrypted data does
  not compress;
- ``entropy``: the share of sampled changed files that look encrypted (``entropy_sample``).

The method is robust: the baseline is the median of the last ``window`` normal runs (flagged
runs that nobody acknowledged do not count), the spread its median absolute deviation (MAD,
scaled to a standard deviation, with a floor so that a perfectly steady history does not turn
every wobble into an alarm). A figure is flagged when it is ``sensitivity`` deviations out
*and* past an absolute bar (most files, almost nothing...). With fewer than ``warmup``
normal runs there is no verdict. Pure functions: :mod:`drkit.jobs.backup` supplies the
history and records the verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drkit.catalog.anomalies import PastBackup
from drkit.config.models import AnomalySettings

MIB = 1024 * 1024


def figures_of(summary: dict[str, Any], previous: dict[str, Any] | None,
               entropy: dict[str, Any] | None = None) -> dict[str, float]:
    """The figures of one run (its restic summary, the previous run's, its entropy sample)."""
    def count(data: dict[str, Any] | None, key: str) -> int:
        value = (data or {}).get(key)
        return int(value) if isinstance(value, int | float) and value > 0 else 0

    changed, unmodified = count(summary, "files_changed"), count(summary, "files_unmodified")
    before = count(previous, "total_files_processed")
    added = count(summary, "data_added")
    out = {
        "changed": changed / max(1, changed + unmodified),
        "removed": max(0, before - changed - unmodified) / max(1, before),
        "size": math.log10(count(summary, "total_bytes_processed") + 1),
        "added": added / max(1, count(summary, "total_bytes_processed")),
    }
    packed = summary.get("data_added_packed")
    if isinstance(packed, int | float) and added >= MIB:
        out["packed"] = float(packed) / added
    share = (entropy or {}).get("encrypted_share")
    if isinstance(share, int | float) and (entropy or {}).get("sampled"):
        out["entropy"] = float(share)
    return out


@dataclass(frozen=True)
class _Rule:
    figure: str
    floor: float          # the smallest spread (same unit as the figure)
    up: bool              # flagged when far above (else far below) the baseline
    reason: str


_RULES = (
    _Rule("changed", 0.05, True, "{pct} of the files already backed up changed at once "
                                 "(usually {usual})"),
    _Rule("removed", 0.05, True, "{pct} of the previous backup's files are gone "
                                 "(usually {usual})"),
    _Rule("size", 0.05, False, "the source shrank to {ratio} of its usual size"),
    _Rule("added", 0.1, True, "{pct} of the data read was new (usually {usual}): it no "
                               "longer deduplicates"),
    _Rule("packed", 0.05, True, "added data no longer compresses ({pct} stored, usually "
                                "{usual})"),
    _Rule("entropy", 0.1, True, "{pct} of the sampled changed files look encrypted "
                                "(usually {usual})"),
)


@dataclass
class Verdict:
    """The comparison of one run with its baseline (kept in the record's evidence)."""

    flagged: bool
    reasons: list[str] = field(default_factory=list)
    baseline_runs: int = 0
    warming_up: bool = False
    figures: dict[str, float] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def rounded(values: dict[str, float]) -> dict[str, float]:
            return {key: round(value, 4) for key, value in values.items()}

        return {"flagged": self.flagged, "reasons": self.reasons,
                "baseline_runs": self.baseline_runs, "warming_up": self.warming_up,
                "figures": rounded(self.figures), "medians": rounded(self.medians),
                "scores": rounded(self.scores)}


def score(summary: dict[str, Any], history: Sequence[PastBackup], settings: AnomalySettings,
          entropy: dict[str, Any] | None = None) -> Verdict:
    """Compare the run of ``summary`` with ``history`` (earlier successful runs of the same
    target and repository, oldest first)."""
    previous = history[-1].summary if history else None
    current = figures_of(summary, previous, entropy)
    baseline: list[dict[str, float]] = []
    for index, run in enumerate(history):
        if run.flagged and not run.acknowledged:
            continue  # an unexplained anomaly is not what "usual" looks like
        before = history[index - 1].summary if index > 0 else None
        if before is None:
            continue  # the first run has nothing to compare its changes with
        baseline.append(figures_of(run.summary, before, run.entropy))
    baseline = baseline[-settings.window:]
    verdict = Verdict(flagged=False, baseline_runs=len(baseline), figures=current)
    if len(baseline) < settings.warmup:
        verdict.warming_up = True
        return verdict
    for rule in _RULES:
        values = [b[rule.figure] for b in baseline if rule.figure in b]
        if rule.figure not in current or len(values) < settings.warmup:
            continue
        median = statistics.median(values)
        spread = max(1.4826 * statistics.median(abs(v - median) for v in values), rule.floor)
        z = (current[rule.figure] - median) / spread
        verdict.medians[rule.figure] = median
        verdict.scores[rule.figure] = z
        far = z >= settings.sensitivity if rule.up else z <= -settings.sensitivity
        if far and _past_the_bar(rule.figure, current[rule.figure], median, settings):
            verdict.reasons.append(_say(rule, current[rule.figure], median))
    verdict.flagged = bool(verdict.reasons)
    return verdict


def _past_the_bar(figure: str, value: float, median: float,
                  settings: AnomalySettings) -> bool:
    """The absolute condition beside the statistical one (no alarm for a steady history's
    small wobble)."""
    if figure in ("changed", "removed"):
        return value >= settings.changed
    if figure == "size":  # log10 of bytes: below `shrink` of the usual size
        return 10 ** (value - median) < settings.shrink
    if figure == "added":
        return value >= max(4 * median, 0.5)  # a chunk's worth of variation is normal
    if figure == "packed":
        return value >= 0.9
    return value >= 0.5  # entropy: most sampled files look encrypted


def _say(rule: _Rule, value: float, median: float) -> str:
    def pct(share: float) -> str:
        return f"{share * 100:.0f}%"

    if rule.figure == "size":
        return rule.reason.format(ratio=f"{10 ** (value - median) * 100:.1f}%")
    return rule.reason.format(pct=pct(value), usual=pct(median))
