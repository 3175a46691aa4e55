"""Bring a catalog's schema to the current revision with Alembic, automatically and safely.

``open_catalog`` calls :func:`ensure_schema` on every open. The common case (already current)
costs one small query and never imports Alembic. Otherwise the upgrade runs in one
transaction that first takes the catalog's migration lock (SQLite's write lock via ``BEGIN
IMMEDIATE``; a PostgreSQL advisory lock), so hosts starting together upgrade once. A catalog
created by drkit before migrations existed (tables, no ``alembic_version``) is stamped as the
first revision, then upgraded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("drkit.catalog")

HEAD_REVISION = "0005"  # keep equal to the newest file in migrations/versions (tested)
SCRIPT_LOCATION = "drkit.catalog:migrations"
_PG_LOCK_KEY = 0x64726B6974  # "drkit"


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in ``alembic_version``, or None for a new or pre-Alembic catalog."""
    try:
        with connection.begin_nested():
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the catalog schema to :data:`HEAD_REVISION`."""
    # A read transaction: opening a current catalog never takes SQLite's write lock.
    with engine.connect() as connection:
        connection.execution_options(drkit_readonly=True)
        revision = current_revision(connection)
        connection.rollback()
    if revision == HEAD_REVISION:
        return
    _upgrade(engine)


def alembic_config(connection: Connection) -> Config:
    """An Alembic config running drkit's migrations on ``connection``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def _upgrade(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        revision = current_revision(connection)
        if revision == HEAD_REVISION:  # another process upgraded while we waited
            return
        config = alembic_config(connection)
        if revision is None and inspect(connection).has_table("records"):
            log.info("catalog predates migrations; stamping it as revision 0001")
            command.stamp(config, "0001")
            revision = "0001"
        log.info("upgrading the catalog schema from %s to %s", revision or "empty",
                 HEAD_REVISION)
        command.upgrade(config, "head")
