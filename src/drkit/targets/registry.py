"""The registry of target kinds. A new kind is one module here plus one line below."""

from __future__ import annotations

from drkit.errors import BadRequestError
from drkit.targets.base import TargetKind
from drkit.targets.command import CommandKind
from drkit.targets.files import FilesKind
from drkit.targets.mysql import MysqlKind
from drkit.targets.postgres import PostgresKind
from drkit.targets.sqlite import SqliteKind

_KINDS: dict[str, TargetKind] = {
    kind.name: kind
    for kind in (FilesKind(), SqliteKind(), PostgresKind(), MysqlKind(), CommandKind())
}


def all_kinds() -> list[TargetKind]:
    """Every registered kind, in registration order."""
    return list(_KINDS.values())


def kind_names() -> list[str]:
    return list(_KINDS)


def get(name: str) -> TargetKind:
    """The kind called ``name``; :class:`BadRequestError` if none is."""
    try:
        return _KINDS[name]
    except KeyError:
        raise BadRequestError(f"unknown target kind {name!r}") from None
