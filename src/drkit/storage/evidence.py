"""Uploading reports as evidence, retained under object lock where the bucket has it.

A report kept only on the host that made it can be edited or lost; in an object-locked bucket
each upload gets a retain-until date (COMPLIANCE or GOVERNANCE mode, the bucket's), so nobody
can delete or overwrite that version before then, drkit included.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drkit.config.models import Config, S3Output
from drkit.storage.posture import _code, _storage_errors
from drkit.storage.s3 import bucket_location, client_for

log = logging.getLogger("drkit.storage")
DEFAULT_RETAIN_DAYS = 365


@dataclass(frozen=True)
class Uploaded:
    bucket: str
    key: str
    version_id: str | None
    sha256: str
    retention_mode: str | None
    retain_until: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _client(output: S3Output, config: Config) -> Any:
    if output.repository is not None:
        repo = config.repositories[output.repository]
        return client_for(bucket_location(repo).endpoint if repo.is_s3 else None, repo.s3)
    return client_for(output.s3.endpoint if output.s3 else None, output.s3)


def _retention(client: Any, output: S3Output) -> tuple[str, int] | None:
    """(mode, days) to set on uploads, or None when the bucket has no object lock."""
    from botocore.exceptions import ClientError

    try:
        found = client.get_object_lock_configuration(Bucket=output.bucket)
    except ClientError as exc:
        if _code(exc) in ("ObjectLockConfigurationNotFoundError", "NotImplemented", "501"):
            return None
        raise
    lock = found.get("ObjectLockConfiguration", {})
    if lock.get("ObjectLockEnabled") != "Enabled":
        return None
    default = lock.get("Rule", {}).get("DefaultRetention", {})
    days = output.retain_days or default.get("Days") or (
        default["Years"] * 365 if default.get("Years") else DEFAULT_RETAIN_DAYS)
    return default.get("Mode", "GOVERNANCE"), int(days)


def upload_evidence(config: Config, output: S3Output, files: list[tuple[Path, str, str]],
                    *, now: datetime | None = None, lock: tuple[str, int] | None = None
                    ) -> list[Uploaded]:
    """Upload each ``(path, key name, content type)`` under ``output.prefix``; set retention
    (``lock``: this mode and days; else the bucket's default) when the bucket has object
    lock. Raises :class:`StorageError` on any failure."""
    import hashlib

    now = now or datetime.now(UTC)
    client = _client(output, config)
    uploaded = []
    with _storage_errors(output.bucket, "upload the report"):
        retention = lock or _retention(client, output)
        if retention is None:
            log.warning("evidence bucket '%s' has no object lock: the uploaded report can be "
                        "deleted or overwritten", output.bucket)
        for path, name, content_type in files:
            body = path.read_bytes()
            key = output.prefix + name
            extra: dict[str, Any] = {}
            until = None
            if retention is not None:
                until = (now + timedelta(days=retention[1])).replace(microsecond=0)
                extra = {"ObjectLockMode": retention[0], "ObjectLockRetainUntilDate": until}
            digest = hashlib.sha256(body).hexdigest()
            answer = client.put_object(Bucket=output.bucket, Key=key, Body=body,
                                       ContentType=content_type, Metadata={"sha256": digest},
                                       ChecksumAlgorithm="SHA256", **extra)
            uploaded.append(Uploaded(
                bucket=output.bucket, key=key, version_id=answer.get("VersionId"), sha256=digest,
                retention_mode=retention[0] if retention else None,
                retain_until=until.isoformat().replace("+00:00", "Z") if until else None))
            log.info("report uploaded to s3://%s/%s%s", output.bucket, key,
                     f" (retained until {until:%Y-%m-%d})" if until else "")
    return uploaded
