"""Alembic environment: drkit always hands over an open connection (see catalog.migrate)."""

from __future__ import annotations

from alembic import context

from drkit.catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the alembic CLI
    raise SystemExit("drkit's migrations run through drkit (open_catalog), not the alembic CLI")

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
