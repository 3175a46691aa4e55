"""The commands that put data back: ``restore``, ``ls`` (browse first), ``recover``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drkit.cli.commands import _config, emit_json
from drkit.errors import EXIT_FAILED, EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from drkit.drills.plans import find_plan, load_plans
    from drkit.jobs.common import Recorder
    from drkit.jobs.recover import recover_plan
    from drkit.units import human_bytes

    config = _config(args)
    plan = find_plan(load_plans(config), args.plan)
    from drkit.jobs.report import parse_moment

    at = parse_moment(args.at) if args.at else None
    result = recover_plan(config, Recorder.for_config(config), plan, dry_run=args.dry_run,
                          confirm=args.confirm, safety_copy=not args.no_safety_copy,
                          reason=args.reason, at=at, repository=args.repository)
    if args.json:
        emit_json(result.to_json())
    else:
        for step in result.steps:
            print(f"{step.target}: snapshot {(step.snapshot_id or '')[:8]} of "
                  f"{(step.snapshot_time or '?')[:19]} from {step.repository} "
                  f"({step.chosen_by}) -> {step.destination}")
            for item in step.replaces:
                if item["type"] == "database":
                    sessions = len(item["sessions"])
                    print(f"  replaces database {item['name']} ({human_bytes(item['bytes'])}, "
                          f"{item['objects'] if item['objects'] is not None else '?'} objects"
                          + (f", {sessions} session(s) connected, to be ended" if sessions
                             else "") + f"; {item['how']})")
                else:
                    print(f"  replaces {item['type']} {item['name']} "
                          f"({human_bytes(item['bytes'])}, moved aside)")
            for name in step.adds:
                print(f"  adds {name}")
            if step.needs_bytes is not None:
                print(f"  stages {human_bytes(step.needs_bytes)} on the filesystem of "
                      f"{step.space_on}")
            if step.safety_snapshot:
                print(f"  safety copy: snapshot {step.safety_snapshot[:8]} in "
                      f"{step.repository}")
            if not result.dry_run:
                print(f"  {step.status}" + (f": {step.error}" if step.error else ""))
        for problem in result.problems:
            print(f"problem: {problem}")
        if result.dry_run:
            print(f"dry run: nothing changed; recover exactly these snapshots with "
                  f"--confirm {result.plan} --at {result.at}"
                  + (f" --repository {args.repository}" if args.repository else ""))
    if result.dry_run and result.problems:
        print(f"drkit: recover {result.plan}: the real run would stop: "
              + "; ".join(result.problems), file=sys.stderr)
        return EXIT_FAILED
    if result.status not in ("succeeded", "dry_run"):
        print(f"drkit: recover {result.plan}: {result.status}: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    if not result.dry_run and not args.json:
        print(f"recovered {result.plan} in {result.rto_achieved_s:.1f} s "
              f"(RTO objective {result.rto_objective_s:.0f} s)")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    from drkit.jobs.browse import browse
    from drkit.jobs.common import Recorder

    config = _config(args)
    found = browse(config, Recorder.for_config(config), args.target, path=args.path,
                   snapshot=args.snapshot, repository=args.repository)
    if args.json:
        emit_json(found.to_json())
        return EXIT_OK
    from drkit.units import human_bytes

    snap = found.snapshot
    print(f"snapshot {snap.short_id} of {snap.time:%Y-%m-%d %H:%M:%S} UTC in "
          f"{found.repository} ({found.chosen_by})")
    for node in found.nodes:
        kind = str(node.get("type", "?"))
        size = human_bytes(int(node.get("size", 0))) if kind == "file" else "-"
        link = f" -> {node['linktarget']}" if node.get("linktarget") else ""
        print(f"{kind:<8} {size:>10}  {str(node.get('mtime', ''))[:19]:<19}  "
              f"{node.get('path')}{link}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from drkit.cli.progress import restore_progress
    from drkit.errors import BadRequestError
    from drkit.jobs.common import Recorder
    from drkit.jobs.report import parse_moment

    config = _config(args)
    at = parse_moment(args.at) if args.at else None
    recorder = Recorder.for_config(config)
    with restore_progress(f"restore {args.target}") as progress:
        if args.into_dsn is not None:
            from drkit.jobs.restore_db import restore_database

            if args.include:
                raise BadRequestError("--include restores part of a files target; a "
                                      "database target's dump is restored whole")
            result = restore_database(config, recorder, args.target, into=args.into_dsn,
                                      repository=args.repository, snapshot=args.snapshot,
                                      at=at, overwrite=args.overwrite, progress=progress)
        else:
            from drkit.jobs.restore import restore_target

            result = restore_target(config, recorder, args.target, to=Path(args.to),
                                    repository=args.repository, snapshot=args.snapshot, at=at,
                                    overwrite=args.overwrite, include=args.include,
                                    progress=progress)
    if args.json:
        emit_json(result.to_json())
    if result.status != "succeeded":
        print(f"drkit: restore {result.target}: {result.status}: {result.error}",
              file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        aside = "".join(f"; {name} moved aside to {kept}"
                        for name, kept in result.moved_aside.items())
        print(f"restored {result.target} (snapshot {(result.snapshot_id or '')[:8]} of "
              f"{result.snapshot_time:%Y-%m-%d %H:%M:%S} UTC, from {result.repository}) into "
              f"{result.destination}: {_some(result.placed)}{aside}")
    return EXIT_OK


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def cmd_copy(args: argparse.Namespace) -> int:
    from drkit.jobs.common import Recorder
    from drkit.jobs.copy import copy_repositories

    config = _config(args)
    runs = copy_repositories(config, Recorder.for_config(config), args.repositories)
    if args.json:
        emit_json([run.to_json() for run in runs])
    else:
        for run in runs:
            what = {"up_to_date": "up to date", "succeeded":
                    f"{len(run.copied)} snapshot(s) copied", "failed": "failed"}
            print(f"copy {run.target} {run.source} -> {run.repository}: {what[run.status]}")
    failed = [run for run in runs if run.status == "failed"]
    if failed:
        which = ", ".join(f"{r.target} -> {r.repository}" for r in failed)
        print(f"drkit: copy failed for: {which}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
