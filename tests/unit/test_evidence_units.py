"""The pieces evidence rests on: the fast canonical text ``audit verify`` hashes is byte for
byte the canonical form; the bundle's stdlib Ed25519 agrees with OpenSSL's; verify reads an
old catalog without migrating it."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from drkit.catalog import migrate
from drkit.catalog.audit import verify_catalog
from drkit.catalog.chain import FIELDS, canonical_record, fast_canonical
from drkit.signing import Signer, generate

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "drkit" / "templates"


def random_text(rng: random.Random) -> str | None:
    if rng.random() < 0.2:
        return None
    alphabet = 'ab"\\\n\t\x00\x1f\u00e9\u2028\U0001f600/<>&\'{}[]:,'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def test_fast_canonical_is_the_canonical_form() -> None:
    rng = random.Random(7)
    for index in range(2000):
        fmt = 1 + index % 2
        fields: dict[str, Any] = {name: random_text(rng) for name in FIELDS[fmt]}
        fields["seq"] = rng.randrange(1, 10 ** 9)
        when = datetime(2026, 1, 1) + timedelta(microseconds=rng.randrange(10 ** 14))
        fields["started_at"] = fields["finished_at"] = when
        if fmt == 2:
            fields["format"] = 2
        assert fast_canonical(fmt, fields) == canonical_record(fields)


def test_the_bundles_own_ed25519_agrees_with_openssl() -> None:
    spec = importlib.util.spec_from_file_location("bundle_verify",
                                                  TEMPLATES / "bundle_verify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    signer = Signer(generate()[0])
    for message in (b"", b"drkit", bytes(range(256)) * 4):
        signature = base64.b64decode(signer.sign(message))
        assert module.ed25519_verify(signer.public, message, signature)
        assert not module.ed25519_verify(signer.public, message + b"!", signature)
        flipped = bytearray(signature)
        flipped[40] ^= 0x10
        assert not module.ed25519_verify(signer.public, message, bytes(flipped))
    other = Signer(generate()[0])
    assert not module.ed25519_verify(other.public, b"drkit",
                                     base64.b64decode(signer.sign(b"drkit")))


def test_verify_reads_an_old_catalog_without_migrating_it(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(migrate.alembic_config(connection), "0003")
        connection.execute(text("INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, :h)"),
                           {"h": "0" * 64})
    before = hashlib.sha256((tmp_path / "old.db").read_bytes()).hexdigest()
    from drkit.catalog.store import open_readonly

    result = verify_catalog(open_readonly(url), public_key=None, anchors=[])
    assert result.intact and result.records == 0
    with engine.connect() as connection:
        assert migrate.current_revision(connection) == "0003"
    assert hashlib.sha256((tmp_path / "old.db").read_bytes()).hexdigest() == before


def test_the_database_builds_the_canonical_text(catalog_url: str) -> None:
    """``audit verify``'s fast path: the text SQLite (``json_object``) or PostgreSQL
    (``to_json``) builds is byte for byte the canonical form, on strings with quotes,
    backslashes, control characters, U+2028 and emoji (a mismatch would only cost a slow
    re-check, but a fast path that is never taken would be no fast path)."""
    from drkit.catalog.chain import sql_canonical
    from drkit.catalog.inflight import utcnow
    from drkit.catalog.store import NewRecord, open_catalog
    from drkit.catalog.walk import stream_rows

    catalog = open_catalog(catalog_url)
    rng = random.Random(11)
    catalog.config_hash = None  # no config record: records only
    now = utcnow()
    for index in range(300):
        catalog.append(NewRecord(
            kind="backup", status="succeeded", target=random_text(rng) or "t",
            repository=random_text(rng), plan=random_text(rng),
            started_at=now + timedelta(microseconds=rng.randrange(10 ** 9)),
            finished_at=now + timedelta(seconds=index), error=random_text(rng),
            evidence={"text": random_text(rng), "n": index, "f": index / 7}))
    dialect = catalog.engine.dialect.name
    rows = list(stream_rows(catalog.engine, ["hash", sql_canonical(dialect, 2)]))
    assert len(rows) == 300 + 0
    assert all(hashlib.sha256(text.encode()).hexdigest() == stored for stored, text in rows)
