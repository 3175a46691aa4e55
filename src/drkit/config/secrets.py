"""Secret references: ``{env: NAME}`` or ``{file: PATH}``, never an inline value.

A secret is resolved only when it is about to be used, so that ``drkit validate`` works in a
shell that does not hold production secrets, and the value never lands in a model dump.
Every value resolved in this process is remembered, so that logs, the catalog and reports can
mask it wherever it turns up (a check that prints its environment, an error echoing a DSN):
a second line of defence behind giving each child only the secrets it needs.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from drkit.errors import SecretError
from drkit.supervise import MIN_SECRET


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
            remember(value)
            return value
        assert self.file is not None
        try:
            text = self.file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {self.file}: {exc.strerror}") from None
        value = text.rstrip("\r\n")
        if not value:
            raise SecretError(f"secret file {self.file} is empty")
        remember(value)
        return value


_known: set[str] = set()
_known_lock = threading.Lock()
_EMBEDDED = (re.compile(r"://[^/@:\s]*:([^/@\s]+)@"),                  # URL user-info
             re.compile(r"(?:^|\s)password\s*=\s*'((?:[^'\\]|\\.)*)'"),  # libpq, quoted
             re.compile(r"(?:^|\s)password\s*=\s*([^'\s]\S*)"))           # libpq, bare
_AMBIENT = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RESTIC_PASSWORD",
            "B2_ACCOUNT_KEY", "AZURE_ACCOUNT_KEY", "AZURE_ACCOUNT_SAS", "OS_PASSWORD")
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def remember(value: str) -> None:
    """Remember ``value`` (and a password embedded in it, as in a DSN) as secret."""
    found = {value}
    for pattern in _EMBEDDED:
        for match in pattern.finditer(value):
            part = match.group(1)
            found.update({part, unquote(part), re.sub(r"\\(.)", r"\1", part)})
    with _known_lock:
        _known.update(item for item in found if len(item) >= MIN_SECRET)


def known_secrets() -> list[str]:
    """Every secret value resolved or remembered in this process, longest first."""
    with _known_lock:
        return sorted(_known, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, "***")
    return text


def collect_secrets(*models: Any) -> list[str]:
    """Resolve every :class:`SecretRef` inside ``models`` that can be resolved here (the rest
    are skipped) and return all known secrets: what must never reach evidence or logs."""
    for ref in _refs(models):
        try:
            ref.resolve()
        except SecretError:
            continue
    for name in _AMBIENT:  # credentials restic or boto3 may take from the environment
        if os.environ.get(name):
            remember(os.environ[name])
    for name in _PROXIES:  # children get the proxies; a password in one is a secret too
        value = os.environ.get(name)
        if value and "@" in value:
            for match in _EMBEDDED[0].finditer(value):
                remember(unquote(match.group(1)))
                remember(match.group(1))
    return known_secrets()


def _refs(value: Any) -> Iterable[SecretRef]:
    if isinstance(value, SecretRef):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _refs(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _refs(item)
