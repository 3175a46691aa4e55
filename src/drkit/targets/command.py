"""``kind: command`` — any command's stdout, stored as one file (for tools drkit does not know)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from drkit.config.models import EnvName, TargetConfig
from drkit.supervise import ChildSpec, base_env
from drkit.targets.base import BackupSource, StreamSource


class CommandTarget(TargetConfig):
    """``command`` (an argv list) whose output is the backup, stored as ``filename``.

    It runs with a minimal environment (PATH, HOME, locale...): none of drkit's secrets.
    ``env`` lists the variables of drkit's environment it needs as well.
    """

    kind: Literal["command"]
    command: list[str] = Field(min_length=1)
    filename: str = Field(default="", pattern=r"^[^/]*$")
    env: list[EnvName] = Field(default_factory=list)


class CommandKind:
    name: str = "command"
    config_model: type[TargetConfig] = CommandTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        assert isinstance(config, CommandTarget)
        producer = ChildSpec(argv=config.command, what=f"command {config.command[0]}",
                             env=base_env(config.env))
        yield BackupSource(
            stream=StreamSource(producer=producer, filename=config.filename or f"{name}.out"),
            description="command " + " ".join(config.command))
