"""The evidence commands: ``keygen``, ``audit verify``, ``audit export``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from drkit.cli.commands import _config, emit_json
from drkit.errors import EXIT_FAILED, EXIT_OK, BadRequestError


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new Ed25519 key pair for signing checkpoints; print the config lines."""
    from drkit.signing import generate, public_base64, public_bytes

    directory = Path(args.output)
    private_path, public_path = directory / "evidence.key", directory / "evidence.pub"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise BadRequestError(f"{path} exists: not overwritten (a signing key that is "
                                  "replaced makes the old checkpoints unverifiable with the "
                                  "new public key)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(private)
    public_path.write_text(public)
    print(f"wrote {private_path} (the signing key: keep it off the catalog's host if you "
          f"can, mode 0600) and {public_path}")
    print("add to the config:\n\nevidence:\n"
          f"  signing_key: {{file: {private_path.resolve()}}}\n"
          f"  public_key: {public_base64(public_bytes(public))}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    if args.audit_command == "export":
        return cmd_audit_export(args)
    return cmd_audit_verify(args)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from drkit.jobs.export import export_bundle
    from drkit.jobs.report import parse_period

    config = _config(args)
    since, until = parse_period(args.since or "30d", args.until)
    bundle = export_bundle(config, since=since, until=until, output=Path(args.output))
    if args.json:
        emit_json(bundle.to_json())
    else:
        print(f"evidence bundle written to {bundle.directory}: {bundle.records} records "
              f"(seq {bundle.first_seq}..{bundle.last_seq}), {bundle.checkpoints} "
              f"checkpoints, {bundle.reports} reports; verify it with `python3 -I "
              f"{bundle.directory / 'verify.py'} --key-id {bundle.key_id}` or the commands in "
              "its README.md")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from drkit.jobs.audit import verify

    config = _config(args)
    result = verify(config, bucket=not args.offline)
    if args.json:
        emit_json(result.to_json())
    elif result.intact:
        anchors = ", ".join(f"{count} in the {where}" for where, count in
                            sorted(result.anchors.items())) or "none"
        print(f"chain intact: {result.records} records, head {result.head_hash}")
        print(f"checkpoints: {result.checkpoints} signed"
              + (" and verified" if result.signed else " (signatures NOT checked)")
              + f" (found: {anchors}); newest signed at seq "
              + f"{result.newest_signed_seq or 'none'}, "
              + (f"in the evidence bucket at seq {result.newest_anchored_seq or 'none'}"
                 if config.evidence.bucket is not None and not args.offline
                 else "no evidence bucket read"))
        for note in result.notes:
            print(f"note: {note}")
    else:
        for item in result.problems:
            print(f"{_where(item)}: {item['problem']}: {item['detail']}")
    if not result.intact:
        first = result.problems[0]
        if set(result.counts) == {"anchors_unreadable"}:
            print("drkit: not verified: the evidence bucket's anchors could not be read "
                  "(nothing else was found wrong; --offline verifies without them)",
                  file=sys.stderr)
            return EXIT_FAILED
        where = f" at {_where(first)}" if first["record_id"] is not None or \
            first["seq"] is not None else ""
        print(f"drkit: chain broken{where} ({first['problem']}); "
              f"{sum(result.counts.values())} problem(s): "
              + ", ".join(f"{n} {kind}" for kind, n in sorted(result.counts.items())),
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _where(problem: dict[str, Any]) -> str:
    if problem["record_id"] is not None:
        return f"record {problem['record_id']} (seq {problem['seq']})"
    if problem["seq"] is not None:
        return f"seq {problem['seq']}"
    return "the chain" if problem["problem"] != "truncated" else "the chain head"




def cmd_remediation(args: argparse.Namespace) -> int:
    """``remediation add|close|list``: items to fix after a drill, as records."""
    from datetime import date

    from drkit.jobs import remediation
    from drkit.jobs.common import open_config_catalog

    config = _config(args)
    catalog = open_config_catalog(config)
    if args.remediation_command == "add":
        from drkit.drills.plans import find_plan, load_plans

        plan = find_plan(load_plans(config), args.plan)
        try:
            due = date.fromisoformat(args.due)
        except ValueError:
            raise BadRequestError(f"--due {args.due!r}: give a date, YYYY-MM-DD") from None
        item = remediation.add(catalog, plan.name, owner=args.owner, due=due,
                               text=" ".join(args.text), drill_record=args.drill)
        if args.json:
            emit_json(item.to_json())
        else:
            print(f"remediation {item.id} opened for plan {item.plan}: {item.owner}, due "
                  f"{item.due.isoformat()} (record {item.opened_record})")
        return EXIT_OK
    if args.remediation_command == "close":
        item = remediation.close(catalog, args.id, note=args.note)
        if args.json:
            emit_json(item.to_json())
        else:
            late = " (after its due date)" if item.closed_at and item.late_at(item.closed_at) \
                else ""
            print(f"remediation {item.id} closed (record {item.closed_record}){late}")
        return EXIT_OK
    with catalog.read_session() as session:
        found = [i for i in remediation.items(session) if args.all or i.closed_at is None]
    if args.json:
        emit_json([item.to_json() for item in found])
    else:
        for item in found:
            state = "closed" if item.closed_at else "open"
            print(f"{item.id}  {state:<6} {item.plan:<20} due {item.due.isoformat()}  "
                  f"{item.owner}: {item.text}")
    return EXIT_OK
