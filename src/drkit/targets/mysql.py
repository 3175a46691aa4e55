"""``kind: mysql`` — ``mariadb-dump``/``mysqldump --single-transaction`` streamed into restic.

The password reaches the dump tool in a private options file, never on its command line.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from drkit.config.models import TargetConfig
from drkit.config.secrets import SecretRef
from drkit.supervise import ChildSpec
from drkit.targets.base import BackupSource, StreamSource
from drkit.targets.dsn import mysql_defaults_file, target_dsn


class MysqlTarget(TargetConfig):
    """One MySQL or MariaDB database (``dsn: mysql://user:password@host:port/database``)."""

    kind: Literal["mysql"]
    dsn: SecretRef
    dump_binary: str | None = None  # default: mariadb-dump, else mysqldump


def dump_binary(config: MysqlTarget) -> str:
    if config.dump_binary:
        return config.dump_binary
    return "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"


class MysqlKind:
    name: str = "mysql"
    config_model: type[TargetConfig] = MysqlTarget

    @contextmanager
    def prepare(self, name: str, config: TargetConfig, staging: Path) -> Iterator[BackupSource]:
        """A stream of a consistent SQL dump, stored as ``<database>.sql``."""
        assert isinstance(config, MysqlTarget)
        dsn, database = target_dsn(name, config.dsn.resolve())
        options = mysql_defaults_file(dsn, staging)
        # --skip-dump-date: an unchanged database dumps to the same bytes (deduplicated).
        argv = [dump_binary(config), f"--defaults-file={options}",
                "--single-transaction", "--routines", "--triggers", "--events",
                "--hex-blob", "--skip-dump-date", "--", database]
        producer = ChildSpec(argv=argv, what=f"dump of {dsn.describe()}",
                             secrets=[dsn.password or ""])
        try:
            yield BackupSource(
                stream=StreamSource(producer=producer, filename=f"{database}.sql"),
                description=f"mysql {dsn.describe()}", evidence={"database": dsn.describe()})
        finally:
            options.unlink(missing_ok=True)
