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
