"""``kind: postgres`` — ``pg_dump -Fc`` streamed straight into restic (no dump on local disk).

The DSN reaches pg_dump as libpq environment variables, never on its command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from drkit.config.models import Name, TargetConfig, Timeouts
from drkit.config.secrets import SecretRef
from drkit.supervise import ChildSpec
from drkit.targets.base import BackupSource, StreamSource
from drkit.targets.dsn import pg_env, target_dsn
from drkit.targets.fingerprints import pg_snapshot, recorded


class PostgresTarget(TargetConfig):
    """One PostgreSQL database, dumped in pg_dump's custom format."""

    kind: Literal["postgres"]
    dsn: SecretRef
    pg_dump_binary: str = "pg_dump"
    schemas: list[str] = Field(default_factory=list)
    exclude_schemas: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)
    # Named queries run in the very snapshot pg_dump dumps; their values are recorded with
    # the backup and compared by a drill's `fingerprints: true` check.
    fingerprints: dict[Name, str] = Field(default_factory=dict)


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
        """A stream of ``pg_dump -Fc``, stored as ``<database>.dump``. With fingerprints, one
        exported snapshot for the queries and every repository's pg_dump."""
        assert isinstance(config, PostgresTarget)
        dsn, database = target_dsn(name, config.dsn.resolve())
        argv = pg_dump_args(config)
        evidence: dict[str, object] = {"database": dsn.describe()}
        with ExitStack() as stack:
            if config.fingerprints:
                limit = (config.timeout or Timeouts().backup) * len(config.repositories)
                snapshot, values = stack.enter_context(
                    pg_snapshot(dsn, config.fingerprints, limit=limit))
                argv.append(f"--snapshot={snapshot}")
                evidence["fingerprints"] = recorded(config.fingerprints, values)
            producer = ChildSpec(argv=argv, what=f"pg_dump of {dsn.describe()}",
                                 env=pg_env(dsn), secrets=[dsn.password or ""])
            yield BackupSource(
                stream=StreamSource(producer=producer, filename=f"{database}.dump"),
                description=f"postgres {dsn.describe()}", evidence=evidence)
