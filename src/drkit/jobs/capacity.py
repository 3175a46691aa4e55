"""Capacity measurement: every check measures its repository's stored size with ``restic
stats --mode raw-data`` (the cheap mode: the index only, no tree is walked) into its record's
evidence (``stats``). :mod:`drkit.catalog.capacity` forecasts from those records."""

from __future__ import annotations

from typing import Any

from drkit.errors import DrkitError, describe
from drkit.restic.runner import ResticRepository, run_restic
from drkit.supervise import NO_LIMITS, Limits


def measure(repo: ResticRepository, *, action: str, limits: Limits = NO_LIMITS
            ) -> dict[str, Any]:
    """The repository's stored size (``restic stats --mode raw-data``); a failure is noted,
    never raised (capacity is measured beside the check, not part of its verdict)."""
    try:
        result = run_restic(repo, ("stats", "--mode", "raw-data", "--json"),
                            action=f"{action} (stats)", limits=limits)
    except DrkitError as exc:
        return {"error": describe(exc)}
    data = next((m for m in reversed(result.messages) if "total_size" in m), None)
    if data is None:
        return {"error": "restic stats printed no sizes"}
    return {key: data[key] for key in ("total_size", "total_uncompressed_size",
                                       "total_blob_count", "snapshots_count") if key in data}
