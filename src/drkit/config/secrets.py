"""Secret references: ``{env: NAME}`` or ``{file: PATH}``, never an inline value.

A secret is resolved only when it is about to be used, so that ``drkit validate`` works in a
shell that does not hold production secrets, and the value never lands in a model dump.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from drkit.errors import SecretError


class SecretRef(BaseModel):
    """Where a secret lives. Exactly one of ``env`` (variable name) or ``file`` (path)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _reject_inline(cls, value: Any) -> Any:
        if isinstance(value, str | int | float):
            # Never echo the value: it is probably the secret itself.
            raise ValueError("inline secrets are not allowed; write {env: NAME} or {file: PATH}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    @field_validator("file")
    @classmethod
    def _absolute(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is not None and not value.is_absolute() and base is not None:
            return Path(os.path.normpath(Path(base) / value))
        return value

    def describe(self) -> str:
        """Where the secret comes from, safe to print (``env:NAME`` or ``file:PATH``)."""
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"

    def resolve(self) -> str:
        """Return the secret's value; raise :class:`SecretError` naming the source if missing.

        A trailing newline in a file is dropped (the usual ``echo secret > file``).
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None or value == "":
                raise SecretError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            text = self.file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {self.file}: {exc.strerror}") from None
        value = text.rstrip("\r\n")
        if not value:
            raise SecretError(f"secret file {self.file} is empty")
        return value
