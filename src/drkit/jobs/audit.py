"""``drkit audit verify``: the catalog's chain against its signed checkpoints and their
anchors (this host's anchor file, the evidence bucket). Never writes to the catalog."""

from __future__ import annotations

import logging

from drkit.catalog.audit import AuditResult, verify_catalog
from drkit.catalog.checkpoints import Anchor, read_anchor_file
from drkit.catalog.store import open_readonly
from drkit.config.models import Config
from drkit.errors import DrkitError, describe
from drkit.jobs.evidence import anchor_file

log = logging.getLogger("drkit.audit")


def verify(config: Config, *, bucket: bool = True) -> AuditResult:
    """Verify ``config``'s catalog. ``bucket``: also read the anchors in the evidence bucket
    (a bucket that cannot be read is a problem: the anchors there cannot be vouched for)."""
    engine = open_readonly(config.catalog, base_dir=config.base_dir)
    result = AuditResult()
    anchors: list[Anchor | str | tuple[str, str]] = list(read_anchor_file(anchor_file(config)))
    if config.evidence.bucket is not None and bucket:
        from drkit.storage.anchors import read_anchors

        try:
            anchors += read_anchors(config, config.state_dir / "evidence" / "anchor-cache")
        except DrkitError as exc:
            result.problem("anchors_unreadable", f"the anchored checkpoints in the evidence "
                           f"bucket cannot be read: {describe(exc)}")
    elif config.evidence.bucket is not None:
        result.notes.append("the evidence bucket's anchors were not read (--offline)")
    try:
        return verify_catalog(engine, public_key=config.evidence.public_key, anchors=anchors,
                              result=result,
                              retired_keys=config.evidence.retired_public_keys)
    finally:
        engine.dispose()
