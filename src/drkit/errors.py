"""The error types every layer raises; the CLI turns them into one message and an exit code.

Exit codes follow the spec: 1 when something ran and failed, 2 when the request itself is wrong.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2


class DrkitError(Exception):
    """A failure with a message fit for the user; ``exit_code`` says how the CLI exits."""

    exit_code = EXIT_FAILED
    # Whether trying again later may succeed (storage unreachable, repository locked): the
    # Prefect tasks retry only these, never a wrong password or a bad config.
    transient = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def describe(exc: DrkitError) -> str:
    """The error's message with its hint, as one line for a run's record."""
    return f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message


class BadRequestError(DrkitError):
    """The request is wrong: unknown target, bad flag, bad config. Nothing ran."""

    exit_code = EXIT_BAD_REQUEST


class ConfigError(BadRequestError):
    """The configuration is invalid; ``problems`` lists every error, each already located."""

    def __init__(self, problems: list[str]) -> None:
        count = len(problems)
        noun = "error" if count == 1 else "errors"
        super().__init__(f"configuration has {count} {noun}:\n" + "\n".join(problems))
        self.problems = problems


class SecretError(DrkitError):
    """A secret reference could not be resolved (variable unset, file unreadable)."""
