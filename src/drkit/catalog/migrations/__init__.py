"""Alembic migrations of the catalog schema (applied automatically by ``open_catalog``)."""
