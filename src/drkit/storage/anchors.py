"""Checkpoints anchored in the evidence bucket, under object lock.

Each checkpoint is one object, ``PREFIX checkpoints/<seq, 12 digits>-<head hash, 16>.json``,
holding its anchor line (payload and signature), put with an object lock (``lock_mode``,
retained ``retain_days``): nobody, drkit included, can delete or overwrite that version before
then (COMPLIANCE: not even the account's root). The lock is read back from the stored object,
not assumed. ``audit verify`` lists the objects and reads each; a local cache keyed by the
object's ETag (the MD5 of its body for a plain upload) saves reading again what it read before,
and cannot be used to swap a body: a cached body counts only if its MD5 is the listed ETag.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drkit.catalog.checkpoints import Anchor
from drkit.config.models import Config, S3Output
from drkit.storage.evidence import _client
from drkit.storage.posture import _storage_errors

log = logging.getLogger("drkit.storage")
FOLDER = "checkpoints/"


@dataclass(frozen=True)
class Anchored:
    """Where a checkpoint went and the lock the stored object carries."""

    uri: str
    version_id: str | None
    lock_mode: str | None
    retain_until: str | None

    def describe(self) -> str:
        lock = f"{self.lock_mode} until {self.retain_until}" if self.lock_mode else "NOT LOCKED"
        return f"{self.uri} ({lock})"


def _key(output: S3Output, anchor: Anchor) -> str:
    data = anchor.data
    return f"{output.prefix}{FOLDER}{int(data['seq']):012d}-{str(data['head_hash'])[:16]}.json"


def upload_anchor(config: Config, anchor: Anchor, *, now: datetime | None = None) -> Anchored:
    """Put ``anchor`` into the evidence bucket under object lock and read the lock back.
    Raises :class:`drkit.storage.s3.StorageError` on any failure."""
    output = config.evidence.bucket
    assert output is not None
    client = _client(output, config)
    key = _key(output, anchor)
    until = ((now or datetime.now(UTC)) + timedelta(days=config.evidence.retain_days)
             ).replace(microsecond=0)
    body = (anchor.line() + "\n").encode("utf-8")
    with _storage_errors(output.bucket, "anchor the checkpoint"):
        answer = client.put_object(
            Bucket=output.bucket, Key=key, Body=body, ContentType="application/json",
            ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
            ObjectLockMode=config.evidence.lock_mode, ObjectLockRetainUntilDate=until)
        stored = client.head_object(Bucket=output.bucket, Key=key,
                                    **({"VersionId": answer["VersionId"]}
                                       if answer.get("VersionId") else {}))
    retain = stored.get("ObjectLockRetainUntilDate")
    return Anchored(uri=f"s3://{output.bucket}/{key}", version_id=answer.get("VersionId"),
                    lock_mode=stored.get("ObjectLockMode"),
                    retain_until=retain.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    if isinstance(retain, datetime) else None)


def read_anchors(config: Config, cache: Path) -> list[Anchor | str | tuple[str, str]]:
    """Every version of every anchor in the evidence bucket, oldest first, and each problem
    found (kind, detail): a delete marker over an anchor (hiding it: its locked versions are
    still read), a key with more than one version (one was put over the locked one), a
    version not under object lock (mode and retain-until read from the stored version).
    Raises :class:`drkit.storage.s3.StorageError` when the bucket cannot be listed or read."""
    from datetime import UTC, datetime

    output = config.evidence.bucket
    assert output is not None
    client = _client(output, config)
    found: list[Anchor | str | tuple[str, str]] = []
    now = datetime.now(UTC)
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        log.debug("anchor cache unavailable: %s", exc)
    with _storage_errors(output.bucket, "read the anchored checkpoints"):
        pages = client.get_paginator("list_object_versions").paginate(
            Bucket=output.bucket, Prefix=output.prefix + FOLDER)
        versions: dict[str, int] = {}
        for page in pages:
            for marker in page.get("DeleteMarkers", []):
                found.append(("anchor_hidden", f"s3://{output.bucket}/{marker['Key']}: a delete "
                              "marker hides the anchor (its locked versions are still read)"))
            for item in page.get("Versions", []):
                key, version = item["Key"], str(item.get("VersionId") or "null")
                versions[key] = versions.get(key, 0) + 1
                where = f"s3://{output.bucket}/{key} (version {version})"
                etag = str(item.get("ETag", "")).strip('"')
                body, lock = _cached(cache, key, version, etag)
                if body is None or lock is None:
                    extra = {"VersionId": version} if version != "null" else {}
                    body = client.get_object(Bucket=output.bucket, Key=key, **extra)[
                        "Body"].read()
                    head = client.head_object(Bucket=output.bucket, Key=key, **extra)
                    until = head.get("ObjectLockRetainUntilDate")
                    lock = {"mode": head.get("ObjectLockMode"),
                            "until": until.astimezone(UTC).isoformat()
                            if isinstance(until, datetime) else None}
                    if lock["mode"] == "COMPLIANCE":  # cannot be shortened: kept as read
                        _keep(cache, key, version, body, lock)
                if lock.get("mode") not in ("COMPLIANCE", "GOVERNANCE") or not lock.get(
                        "until") or datetime.fromisoformat(str(lock["until"])) < now:
                    found.append(("anchor_unlocked", f"{where} is not under object lock "
                                  f"(mode {lock.get('mode')}, until {lock.get('until')})"))
                found.append(_parse(body, where))
        for key, count in versions.items():
            if count > 1:
                found.append(("anchor_overwritten", f"s3://{output.bucket}/{key} has {count} "
                              "versions: one was put over the anchor (every version is read)"))
    return found


def _cache_file(cache: Path, key: str, version: str) -> Path:
    return cache / (hashlib.sha256(f"{key}?{version}".encode()).hexdigest() + ".json")


def _cached(cache: Path, key: str, version: str, etag: str
            ) -> tuple[bytes | None, dict[str, Any] | None]:
    """A version read before: its body counts only if its MD5 is the listed ETag."""
    try:
        kept = json.loads(_cache_file(cache, key, version).read_text())
        body = base64.b64decode(kept["body"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if hashlib.md5(body).hexdigest() != etag:
        return None, None
    return body, kept.get("lock")


def _keep(cache: Path, key: str, version: str, body: bytes, lock: dict[str, Any]) -> None:
    try:
        _cache_file(cache, key, version).write_text(json.dumps(
            {"body": base64.b64encode(body).decode(), "lock": lock}))
    except OSError as exc:
        log.debug("anchor cache: %s", exc)


def _parse(body: bytes, source: str) -> Anchor | str:
    try:
        item: Any = json.loads(body)
        return Anchor(payload=str(item["payload"]), signature=str(item["signature"]),
                      source=source)
    except (ValueError, KeyError, TypeError):
        return f"{source}: not an anchored checkpoint"
