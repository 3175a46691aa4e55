"""Helpers shared by jobs: resolving names from the config, building restic handles."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from drkit.config.models import Config
from drkit.errors import BadRequestError
from drkit.restic.runner import ResticRepository


def select_names(requested: Sequence[str], declared: Iterable[str], what: str) -> list[str]:
    """``requested`` names (all ``declared`` when empty), checked; unknown ones are a bad request.

    Raises :class:`BadRequestError` naming every unknown name, with a close match if any.
    """
    known = list(declared)
    if not requested:
        return known
    problems = []
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(f"unknown {what} {name!r}" + (f" (did you mean {close[0]!r}?)"
                                                          if close else ""))
    if problems:
        listing = ", ".join(known) if known else "none declared"
        raise BadRequestError("; ".join(problems) + f"; declared {what}s: {listing}")
    return list(dict.fromkeys(requested))


def restic_repository(config: Config, name: str) -> ResticRepository:
    """The restic handle for repository ``name`` of ``config``."""
    return ResticRepository(name=name, config=config.repositories[name],
                            binary=config.restic_binary)
