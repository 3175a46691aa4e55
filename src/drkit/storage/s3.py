"""Buckets behind ``s3:`` repositories, reached with boto3 (imported lazily: it is slow).

Clients are built inside functions from the repository's explicit settings, never at module
level, so one process can talk to several endpoints with different credentials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from drkit.config.models import Repository, S3Settings
from drkit.errors import DrkitError

log = logging.getLogger("drkit.storage")


class StorageError(DrkitError):
    """The bucket could not be reached or created."""


class StorageUnreachableError(StorageError):
    """The endpoint did not answer (refused, DNS, timeout): worth trying again later."""

    transient = True


@dataclass(frozen=True)
class BucketLocation:
    """Where an ``s3:`` repository lives: endpoint URL (None = AWS), bucket, key prefix."""

    endpoint: str | None
    bucket: str
    prefix: str


def bucket_location(repo: Repository) -> BucketLocation:
    """Split the repository's restic URL into endpoint, bucket and prefix.

    ``s3:http://127.0.0.1:9000/bucket/prefix`` -> (``http://127.0.0.1:9000``, bucket, prefix);
    ``s3:s3.amazonaws.com/bucket`` -> (``https://s3.amazonaws.com``, bucket, "").
    An explicit ``s3.endpoint`` in the config wins over the URL's host.
    """
    rest = repo.url.removeprefix("s3:")
    if "://" not in rest:
        rest = "https://" + rest
    parts = urlsplit(rest)
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    endpoint: str | None = f"{parts.scheme}://{parts.netloc}"
    if parts.hostname and parts.hostname in ("s3.amazonaws.com",):
        endpoint = None
    if repo.s3 is not None and repo.s3.endpoint:
        endpoint = repo.s3.endpoint
    return BucketLocation(endpoint=endpoint, bucket=bucket, prefix=prefix.strip("/"))


def s3_client(repo: Repository) -> Any:
    """A boto3 S3 client for the repository's endpoint and credentials (path-style addressing)."""
    return client_for(bucket_location(repo).endpoint, repo.s3)


def client_for(endpoint: str | None, settings: S3Settings | None) -> Any:
    """A boto3 S3 client for ``endpoint`` (None: AWS) with ``settings``' region and keys."""
    import boto3
    from botocore.config import Config as BotoConfig

    kwargs: dict[str, Any] = {
        "endpoint_url": endpoint,
        "config": BotoConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    }
    if settings is not None:
        kwargs["region_name"] = settings.region
        if settings.access_key is not None and settings.secret_key is not None:
            kwargs["aws_access_key_id"] = settings.access_key.resolve()
            kwargs["aws_secret_access_key"] = settings.secret_key.resolve()
    return boto3.client("s3", **kwargs)


def ensure_bucket(name: str, repo: Repository) -> bool:
    """Create the repository's bucket if it does not exist. Returns True when it was created.

    Raises :class:`StorageError` with one readable line when the endpoint cannot be reached,
    refuses the credentials, or the bucket cannot be created.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    location = bucket_location(repo)
    client = s3_client(repo)
    where = f"repository '{name}': bucket '{location.bucket}'"
    try:
        client.head_bucket(Bucket=location.bucket)
        return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{where}: {_describe(exc)}") from None
    except BotoCoreError as exc:
        raise StorageUnreachableError(f"{where}: storage unreachable ({exc})") from None
    create: dict[str, Any] = {"Bucket": location.bucket}
    if repo.posture is not None and repo.posture.object_lock is not None:
        create["ObjectLockEnabledForBucket"] = True  # only possible at creation
    region = repo.s3.region if repo.s3 is not None else "us-east-1"
    if region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**create)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("BucketAlreadyOwnedByYou",):
            return False
        raise StorageError(f"{where}: cannot create it: {_describe(exc)}") from None
    except BotoCoreError as exc:
        raise StorageUnreachableError(f"{where}: storage unreachable ({exc})") from None
    if repo.posture is not None:
        from drkit.storage.posture import apply_posture

        apply_posture(repo, repo.posture)
    log.info("created bucket %s%s", location.bucket,
             " with the declared posture" if repo.posture is not None else "")
    return True


def _describe(exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code", "?")
    message = error.get("Message") or ""
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}): check the repository's s3 access_key/secret_key"
    return f"{code} {message}".strip()
