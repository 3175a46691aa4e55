"""The catalog: an append-only, hash-chained record of every run (SQLAlchemy 2)."""

from drkit.catalog.store import Catalog, NewRecord, open_catalog

__all__ = ["Catalog", "NewRecord", "open_catalog"]
