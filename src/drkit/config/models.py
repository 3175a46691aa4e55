"""Pydantic models of ``config/drkit.yaml``. Unknown keys are rejected everywhere.

Target kinds add their own model (a subclass of :class:`TargetConfig`) in their module under
``drkit.targets``; the loader builds the discriminated union from that registry.
"""

from __future__ import annotations

import re
import socket
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drkit.config.fields import (
    HOST_PATTERN,
    NAME_PATTERN,
    CronExpr,
    Duration,
    EnvName,
    Limit,
    Name,
    Share,
    Size,
    Strict,
    parse_duration,
    parse_size,
    resolve_path,
)
from drkit.config.secrets import SecretRef

if TYPE_CHECKING:
    from drkit.identity import SnapshotIdentity

# A site's name goes into Prefect deployment names, tags and work-pool names.
SITE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"

__all__ = ["HOST_PATTERN", "NAME_PATTERN", "CronExpr", "Duration", "EnvName", "Limit", "Name",
           "Share", "Size", "Strict", "parse_duration", "parse_size", "resolve_path"]

DEFAULT_CATALOG = "sqlite:///.drkit/catalog.db"
class S3Settings(Strict):
    """How boto3 (and restic) reach an S3-compatible endpoint."""

    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("endpoint must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Settings:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        return self


class ObjectLockPosture(Strict):
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: PositiveInt


class Posture(Strict):
    """What the storage under a repository must look like (checked by ``drkit check``)."""

    versioning: bool = False
    object_lock: ObjectLockPosture | None = None
    encryption: bool = False


class Repository(Strict):
    """A restic repository: its URL, its password and, for S3, how to reach the bucket."""

    url: str = Field(min_length=1)
    password: SecretRef
    s3: S3Settings | None = None
    posture: Posture | None = None
    compression: Literal["auto", "off", "max"] | None = None  # restic's; default: auto
    # Variables of drkit's environment restic needs for this repository beyond its password
    # and S3 keys (restic gets a minimal environment); the usual ones of the URL's backend
    # (SSH_AUTH_SOCK for sftp:, B2_*, AZURE_*, GOOGLE_*, OS_*/ST_*, RCLONE_*) pass anyway.
    env: list[EnvName] = Field(default_factory=list)
    # A copy repository: ``drkit copy`` fills it with `restic copy` of the good snapshots of
    # every target backed up to ``copy_from`` (initialised with its chunker parameters).
    copy_from: Name | None = None
    copy_schedule: CronExpr | None = None  # when `drkit serve` runs `drkit copy REPO`
    # Capacity: what the repository may hold (its stored size, as `restic stats --mode
    # raw-data` measures at each check), and how early `status` warns of reaching it.
    quota: Size | None = None
    warn_before: Duration = 30 * 86400.0
    # Freshness (every check): the newest snapshot of each target/host the repository holds
    # may be at most this old, for targets that no plan here gives an RPO (another host's).
    max_snapshot_age: Limit | None = None

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3:")

    @field_validator("url")
    @classmethod
    def _local_path_absolute(cls, value: str, info: ValidationInfo) -> str:
        # A plain path (no backend prefix) is relative to the config file, like every path.
        if re.match(r"^[a-z0-9]+:", value) and not value.startswith("local:"):
            return value
        path = Path(value.removeprefix("local:"))
        return str(resolve_path(path, info))

    @model_validator(mode="after")
    def _copy_schedule_for_copies(self) -> Repository:
        if self.copy_schedule is not None and self.copy_from is None:
            raise ValueError("copy_schedule applies to a copy repository (one with copy_from)")
        return self

    @model_validator(mode="after")
    def _s3_only_for_s3(self) -> Repository:
        if not self.is_s3 and (self.s3 is not None or self.posture is not None):
            raise ValueError("'s3' and 'posture' apply only to s3: repository URLs")
        if self.is_s3 and not re.match(r"^s3:(https?://)?[^/]+/[^/]+", self.url):
            raise ValueError("an S3 URL looks like s3:https://host[:port]/bucket[/prefix]")
        return self


class Retention(Strict):
    """Which snapshots ``drkit prune`` keeps (restic forget's --keep-* flags)."""

    keep_last: NonNegativeInt | None = None
    keep_hourly: NonNegativeInt | None = None
    keep_daily: NonNegativeInt | None = None
    keep_weekly: NonNegativeInt | None = None
    keep_monthly: NonNegativeInt | None = None
    keep_yearly: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        if not any(v for v in self.model_dump().values()):
            raise ValueError("a retention policy must keep something (set a keep_* above 0)")
        return self


class Healthcheck(Strict):
    """A healthchecks.io-style URL: pinged after each backup of the target, with ``/fail``
    appended when a repository's backup failed."""

    url: SecretRef


class AnomalySettings(Strict):
    """How each backup is compared with its target's own history (:mod:`drkit.jobs.anomaly`):
    a run whose figures depart from the median of the last ``window`` normal runs by more
    than ``sensitivity`` robust deviations (MAD) *and* past the absolute bar is flagged."""

    enabled: bool = True
    window: int = Field(default=20, ge=3, le=500)   # the baseline: the last N normal runs
    warmup: int = Field(default=5, ge=2, le=500)    # fewer normal runs than this: no verdict
    sensitivity: float = Field(default=6.0, gt=0, le=100)  # lower flags more
    changed: Share = 0.5   # "most files changed/removed at once": at least this share
    min_files: int = Field(default=10, ge=1)  # ... and at least this many files
    shrink: Share = 0.1    # "the source shrank to almost nothing": below this share of usual

    @model_validator(mode="after")
    def _warmup_within_window(self) -> AnomalySettings:
        if self.warmup > self.window:
            raise ValueError("warmup cannot exceed window (the baseline holds at most "
                             "window runs)")
        return self


class TargetConfig(Strict):
    """Fields every target kind has. Kinds subclass this with ``kind: Literal[...]``."""

    kind: str
    repositories: list[Name] = Field(min_length=1)
    schedule: CronExpr | None = None
    retention: Retention | None = None
    healthcheck: Healthcheck | None = None
    timeout: Limit | None = None  # one backup to one repository; default: timeouts.backup
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    # The machine this target's data lives on: its backups run only there (a worker started
    # for that host), and its snapshots are that host's. Default: every host that runs
    # drkit with this config backs it up as its own (the single-machine case).
    host: Annotated[str, Field(pattern=HOST_PATTERN)] | None = None

    @field_validator("repositories")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a repository is listed twice")
        return value


class DrillSettings(Strict):
    # Where drills restore; default STATE_DIR/drills. Must be owned by drkit's user and
    # writable by nobody else (drkit creates it 0700; see drkit.drills.sandbox).
    sandbox_dir: Annotated[Path, AfterValidator(resolve_path)] | None = None


class CheckSettings(Strict):
    schedule: CronExpr | None = None
    read_data_subset: str | None = Field(default=None, pattern=r"^(\d{1,3}(\.\d+)?%|\d+/\d+)$")


class Timeouts(Strict):
    """How long each kind of work may run. Past it, drkit stops the work's processes (each
    with its whole process group) and records the run failed, "timed out after ...".
    ``storage`` bounds how long restic may keep retrying a storage that does not answer
    (restic >= 0.17 would retry for 15 minutes) before the run fails as unreachable."""

    backup: Limit = 6 * 3600.0   # one target to one repository, the dump and restic together
    check: Limit = 12 * 3600.0   # one repository's check, read-data slice included
    prune: Limit = 6 * 3600.0    # one target's forget and prune in one repository
    drill: Limit = 6 * 3600.0    # a whole drill, every step
    restic: Limit = 3600.0       # any other restic call (listing snapshots, unlock, init)
    storage: Limit = 300.0


class RetrySettings(Strict):
    """How scheduled runs (``drkit serve``, workers) retry a transient failure (storage
    unreachable, repository locked); never a permanent one (wrong password, bad config)."""

    attempts: NonNegativeInt = 3
    delays: list[Duration] = Field(default_factory=lambda: [30.0, 120.0, 300.0], min_length=1)


class PruneSettings(Strict):
    """When ``drkit serve`` applies every target's retention (``drkit prune``)."""

    schedule: CronExpr | None = None


class S3Output(Strict):
    """Where reports go as evidence: a bucket reached like ``repository`` (its endpoint and
    keys) or with explicit ``s3`` settings. With object lock on the bucket, each upload is
    retained ``retain_days`` (default: the bucket's default retention, else 365 days)."""

    bucket: str = Field(min_length=3)
    prefix: str = ""
    repository: Name | None = None
    s3: S3Settings | None = None
    retain_days: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> S3Output:
        if self.repository is not None and self.s3 is not None:
            raise ValueError("give either 'repository' (use its endpoint and keys) or 's3', "
                             "not both")
        return self


class ReportOutput(Strict):
    s3: S3Output | None = None
    directory: Annotated[Path, AfterValidator(resolve_path)] | None = None


class ReportSettings(Strict):
    schedule: CronExpr | None = None
    output: ReportOutput | None = None


class Webhook(Strict):
    url: SecretRef


class NotifySettings(Strict):
    webhook: Webhook | None = None


class EvidenceSettings(Strict):
    """What makes the record chain evidence: checkpoints of its head signed with an Ed25519
    key held outside the catalog (``signing_key``, a PEM private key: ``drkit keygen``),
    verified with ``public_key`` (the base64 body of the PEM public key, which also goes in
    every report), anchored in a local append-only file and, with ``bucket``, in an
    object-locked bucket (``lock_mode`` for ``retain_days``), where nobody can rewrite them."""

    signing_key: SecretRef | None = None
    public_key: str | None = None
    # Keys that signed earlier checkpoints (after a rotation): still accepted by audit verify.
    retired_public_keys: list[str] = Field(default_factory=list)
    bucket: S3Output | None = None
    lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "COMPLIANCE"
    retain_days: PositiveInt = 400
    anchor_file: Annotated[Path, AfterValidator(resolve_path)] | None = None

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from drkit.signing import PublicKeyError, load_public_key

        try:
            load_public_key(value)
        except PublicKeyError as exc:
            raise ValueError(str(exc)) from None
        return "".join(value.split())

    @field_validator("retired_public_keys")
    @classmethod
    def _ed25519_each(cls, value: list[str]) -> list[str]:
        return [cls._ed25519(item) or "" for item in value]

    @model_validator(mode="after")
    def _key_pair(self) -> EvidenceSettings:
        if self.signing_key is not None and self.public_key is None:
            raise ValueError("a signing_key needs its public_key (drkit keygen prints it): "
                             "audit verify checks every signature with it")
        return self


class Config(Strict):
    """The whole of ``drkit.yaml``. ``source`` and ``base_dir`` are set by the loader."""

    catalog: str = Field(default=DEFAULT_CATALOG, pattern=r"^[A-Za-z0-9+_]+://",
                         description="SQLAlchemy URL of the catalog")
    plans_dir: Annotated[Path, AfterValidator(resolve_path)] = Field(
        default=Path("../recovery_plans"), validate_default=True)
    state_dir: Annotated[Path, AfterValidator(resolve_path)] = Field(
        default=Path(".drkit"), validate_default=True)
    restic_binary: str = "restic"
    host: str = Field(default_factory=socket.gethostname, pattern=HOST_PATTERN,
                      description="the identity snapshots are made and found under")
    # The site this config describes: deployments are named, tagged and cleaned up by it, so
    # several sites share one Prefect server without touching each other's.
    site: str = Field(default="default", pattern=SITE_PATTERN)
    parallelism: PositiveInt = 2
    # Hosts that backed up into these repositories once and no longer do: their snapshots
    # stay (until forgotten by hand) but freshness no longer expects new ones.
    retired_hosts: list[Annotated[str, Field(pattern=HOST_PATTERN)]] = Field(
        default_factory=list)
    lock_timeout: Duration = 300.0  # how long to wait for a repository another run holds
    timeouts: Timeouts = Field(default_factory=Timeouts)
    timezone: str = "UTC"
    drills: DrillSettings = Field(default_factory=DrillSettings)
    repositories: dict[Name, Repository] = Field(min_length=1)
    targets: dict[Name, TargetConfig] = Field(default_factory=dict)
    checks: CheckSettings | None = None
    prune: PruneSettings | None = None
    retries: RetrySettings = Field(default_factory=RetrySettings)
    reports: ReportSettings | None = None
    notify: NotifySettings | None = None
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)

    source: Path | None = Field(default=None, exclude=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("restic_binary")
    @classmethod
    def _binary_path(cls, value: str, info: ValidationInfo) -> str:
        # A bare name is looked up on PATH; a relative path is relative to the config file.
        if "/" in value:
            return str(resolve_path(Path(value), info))
        return value

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    def copies_of(self, repositories: list[str]) -> list[str]:
        """The copy repositories filled from any of ``repositories``, in declaration order."""
        return [name for name, repo in self.repositories.items()
                if repo.copy_from is not None and repo.copy_from in repositories]

    def host_of(self, target: str) -> str:
        """The host whose data ``target`` is: its ``host:``, else this machine's identity."""
        return self.targets[target].host or self.host

    def identity(self, target: str) -> SnapshotIdentity:
        """Whose snapshots ``target``'s are (the one place that says so)."""
        from drkit.identity import SnapshotIdentity

        return SnapshotIdentity(self.host_of(target), target)

    def runs_here(self, target: str) -> bool:
        """Whether ``target``'s backups run on this machine."""
        return self.host_of(target) == self.host

    def site_hosts(self) -> list[str]:
        """Every host the site's targets run on (this one for unbound targets)."""
        return sorted({self.host_of(name) for name in self.targets} or {self.host})

    def holding(self, target: str) -> list[str]:
        """Every repository holding ``target``'s snapshots: its own, then their copies."""
        own = list(self.targets[target].repositories)
        return own + self.copies_of(own)
