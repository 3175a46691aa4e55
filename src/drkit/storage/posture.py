"""Storage posture of a repository's bucket: versioning, object lock, default encryption.

``read_posture`` says what the bucket has; ``posture_problems`` compares it with what the
repository's ``posture`` demands and explains each gap and how to close it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from drkit.config.models import Posture, Repository
from drkit.storage.s3 import StorageError, StorageUnreachableError, bucket_location, s3_client

UNSUPPORTED = "unsupported"  # the endpoint does not implement the call (e.g. rclone serve s3)


@dataclass(frozen=True)
class PostureFound:
    """What a bucket has. ``versioning``: Enabled / Suspended / Off / unsupported."""

    bucket: str
    versioning: str
    object_lock: bool | None
    object_lock_mode: str | None = None
    object_lock_days: int | None = None
    encryption: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _storage_errors(bucket: str, doing: str) -> Iterator[None]:
    """Turn boto3's errors into one readable :class:`StorageError` line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", "")
        raise StorageError(f"bucket '{bucket}': cannot {doing}: {_code(exc)} {message}".strip()
                           ) from None
    except BotoCoreError as exc:
        raise StorageUnreachableError(f"bucket '{bucket}': storage unreachable ({exc})"
                                      ) from None


def read_posture(repo: Repository) -> PostureFound:
    """Ask the bucket for its versioning, object lock and encryption settings.

    Raises :class:`StorageError` when the bucket cannot be reached or read.
    """
    from botocore.exceptions import ClientError

    location = bucket_location(repo)
    client = s3_client(repo)
    bucket = location.bucket
    with _storage_errors(bucket, "read its settings"):
        try:
            versioning = client.get_bucket_versioning(Bucket=bucket).get("Status") or "Off"
        except ClientError as exc:
            if _code(exc) not in ("NotImplemented", "501"):
                raise
            versioning = UNSUPPORTED
        lock: bool | None = False
        mode = days = None
        try:
            config = client.get_object_lock_configuration(Bucket=bucket)
            settings = config.get("ObjectLockConfiguration", {})
            lock = settings.get("ObjectLockEnabled") == "Enabled"
            retention = settings.get("Rule", {}).get("DefaultRetention", {})
            mode = retention.get("Mode")
            days = retention.get("Days") or (retention.get("Years") or 0) * 365 or None
        except ClientError as exc:
            if _code(exc) in ("NotImplemented", "501"):
                lock = None
            elif _code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
        encryption = None
        try:
            answer = client.get_bucket_encryption(Bucket=bucket)
            rules = answer.get("ServerSideEncryptionConfiguration", {}).get("Rules") or [{}]
            encryption = rules[0].get("ApplyServerSideEncryptionByDefault", {}).get(
                "SSEAlgorithm")
        except ClientError as exc:
            if _code(exc) in ("NotImplemented", "501"):
                encryption = UNSUPPORTED
            elif _code(exc) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
    return PostureFound(bucket=bucket, versioning=versioning, object_lock=lock,
                        object_lock_mode=mode, object_lock_days=days, encryption=encryption)


def posture_problems(demanded: Posture, found: PostureFound) -> list[str]:
    """Every way ``found`` falls short of ``demanded``, each with how to fix it."""
    bucket = found.bucket
    problems = []
    if demanded.versioning and found.versioning != "Enabled":
        state = ("not supported by this endpoint" if found.versioning == UNSUPPORTED
                 else f"'{found.versioning}'")
        problems.append(
            f"bucket '{bucket}': versioning is {state}, the declared posture demands it; "
            f"enable it (aws s3api put-bucket-versioning --bucket {bucket} "
            "--versioning-configuration Status=Enabled)")
    lock = demanded.object_lock
    if lock is not None:
        if not found.object_lock:
            state = "not supported by this endpoint" if found.object_lock is None else "off"
            problems.append(
                f"bucket '{bucket}': object lock is {state}, the declared posture demands "
                f"{lock.mode} for {lock.days} days; object lock can only be turned on when a "
                "bucket is created: create a new bucket with 'drkit repo init' and copy the "
                "repository there (restic copy)")
        elif found.object_lock_mode != lock.mode or (found.object_lock_days or 0) < lock.days:
            problems.append(
                f"bucket '{bucket}': default retention is {found.object_lock_mode or 'none'} "
                f"for {found.object_lock_days or 0} days, the declared posture demands "
                f"{lock.mode} for at least {lock.days} days; set it with aws s3api "
                f"put-object-lock-configuration --bucket {bucket}")
    if demanded.encryption and found.encryption in (None, UNSUPPORTED):
        problems.append(
            f"bucket '{bucket}': default encryption is "
            f"{'not supported by this endpoint' if found.encryption else 'off'}, the declared "
            f"posture demands it; enable it (aws s3api put-bucket-encryption --bucket {bucket} "
            "...)")
    return problems


def apply_posture(repo: Repository, posture: Posture) -> None:
    """Set versioning, default retention and encryption on the repository's (new) bucket.

    Raises :class:`StorageError` when the endpoint refuses.
    """
    bucket = bucket_location(repo).bucket
    client = s3_client(repo)
    with _storage_errors(bucket, "set the declared posture"):
        if posture.versioning or posture.object_lock:
            client.put_bucket_versioning(Bucket=bucket,
                                         VersioningConfiguration={"Status": "Enabled"})
        if posture.object_lock:
            client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": posture.object_lock.mode,
                                              "Days": posture.object_lock.days}}})
        if posture.encryption:
            client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
