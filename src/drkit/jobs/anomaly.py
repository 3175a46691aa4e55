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
NO_PARENT_ADDED = 0.25  # new data share below which "all files new" is a path change
MIN_SAMPLED = 4  # fewer sampled files say nothing (one new .zip is not ransomware)


def figures_of(summary: dict[str, Any], previous: dict[str, Any] | None,
               entropy: dict[str, Any] | None = None, *, min_sampled: int = MIN_SAMPLED
               ) -> dict[str, float]:
    """The figures of one run (its restic summary, the previous run's, its entropy sample:
    counted from ``min_sampled`` files; a baseline run's few files still say what is usual)."""
    def count(data: dict[str, Any] | None, key: str) -> int:
        value = (data or {}).get(key)
        return int(value) if isinstance(value, int | float) and value > 0 else 0

    changed, unmodified = count(summary, "files_changed"), count(summary, "files_unmodified")
    new, before = count(summary, "files_new"), count(previous, "total_files_processed")
    added = count(summary, "data_added")
    out = {
        "size": math.log10(count(summary, "total_bytes_processed") + 1),
        "added": added / max(1, count(summary, "total_bytes_processed")),
        "added_bytes": added,
    }
    # Every file new while the previous run had files, and the data mostly known: restic
    # compared with no parent (the paths changed), nothing to say about changes or
    # removals. Every file new *and* the data new is every file renamed and rewritten.
    no_parent = new and not changed and not unmodified and out["added"] < NO_PARENT_ADDED
    if previous is not None and not no_parent:
        removed = max(0, before - changed - unmodified)
        out.update({"changed": changed / max(1, changed + unmodified),
                    "removed": removed / max(1, before),
                    "changed_files": changed, "removed_files": removed})
    packed = summary.get("data_added_packed")
    if isinstance(packed, int | float) and added >= MIB:
        out["packed"] = float(packed) / added
    share = (entropy or {}).get("encrypted_share")
    if isinstance(share, int | float) and int((entropy or {}).get("sampled") or 0) >= \
            min_sampled:
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
        baseline.append(figures_of(run.summary, before, run.entropy, min_sampled=1))
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
        if far and _past_the_bar(rule.figure, current, verdict.medians, settings):
            verdict.reasons.append(_say(rule, current[rule.figure], median))
    partial = _partial(current, verdict, settings)
    if partial and not verdict.reasons:
        verdict.reasons.append(partial)
    verdict.flagged = bool(verdict.reasons)
    return verdict


def _partial(current: dict[str, float], verdict: Verdict, settings: AnomalySettings
             ) -> str | None:
    """Part of the tree encrypted (in place, or renamed: the originals gone, new files in
    their stead): neither "most files" nor "most data" alone, but both out together (a fifth
    of the files changed or gone, far out, *and* four times the usual share of new data, at
    least a fifth of what was read)."""
    scores, medians = verdict.scores, verdict.medians
    if "added" not in scores or current["added"] < max(4 * medians["added"], 0.2) \
            or current.get("added_bytes", 0) < MIB:
        return None
    for figure, what in (("changed", "changed"), ("removed", "were replaced")):
        if scores.get(figure, 0.0) >= settings.sensitivity and current[figure] >= 0.2 \
                and current.get(f"{figure}_files", 0) >= settings.min_files:
            return (f"{current[figure] * 100:.0f}% of the files {what} and "
                    f"{current['added'] * 100:.0f}% of the data read was new (usually "
                    f"{medians[figure] * 100:.0f}% and {medians['added'] * 100:.0f}%): part "
                    "of the tree rewritten?")
    return None


def _past_the_bar(figure: str, current: dict[str, float], medians: dict[str, float],
                  settings: AnomalySettings) -> bool:
    """The absolute condition beside the statistical one (no alarm for a steady history's
    small wobble, nor for a handful of files)."""
    value, median = current[figure], medians[figure]
    if figure in ("changed", "removed"):
        return value >= settings.changed and \
            current.get(f"{figure}_files", 0) >= settings.min_files
    if figure == "size":  # log10 of bytes: below `shrink` of the usual size
        return 10 ** (value - median) < settings.shrink
    if figure == "added":  # a chunk's worth of variation is normal; so are a few KiB
        return value >= max(4 * median, 0.5) and current.get("added_bytes", 0) >= MIB
    if figure == "packed":  # only beside a jump of new data (one new video is no attack)
        return value >= 0.9 and "added" in medians and \
            current["added"] >= max(2 * medians["added"], 0.1)
    return value >= 0.5  # entropy: most sampled files look encrypted


def _say(rule: _Rule, value: float, median: float) -> str:
    def pct(share: float) -> str:
        return f"{share * 100:.0f}%"

    if rule.figure == "size":
        return rule.reason.format(ratio=f"{10 ** (value - median) * 100:.1f}%")
    return rule.reason.format(pct=pct(value), usual=pct(median))
