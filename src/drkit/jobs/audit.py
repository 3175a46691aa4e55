"""``drkit audit verify``: the catalog's chain against its signed checkpoints and their
anchors (this host's anchor file, the evidence bucket). Never writes to the catalog."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
    read_bucket = config.evidence.bucket is not None and bucket
    if config.evidence.bucket is not None and not bucket:
        result.notes.append("the evidence bucket's anchors were not read (--offline)")
    try:
        return verify_catalog(engine, public_key=config.evidence.public_key,
                              anchors=_anchors(config, read_bucket), result=result,
                              retired_keys=config.evidence.retired_public_keys)
    finally:
        engine.dispose()


def _anchors(config: Config, read_bucket: bool) -> Iterator[Anchor | str | tuple[str, str]]:
    """This host's anchor file, then the bucket's anchors: read when the verification asks
    (while the chain is being walked)."""
    yield from read_anchor_file(anchor_file(config))
    if not read_bucket:
        return
    from drkit.storage.anchors import read_anchors

    try:
        yield from read_anchors(config, config.state_dir / "evidence" / "anchor-cache")
    except DrkitError as exc:
        yield ("anchors_unreadable", "the anchored checkpoints in the evidence bucket cannot "
               f"be read: {describe(exc)}")
