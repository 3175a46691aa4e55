"""Snapshot identity, defined once: which snapshots are whose.

Every snapshot drkit makes carries the tags ``drkit`` and ``drkit-target=NAME`` and the
configured ``host:`` identity (restic ``--host``, default: the machine's hostname). Selection
(drills, ``snapshots``), retention (``forget``, grouped by host and tags) and the catalog's
records all use host + target, so two deployments sharing one repository and one target name
never see, prune or drill each other's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TAG = "drkit"
_TARGET_PREFIX = "drkit-target="


def safety_tags(name: str) -> tuple[str, str]:
    """The tags of a safety copy ``drkit recover`` takes of what it is about to overwrite
    for target ``name``: never a target's tag, so retention, drills and restores never take
    it for a backup."""
    return ("drkit-safety", f"drkit-safety={name}")


def target_tag(name: str) -> str:
    """The restic tag that marks a snapshot as target ``name``'s."""
    return f"{_TARGET_PREFIX}{name}"


def target_of(tags: Iterable[str]) -> str | None:
    """The target a snapshot's tags name, if any."""
    return next((tag.removeprefix(_TARGET_PREFIX) for tag in tags
                 if tag.startswith(_TARGET_PREFIX)), None)


@dataclass(frozen=True)
class SnapshotIdentity:
    """Whose snapshots: one host's, of one target."""

    host: str
    target: str

    @property
    def tags(self) -> tuple[str, str]:
        return (TAG, target_tag(self.target))

    def owns(self, hostname: str, tags: Iterable[str]) -> bool:
        """Whether a snapshot made by ``hostname`` with ``tags`` is this identity's."""
        return hostname == self.host and target_tag(self.target) in set(tags)

    def describe(self) -> str:
        return f"target '{self.target}' of host '{self.host}'"


def os_actor() -> str:
    """Who runs drkit, for the records: the effective OS user by uid (not ``$USER``, which
    anyone can set), with the user who ran ``sudo`` when there is one."""
    import os
    import pwd

    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    via = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {via})" if via and uid == 0 else name


_ACTOR_OVERRIDE: list[str] = []  # set while a Prefect flow run works (see drkit.flows)


def current_actor() -> str:
    """Who the records of this process name as actor: the Prefect flow run (with its
    deployment) while one runs, else the OS user (:func:`os_actor`)."""
    return _ACTOR_OVERRIDE[-1] if _ACTOR_OVERRIDE else os_actor()


def push_actor(actor: str) -> None:
    """Make ``actor`` the current actor until :func:`pop_actor`."""
    _ACTOR_OVERRIDE.append(actor)


def pop_actor() -> None:
    if _ACTOR_OVERRIDE:
        _ACTOR_OVERRIDE.pop()
