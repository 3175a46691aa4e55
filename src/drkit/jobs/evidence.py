"""Evidence around every run: what was in force (the effective config's hash), who did it
(the actor), and the signed checkpoint each process writes once it appended records, anchored
in the local anchor file and the evidence bucket.

:func:`prepare_catalog` is applied to every catalog opened for a config; :func:`finish`
runs when a command (or a flow's task) ends. A checkpoint or anchor that cannot be written
is logged as an error and shows in ``drkit status`` and in reports (``evidence_anchored``); it
does not turn the run it follows into a failure.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from drkit.catalog.chain import canonical_json
from drkit.catalog.store import Catalog, opened_catalogs
from drkit.config.models import Config
from drkit.errors import ConfigError, DrkitError, describe
from drkit.identity import current_actor

log = logging.getLogger("drkit.evidence")


def config_fingerprint(config: Config) -> tuple[str, dict[str, Any]]:
    """The SHA-256 of the effective config and plans (secrets are references, never values)
    and that content. A plan directory that cannot be read is part of what was in force."""
    from drkit.drills.plans import load_plans

    try:
        plans: dict[str, Any] = {name: plan.model_dump(mode="json")
                                 for name, plan in sorted(load_plans(config).items())}
    except ConfigError as exc:
        plans = {"unreadable": exc.message}
    effective = config.model_dump(mode="json")
    # Credentials written in URLs (a catalog's password, a rest: repository's user:password)
    # are not kept: the config record is evidence, kept for years.
    from drkit.catalog.store import masked_url
    from drkit.restic.runner import mask_url

    effective["catalog"] = masked_url(config.catalog)
    for repo in effective.get("repositories", {}).values():
        repo["url"] = mask_url(repo["url"])
    content = {"config": effective, "plans": plans}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest(), content


def prepare_catalog(catalog: Catalog, config: Config) -> None:
    """Give ``catalog`` what every record it appends carries: the actor and the hash of the
    config in force (a ``config`` record is appended first when that changed)."""
    catalog.settings = config
    catalog.actor = current_actor()
    catalog.config_hash, catalog.config_content = config_fingerprint(config)
    if config.evidence.signing_key is not None:
        # Off the run's critical path (this runs while restic works): signing needs it.
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401


def anchor_file(config: Config) -> Path:
    """This host's append-only file of checkpoints."""
    return config.evidence.anchor_file or config.state_dir / "evidence" / "checkpoints.anchors"


def finish(owner: object | None = None, *, close: bool = False) -> list[str]:
    """Checkpoint every catalog ``owner`` (None: the command) appended to (when a signing
    key is set): sign, store, append to the anchor file, upload to the evidence bucket; with
    ``close``, close those catalogs afterwards. Returns the problems (each also logged)."""
    from drkit.catalog.store import close_catalog

    problems = []
    for catalog in opened_catalogs(owner):
        config = catalog.settings
        try:
            if catalog.appended and config is not None and \
                    config.evidence.signing_key is not None:
                catalog.appended = 0
                checkpoint(catalog, config)
        except (DrkitError, OSError) as exc:
            text = describe(exc) if isinstance(exc, DrkitError) else str(exc)
            problems.append(text)
            log.error("evidence: %s", text)
        finally:
            if close:
                close_catalog(catalog)
    return problems


def checkpoint(catalog: Catalog, config: Config) -> str | None:
    """Write, anchor and upload one checkpoint of ``catalog``'s head; where it was
    anchored in the bucket (None without a bucket, or nothing new to sign)."""
    from drkit.catalog.checkpoints import append_anchor, mark_anchored, write_checkpoint
    from drkit.signing import Signer, public_bytes

    settings = config.evidence
    assert settings.signing_key is not None and settings.public_key is not None
    signer = Signer(settings.signing_key.resolve())
    if signer.public != public_bytes(settings.public_key):
        raise DrkitError("the evidence signing key does not belong to evidence.public_key: "
                         "no checkpoint written",
                         hint="drkit keygen prints the public key of a new pair")
    anchor = write_checkpoint(catalog, signer, actor=catalog.actor)
    if anchor is None:
        return None
    append_anchor(anchor_file(config), anchor)
    if settings.bucket is None:
        return None
    from drkit.storage.anchors import upload_anchor

    anchored = upload_anchor(config, anchor)
    mark_anchored(catalog, anchor.data["head_hash"], anchored.describe())
    if anchored.lock_mode != settings.lock_mode:
        raise DrkitError(f"checkpoint uploaded to {anchored.uri} but the stored object's lock "
                         f"is {anchored.lock_mode or 'missing'}, not {settings.lock_mode}")
    log.debug("checkpoint anchored: %s", anchored.describe())
    return anchored.describe()
