"""Commands that watch for trouble before a restore does: ``ack`` (an anomaly looked at),
``metrics`` (Prometheus), ``check --spot`` and ``check --freshness``, and the capacity and
freshness parts of ``status``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from drkit.errors import EXIT_FAILED, EXIT_OK, BadRequestError


def cmd_ack(args: argparse.Namespace) -> int:
    """``ack RECORD_ID --reason TEXT``: record that a flagged backup was looked at."""
    from drkit.cli.commands import _config, emit_json
    from drkit.jobs.ack import acknowledge, check_ackable
    from drkit.jobs.common import open_config_catalog

    config = _config(args)
    catalog = open_config_catalog(config)
    wanted = list(dict.fromkeys(args.record_ids))
    if not args.reason.strip():
        raise BadRequestError("say why the anomaly is fine: --reason TEXT")
    check_ackable(catalog, wanted)  # all of them, or none
    done = []
    for record_id in wanted:  # each decided again under the chain's lock
        found = acknowledge(catalog, record_id, reason=args.reason)
        done.append(found.to_json())
        if not args.json:
            print(f"anomaly of backup record {found.record_id} ({found.target} -> "
                  f"{found.repository}) acknowledged (record {found.ack_record})")
    if args.json:
        emit_json(done)
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """``metrics``: every metric in Prometheus' text format on stdout."""
    from drkit.cli.commands import _config
    from drkit.drills.plans import load_plans
    from drkit.jobs.common import open_config_catalog
    from drkit.jobs.metrics import exposition

    config = _config(args)  # a bad config is a bad request (exit 2), said as such
    try:
        plans, catalog = load_plans(config), open_config_catalog(config)
    except Exception:
        # What a textfile collector should publish when drkit cannot read its catalog (a
        # file left from the last good run would say all is well), then the error, exit 1.
        sys.stdout.write("# HELP drkit_up 1 when the metrics could be read from the "
                         "catalog.\n# TYPE drkit_up gauge\n"
                         f'drkit_up{{host="{config.host}"}} 0.0\n')
        sys.stdout.flush()
        raise
    sys.stdout.write(exposition(config, plans, catalog))
    return EXIT_OK


def as_of(text: str | None) -> datetime | None:
    """``--as-of TIME`` (ISO 8601; UTC unless it says otherwise) as naive UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"--as-of {text!r}: give an ISO 8601 time, e.g. "
                              "2026-12-07T09:00:00Z") from None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def cmd_spot(args: argparse.Namespace) -> int:
    """``check --spot TARGET``."""
    from drkit.cli.commands import _catalog, _config, _journal, emit_json
    from drkit.jobs.spot import spot_check

    config = _config(args)
    run = spot_check(config, _catalog(config), _journal(config), args.spot,
                     repository=args.repositories[0] if args.repositories else None)
    if args.json:
        emit_json(run.to_json())
    else:
        print(f"spot check {run.target} in {run.repository} (snapshot "
              f"{(run.snapshot_id or '-')[:8]}): {run.status}; source {run.source_files} "
              f"files, snapshot {run.snapshot_files}; {run.sampled} sampled, "
              f"{len(run.differing)} differ; {run.changed_since} changed since the backup")
    if run.status != "passed":
        for error in run.errors:
            print(f"drkit: spot check {run.target}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def status_extras(config: Any, plans: Any, catalog: Any, *, freshness: bool
                  ) -> tuple[dict[str, Any], list[str]]:
    """What ``status`` adds: each repository's capacity forecast, and (``freshness``) the
    repositories' own snapshot lists judged against the RPOs. Returns the JSON parts and
    the problems (each one line)."""
    from datetime import timedelta

    from drkit.catalog.capacity import WINDOW_S, forecast, target_growth
    from drkit.catalog.inflight import utcnow

    now = utcnow()
    problems: list[str] = []
    with catalog.read_session() as session:
        forecasts = [forecast(config, session, name, now) for name in config.repositories]
        growth = target_growth(session, config.host, now - timedelta(seconds=WINDOW_S),
                               list(config.targets))
    problems += [f.describe() for f in forecasts if f.warn]
    out: dict[str, Any] = {
        "capacity": [f.to_json() for f in forecasts],
        "target_capacity": [{"target": target, "repository": repository, **figures,
                             "window_days": WINDOW_S / 86400}
                            for (target, repository), figures in sorted(growth.items())
                            if target in config.targets]}
    if freshness:  # read now, from each repository
        from drkit.errors import DrkitError, describe
        from drkit.jobs.common import restic_repository
        from drkit.jobs.freshness import judge, target_rpos
        from drkit.restic import commands
        from drkit.supervise import Limits

        rows: list[Any] = []
        rpos = target_rpos(plans)
        for name in config.repositories:
            try:
                listed = commands.snapshots(restic_repository(config, name),
                                            action=f"freshness of {name}",
                                            limits=Limits.after(config.timeouts.restic))
            except DrkitError as exc:
                problems.append(describe(exc))  # it names the action and repository
                continue
            from drkit.catalog.snapshots import failed_run_snapshots

            with catalog.read_session() as session:
                unusable = failed_run_snapshots(session, repository=name, host=config.host)
            rows += judge(config, name, listed, rpos, now, frozenset(unusable))
        problems += [row.describe() for row in rows if row.stale]
        out["freshness"] = [row.to_json() for row in rows]
    else:  # the verdicts the last checks recorded
        from drkit.jobs.freshness import last_verdicts

        verdicts = last_verdicts(config, catalog)
        out["freshness"] = [{**row, "as_of": verdict.get("as_of")}
                            for verdict in verdicts.values() for row in verdict.get("rows", [])]
        problems += [f"freshness (as of {verdict.get('as_of')}): {error}"
                     for verdict in verdicts.values() if verdict["status"] != "passed"
                     for error in verdict.get("errors", [])]
    return out, problems
