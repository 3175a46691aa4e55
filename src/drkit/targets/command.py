"""``kind: command`` — any command's stdout, stored as one file (for tools drkit does not know)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from drkit.config.models import TargetConfig
from drkit.targets.base import BackupSource, StreamSource


class CommandTarget(TargetConfig):
    """``command`` (an argv list) whose output is the backup, stored as ``filename``."""

    kind: Literal["command"]
    command: list[str] = Field(min_length=1)
    filename: str = Field(default="", pattern=r"^[^/]*$")


class CommandKind:
    name: str = "command"
    config_model: type[TargetConfig] = CommandTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        assert isinstance(config, CommandTarget)
        yield BackupSource(
            stream=StreamSource(argv=config.command, filename=config.filename or f"{name}.out",
                                what=f"command {config.command[0]}"),
            description="command " + " ".join(config.command))
