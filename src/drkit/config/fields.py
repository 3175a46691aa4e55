"""The field types every config model uses: durations (``15m``), sizes (``500GiB``),
shares (``60%``), names, cron expressions, paths relative to the config file, and the
``Strict`` base (unknown keys are errors, instances immutable)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"


def _check_cron(value: str) -> str:
    from croniter import croniter  # lazy: only validation needs it

    if not croniter.is_valid(value):
        raise ValueError(f"not a valid cron expression: {value!r}")
    return value


CronExpr = Annotated[str, AfterValidator(_check_cron)]

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhdw]))+$")


def parse_duration(value: str | int | float) -> float:
    """``"15m"`` -> 900.0; ``"1h30m"`` -> 5400.0; a bare number is seconds.

    Raises ValueError naming the accepted forms.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value).strip().replace(" ", "")
    if not text or not _DURATION.match(text):
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 15m, 1h, 1h30m, 1d)")
    return float(sum(float(n) * _DURATION_UNITS[u]
                     for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)))


def _to_seconds(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError("a duration is a string like 15m or a number of seconds")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_to_seconds)]

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40, "p": 10**15, "pb": 10**15, "pib": 2**50}


def parse_size(value: str | int) -> int:
    """``"500GiB"`` -> 536870912000; ``"2TB"`` -> 2000000000000; a bare number is bytes.

    Raises ValueError naming the accepted forms.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("a size must be larger than zero")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"not a size: {value!r} (write e.g. 500GiB, 2TB, 750MB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _to_bytes(value: object) -> int:
    if not isinstance(value, str | int):
        raise ValueError("a size is a string like 500GiB or a number of bytes")
    return parse_size(value)


Size = Annotated[int, BeforeValidator(_to_bytes)]


def _to_share(value: object) -> float:
    """``"60%"`` or ``0.6`` -> 0.6 (a share between 0 and 1)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"not a percentage: {value!r}") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError("a share is a percentage (60%) or a number between 0 and 1")
    return float(value)


Share = Annotated[float, BeforeValidator(_to_share)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Make ``value`` absolute against the config file's directory (from the validation context)."""
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if not value.is_absolute() and base is not None:
        # normpath, not resolve(): "config/../data" reads better, symlinks stay as written.
        return Path(os.path.normpath(Path(base) / value))
    return value


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("a time limit must be longer than zero")
    return value


Limit = Annotated[Duration, AfterValidator(_positive)]
