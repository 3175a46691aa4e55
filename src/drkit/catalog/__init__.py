"""The catalog: an append-only, hash-chained record of every run (SQLAlchemy 2).

Import the submodules you need; this package imports nothing so that the light ones
(``chain``, ``inflight``) do not pull SQLAlchemy in.
"""
