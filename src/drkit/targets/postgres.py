"""``kind: postgres`` — ``pg_dump -Fc`` streamed straight into restic (no dump on local disk).

The DSN reaches pg_dump as libpq environment variables, never on its command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from drkit.config.models import TargetConfig
from drkit.config.secrets import SecretRef
from drkit.targets.base import BackupSource, StreamSource, TargetError
from drkit.targets.dsn import parse_dsn, pg_env


class PostgresTarget(TargetConfig):
    """One PostgreSQL database, dumped in pg_dump's custom format."""

    kind: Literal["postgres"]
    dsn: SecretRef
    pg_dump_binary: str = "pg_dump"
    schemas: list[str] = Field(default_factory=list)
    exclude_schemas: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)


def pg_dump_args(target: PostgresTarget) -> list[str]:
    """pg_dump's argv (no connection details: those go in the environment)."""
    argv = [target.pg_dump_binary, "--format=custom", "--no-password"]
    for flag, values in (("--schema", target.schemas), ("--exclude-schema",
                                                         target.exclude_schemas),
                         ("--table", target.tables), ("--exclude-table", target.exclude_tables)):
        argv += [f"{flag}={value}" for value in values]
    return argv


class PostgresKind:
    name: str = "postgres"
    config_model: type[TargetConfig] = PostgresTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        """A stream of ``pg_dump -Fc``, stored as ``<database>.dump``."""
        assert isinstance(config, PostgresTarget)
        dsn = parse_dsn(config.dsn.resolve(), what=f"target '{name}'")
        if not dsn.database:
            raise TargetError(f"target '{name}': the DSN names no database")
        yield BackupSource(
            stream=StreamSource(argv=pg_dump_args(config), filename=f"{dsn.database}.dump",
                                env=pg_env(dsn), secrets=[dsn.password or ""],
                                what=f"pg_dump of {dsn.describe()}"),
            description=f"postgres {dsn.describe()}",
            evidence={"database": dsn.describe()},
        )
