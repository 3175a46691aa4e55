"""One function a command: load what it needs, call the job, render, return the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drkit.errors import EXIT_BAD_REQUEST, EXIT_FAILED, EXIT_OK, BadRequestError, ConfigError


def dispatch(args: argparse.Namespace) -> int:
    """Run the command named in ``args``; return its exit code."""
    from drkit.cli import evidence, monitor, recovery

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "init": cmd_init, "validate": cmd_validate, "repo": cmd_repo_init,
        "backup": cmd_backup, "snapshots": cmd_snapshots, "status": cmd_status,
        "drill": cmd_drill, "check": cmd_check, "prune": cmd_prune, "audit": evidence.cmd_audit,
        "report": cmd_report, "serve": cmd_serve, "deploy": cmd_deploy, "worker": cmd_worker,
        "demo": cmd_demo,
        "restore": recovery.cmd_restore, "ls": recovery.cmd_ls,
        "recover": recovery.cmd_recover, "copy": recovery.cmd_copy,
        "keygen": evidence.cmd_keygen, "remediation": evidence.cmd_remediation,
        "ack": monitor.cmd_ack, "metrics": monitor.cmd_metrics,
    }
    return handlers[args.command](args)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _import_in_background(module: str) -> None:
    """Start importing ``module`` in a background thread. On a cold page cache most of an
    import is waiting for the disk, which the GIL does not serialise: a drill's catalog
    (SQLAlchemy) and its config (pydantic) load side by side, before restic can start."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=(module,), daemon=True,
                     name="drkit-import").start()


def _config(args: argparse.Namespace) -> Any:
    from drkit.config.loader import load_config

    return load_config(getattr(args, "config", None))


def _journal(config: Any) -> Any:
    from drkit.catalog.inflight import RunJournal

    return RunJournal(config.state_dir)


def _catalog(config: Any) -> Any:
    """Open the catalog, record runs that a crash cut short as interrupted, and clean up
    (and record) what drills that were killed left behind."""
    from drkit.drills.sandbox import sweep
    from drkit.jobs.common import open_config_catalog

    catalog = open_config_catalog(config, recover=_journal(config))
    sweep(config, catalog)
    return catalog


def cmd_init(args: argparse.Namespace) -> int:
    from drkit.starter import write_starter

    written = write_starter(Path(args.dir))
    for path in written:
        print(f"wrote {path}")
    print("next: export RESTIC_PASSWORD=..., edit the config, then 'drkit validate' and "
          "'drkit repo init'")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from drkit.config.loader import find_config_path
    from drkit.drills.plans import load_plans

    path = find_config_path(getattr(args, "config", None))
    try:
        config = _config(args)
        plans = load_plans(config)
    except ConfigError as exc:
        if args.json:
            emit_json({"valid": False, "config": str(path), "errors": exc.problems})
        else:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            count = len(exc.problems)
            print(f"drkit: {count} error{'s' if count != 1 else ''} in {path}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    summary = {"valid": True, "config": str(config.source),
               "repositories": list(config.repositories), "targets": list(config.targets),
               "plans": list(plans), "errors": []}
    if args.json:
        emit_json(summary)
    else:
        print(f"{config.source}: valid ({len(config.repositories)} repositories, "
              f"{len(config.targets)} targets, {len(plans)} recovery plans)")
    return EXIT_OK


def cmd_repo_init(args: argparse.Namespace) -> int:
    from drkit.cli import render
    from drkit.jobs.repo import init_repositories

    config = _config(args)
    results = init_repositories(config, _catalog(config), _journal(config), args.repositories)
    if args.json:
        emit_json({"repositories": [r.to_json() for r in results]})
    else:
        render.repo_init_table(results)
    failed = [r.repository for r in results if r.error]
    if failed:
        print(f"drkit: repo init failed for: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from drkit.cli.progress import backup_progress
    from drkit.jobs.backup import run_backups
    from drkit.jobs.common import Recorder, select_names

    config = _config(args)
    select_names(args.targets, config.targets, "target")  # bad names: exit 2, nothing recorded
    # The catalog opens (and the table renderer imports) while restic already runs.
    recorder = None if args.dry_run else Recorder.for_config(config)
    with backup_progress() as hook:
        runs = run_backups(config, recorder, args.targets, dry_run=args.dry_run,
                           on_progress=hook)
    from drkit.cli import render

    if not runs:
        if config.targets:
            raise BadRequestError(f"no target of this host ({config.host}) in the config: "
                                  f"each runs on its own host")
        raise BadRequestError("no targets declared in the config")
    if args.json:
        emit_json({"runs": [run.to_json() for run in runs]})
    else:
        render.backup_table(runs)
    failed = [f"{r.target} -> {r.repository}" for r in runs if r.status != "succeeded"]
    if failed:
        print(f"drkit: {len(failed)} of {len(runs)} backups failed: {', '.join(failed)}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_snapshots(args: argparse.Namespace) -> int:
    from drkit.cli import render
    from drkit.jobs.snapshots import list_snapshots

    config = _config(args)
    rows, errors = list_snapshots(config, args.targets, all_hosts=args.all_hosts)
    if args.json:
        emit_json([row.to_json() for row in rows])
    else:
        render.snapshots_table(rows)
    for error in errors:
        print(f"drkit: error: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from drkit.cli.monitor import status_extras
    from drkit.drills.plans import load_plans
    from drkit.jobs.status import (
        evidence_status,
        plan_statuses,
        repository_checks,
        target_statuses,
    )

    config = _config(args)
    plans = load_plans(config)
    catalog = _catalog(config)
    statuses = target_statuses(config, catalog, plans)
    drills = plan_statuses(plans, catalog)
    checks = repository_checks(config, catalog)
    evidence = evidence_status(config, catalog)
    extras, problems = status_extras(config, plans, catalog, freshness=args.freshness)
    if args.json:
        emit_json({"targets": [s.to_json() for s in statuses],
                   "repositories": [c.to_json() for c in checks],
                   "plans": [p.to_json() for p in drills],
                   "evidence": evidence.to_json() if evidence else None, **extras})
    else:
        from drkit.cli import render  # rich: only for people, not for --json

        render.status_table(statuses)
        render.checks_table(checks)
        if drills:
            render.plans_table(drills)
        if evidence is not None:
            print(f"evidence: chain head #{evidence.head_seq}, newest signed checkpoint "
                  f"#{evidence.checkpoint_seq or '-'}"
                  + (f", anchored {evidence.anchored}" if evidence.anchored else
                     ", not in the evidence bucket" if evidence.bucket else "")
                  + ("" if evidence.healthy else "  (NOT COVERED: see the errors of the "
                                                  "last runs, or run `drkit audit verify`)"))
        render.capacity_lines(extras["capacity"])
        if extras.get("freshness"):
            render.freshness_table(extras["freshness"], title="freshness" + (
                "" if args.freshness else " (the last check's verdict)"))
    for problem in problems:
        print(f"drkit: {problem}", file=sys.stderr)
    healthy = (all(s.healthy for s in statuses) and all(p.healthy for p in drills)
               and all(c.last_check_status != "failed" for c in checks)
               and (evidence is None or evidence.healthy) and not problems)
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from drkit.cli import render
    from drkit.jobs.check import run_checks

    if args.spot is not None:
        from drkit.cli.monitor import cmd_spot

        return cmd_spot(args)
    from drkit.cli.monitor import as_of

    when = as_of(args.as_of)
    if args.freshness and args.read_data_subset:
        raise BadRequestError("--freshness reads no data: drop --read-data-subset")
    if when is not None and not args.freshness:
        raise BadRequestError("--as-of applies to --freshness only (an integrity check "
                              "is of now)")
    config = _config(args)
    runs = run_checks(config, _catalog(config), _journal(config), args.repositories,
                      subset=args.read_data_subset, freshness_only=args.freshness, now=when)
    if args.json:
        emit_json({"checks": [run.to_json() for run in runs]})
    elif args.freshness:
        render.freshness_table([row for run in runs for row in (run.freshness or {}).get(
            "rows", [])], title="freshness" + (f" as of {when}Z" if when else ""))
    else:
        render.check_table(runs)
    failed = [run.repository for run in runs if run.status != "passed"]
    if failed:
        print(f"drkit: check failed for: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from drkit.cli import render
    from drkit.jobs.prune import run_prunes

    config = _config(args)
    # A dry run records nothing, but reads which snapshots the failed runs left.
    runs = run_prunes(config, _catalog(config), _journal(config), args.targets,
                      dry_run=args.dry_run)
    if args.json:
        emit_json({"prunes": [run.to_json() for run in runs]})
    else:
        render.prune_table(runs)
    failed = [f"{r.target} in {r.repository}" for r in runs if r.status != "succeeded"]
    if failed:
        print(f"drkit: prune failed for: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_drill(args: argparse.Namespace) -> int:
    from drkit.drills.plans import find_plan, load_plans
    from drkit.drills.runner import run_drill
    from drkit.jobs.common import Recorder

    _import_in_background("drkit.catalog.store")  # SQLAlchemy, while pydantic loads
    config = _config(args)
    recorder = Recorder.for_config(config)
    recorder.catalog.start()  # opened in the background while the plans load
    plan = find_plan(load_plans(config), args.plan)
    result = run_drill(config, plan, recorder, snapshot=args.snapshot,
                       keep_sandbox=args.keep_sandbox, prove_checks=args.prove_checks,
                       scenario=args.scenario, approved_by=args.approved_by,
                       participants=tuple(args.participant))
    if args.json:
        emit_json(result.to_json())
    else:
        from drkit.cli import render

        render.drill_summary(result)
    if result.status != "passed":
        print(f"drkit: drill {plan.name}: {result.status}"
              + (f": {result.error}" if result.error else ""), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from drkit.drills.plans import load_plans
    from drkit.jobs.report import parse_period, run_report, scope_for

    if args.json and args.format not in (None, "json"):
        raise BadRequestError("--json and --format disagree; give one of them")
    fmt = "json" if args.json else (args.format or "html")
    if args.subject == "drill" or args.record_id is not None:
        return _drill_report(args, fmt)
    since, until = parse_period(args.since, args.until)
    config = _config(args)
    plans = load_plans(config)
    scope = scope_for(config, plans, since, until, plan_names=args.plan,
                      target_names=args.target)
    run = run_report(config, plans, _catalog(config), scope, fmt=fmt, output=args.output)
    report = run.report
    bad = report.non_compliant
    where = str(run.path) if run.path else "stdout"
    print(f"drkit: report ({fmt}, {run.records} records, {report.since:%Y-%m-%d %H:%M} to "
          f"{report.until:%Y-%m-%d %H:%M} UTC, chain head #{report.chain_head_seq}) "
          f"written to {where}", file=sys.stderr)
    for upload in run.uploads:
        print(f"drkit: uploaded s3://{upload['bucket']}/{upload['key']}"
              + (f" (retained until {upload['retain_until']})" if upload["retain_until"] else
                 " (no object lock on the bucket)"), file=sys.stderr)
    broken = report.audit is not None and not report.audit.get("intact")
    if broken:
        print(f"drkit: {report.verdict_line}", file=sys.stderr)
    if bad:
        print(f"drkit: {len(bad)} of {len(report.evaluated)} evaluated controls non-compliant: "
              + ", ".join(f"{c.control} {c.subject}" for c in bad), file=sys.stderr)
    if run.path is not None:
        print(run.path)
    if run.status != "succeeded":
        print(f"drkit: error: {run.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if broken or (bad and args.strict) else EXIT_OK


def _drill_report(args: argparse.Namespace, fmt: str) -> int:
    from drkit.jobs.drill_report import run_drill_report

    if args.subject != "drill" or args.record_id is None:
        raise BadRequestError("a drill's report is `drkit report drill RECORD_ID`")
    if args.since or args.until or args.plan or args.target:
        raise BadRequestError("--since, --until, --plan and --target are for period reports")
    config = _config(args)
    run = run_drill_report(config, _catalog(config), args.record_id, fmt=fmt,
                           output=args.output)
    print(f"drkit: DR test report of drill {args.record_id} ({fmt}) written to "
          f"{run.path or 'stdout'}", file=sys.stderr)
    audit = run.report.audit or {}
    if not audit.get("intact"):
        print(f"drkit: {run.report.verdict_line}", file=sys.stderr)
    if run.path is not None:
        print(run.path)
    if run.status != "succeeded":
        print(f"drkit: error: {run.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if audit.get("intact") else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    from drkit.drills.plans import load_plans
    from drkit.flows.serve import serve

    config = _config(args)
    if args.server_restarts < 0:
        raise BadRequestError("--server-restarts must be 0 or more")
    return serve(config, load_plans(config), _catalog(config), metrics=(
        (args.metrics_address, args.metrics_port) if args.metrics_port is not None else None),
        server_restarts=args.server_restarts)


def cmd_deploy(args: argparse.Namespace) -> int:
    from drkit.drills.plans import load_plans
    from drkit.flows.serve import deploy

    config = _config(args)
    return deploy(config, load_plans(config), args.work_pool)


def cmd_worker(args: argparse.Namespace) -> int:
    from drkit.flows.serve import worker

    if args.limit is not None and args.limit < 1:
        raise BadRequestError("--limit must be 1 or more")
    return worker(_config(args), args.work_pool, args.limit)


def cmd_demo(args: argparse.Namespace) -> int:
    from drkit.demo import run_demo

    return run_demo(keep=args.keep, verbose=bool(getattr(args, "verbose", False)))
