"""Formatting sizes and durations for people."""

from __future__ import annotations


def human_bytes(count: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_age(seconds: float | None) -> str:
    """``5400`` -> ``1h 30m``; None -> ``never``."""
    if seconds is None:
        return "never"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def human_duration(seconds: float | None) -> str:
    """``5400`` -> ``1h 30m``, ``2.5`` -> ``2.5s``; None -> ``-``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return human_age(seconds)
