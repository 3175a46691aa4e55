"""The ``drkit`` command line: argument parsing and the one error funnel.

Only argparse is imported at start-up; each command imports what it needs when it runs, so
``drkit --help`` stays fast and never loads Prefect, boto3 or SQLAlchemy.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from drkit import __version__

log = logging.getLogger("drkit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2 for bad flags, which is our "bad request" code too.
        self.print_usage(sys.stderr)
        self.exit(2, f"drkit: error: {message}\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r} (1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (commands, flags and help texts)."""
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $DRKIT_CONFIG, else ./config/drkit.yaml)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logs, and a traceback on errors")
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true",
                         help="print one JSON document on stdout (logs stay on stderr)")

    parser = _Parser(
        prog="drkit", parents=[common],
        description="Back up with restic to S3, prove the backups restore, keep the evidence.",
        epilog="Exit codes: 0 all held, 1 something failed or breached, 2 bad request.")
    parser.add_argument("--version", action="version", version=f"drkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("init", parents=[common], help="write a commented starter config")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")

    sub.add_parser("validate", parents=[common, as_json],
                   help="validate the config; print every error with file, line and path")

    repo = sub.add_parser("repo", parents=[common], help="repository commands")
    repo_sub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND",
                                   parser_class=_Parser)
    p = repo_sub.add_parser("init", parents=[common, as_json],
                            help="create restic repositories (and S3 buckets)")
    p.add_argument("repositories", nargs="*", metavar="REPO")

    p = sub.add_parser("backup", parents=[common, as_json],
                       help="back up targets (all by default) to each of their repositories")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be backed up; write nothing, record nothing")

    p = sub.add_parser("snapshots", parents=[common, as_json],
                       help="list this host's snapshots in the repositories")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--all-hosts", action="store_true",
                   help="also the snapshots other hosts (deployments) made")

    p = sub.add_parser("check", parents=[common, as_json],
                       help="repository integrity (restic check) and storage posture")
    p.add_argument("repositories", nargs="*", metavar="REPO")
    p.add_argument("--read-data-subset", metavar="N%|n/m",
                   help="read this part of the data (default: the configured rotating slice)")
    p.add_argument("--freshness", action="store_true",
                   help="only the repositories' own snapshot lists against each target's "
                        "RPO, every host's (recorded; every check does it too)")
    p.add_argument("--as-of", metavar="TIME",
                   help="with --freshness: judge as of TIME (ISO 8601; recorded)")
    p.add_argument("--spot", metavar="TARGET",
                   help="compare a random sample of TARGET's source files with its newest "
                        "good snapshot (REPO: which repository, default its first)")

    p = sub.add_parser("prune", parents=[common, as_json],
                       help="apply retention (restic forget, prune) to this host's snapshots")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be removed; remove and record nothing")

    p = sub.add_parser("drill", parents=[common, as_json],
                       help="rehearse one recovery plan: restore, verify, score RPO/RTO")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--snapshot", metavar="ID", help="restore this snapshot (id or prefix) "
                   "for the step whose target has it; the others use their newest")
    p.add_argument("--keep-sandbox", action="store_true",
                   help="leave the restored data in the sandbox to look at")
    p.add_argument("--prove-checks", action="store_true",
                   help="after the checks pass, damage the restored copy (flip bytes in a "
                        "file, delete rows) and require them to fail; if they still pass the "
                        "drill is checks_too_weak")
    p.add_argument("--scenario", metavar="TEXT",
                   help="what this drill rehearses (default: the plan's scenario)")
    p.add_argument("--approved-by", metavar="NAME", help="who approved the drill")
    p.add_argument("--participant", action="append", default=[], metavar="NAME",
                   help="who took part (repeatable)")

    p = sub.add_parser("copy", parents=[common, as_json],
                       help="restic copy of the catalog's good snapshots into copy "
                            "repositories (copy_from)")
    p.add_argument("repositories", nargs="*", metavar="REPO")

    p = sub.add_parser("recover", parents=[common, as_json],
                       help="the real recovery: each step of a plan back to its recover_to")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be replaced, change nothing")
    p.add_argument("--confirm", metavar="PLAN",
                   help="the plan's name again: a recovery overwrites production")
    p.add_argument("--no-safety-copy", action="store_true",
                   help="do not back up what is about to be overwritten first")
    p.add_argument("--reason", metavar="TEXT", help="why (kept in the record)")
    p.add_argument("--at", metavar="TIME",
                   help="each step's newest good backup completed by TIME (to go back before "
                        "the damage; a dry run prints the --at that repeats its choice)")
    p.add_argument("--repository", metavar="NAME",
                   help="recover from this repository (a surviving copy)")

    p = sub.add_parser("ls", parents=[common, as_json],
                       help="list what a target's snapshot holds, without restoring it")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="only this path (absolute as in the snapshot, or relative to the "
                        "target's backed-up path)")
    p.add_argument("--snapshot", metavar="ID", help="this snapshot (id or prefix)")
    p.add_argument("--repository", metavar="NAME",
                   help="from this repository (default: the target's first)")

    p = sub.add_parser("restore", parents=[common, as_json],
                       help="put one target's data back into a directory (or, for a "
                            "database target, a database) you choose")
    p.add_argument("target", metavar="TARGET")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="PATH",
                       help="the directory to restore into (new or empty, unless --overwrite)")
    where.add_argument("--into-dsn", metavar="env:NAME|file:PATH|DSN",
                       help="a database target: load its dump into the database this DSN "
                            "names (new or empty, unless --overwrite); give the DSN through "
                            "an environment variable or a file, or without a password")
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="only this path of the snapshot and what is under it (as drkit ls "
                        "shows it; repeatable; files targets)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot", metavar="ID", help="this snapshot (id or prefix)")
    which.add_argument("--at", metavar="TIME",
                       help="the newest good backup completed by TIME (ISO date or date-time, "
                            "UTC unless it says otherwise)")
    p.add_argument("--repository", metavar="NAME",
                   help="restore from this repository (default: the target's first)")
    p.add_argument("--overwrite", action="store_true",
                   help="restore into a directory that is not empty: each entry the restore "
                        "replaces is moved aside to NAME.before-restore-TIME, never deleted "
                        "(a PostgreSQL database is renamed NAME_before_restore_TIME)")

    p = sub.add_parser("status", parents=[common, as_json],
                       help="per target: last good backup, its age against the RPO, last "
                            "drill, open anomalies; capacity per repository")
    p.add_argument("--freshness", action="store_true",
                   help="also read each repository's own snapshot list (every host's) and "
                        "judge each target/host against its RPO")

    p = sub.add_parser("report", parents=[common],
                       help="compliance report for a period: summary, controls, every record "
                            "(or `report drill RECORD_ID`: the DR test report of one drill)")
    p.add_argument("subject", nargs="?", choices=("drill",), metavar="drill",
                   help="the DR test report of one drill (give its RECORD_ID)")
    p.add_argument("record_id", nargs="?", type=int, metavar="RECORD_ID")
    p.add_argument("--since", metavar="AGE|DATE",
                   help="start of the period: a duration back from --until (30d, 12h) or a "
                        "date (default: 30d)")
    p.add_argument("--until", metavar="DATE",
                   help="end of the period (a bare date includes that day; default: now)")
    p.add_argument("--plan", action="append", default=[], metavar="P",
                   help="only this plan and the targets it restores (repeatable)")
    p.add_argument("--target", action="append", default=[], metavar="T",
                   help="only this target and the plans that restore it (repeatable)")
    p.add_argument("--format", choices=("html", "pdf", "csv", "json", "md"), default=None,
                   help="default: html")
    p.add_argument("--output", metavar="FILE",
                   help="where to write it ('-': stdout; default: stdout for csv/json/md, "
                        "the reports directory for html/pdf)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any control is non-compliant (for CI gates)")

    audit = sub.add_parser("audit", parents=[common], help="the catalog's evidence chain")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND",
                                     parser_class=_Parser)
    p = audit_sub.add_parser("verify", parents=[common, as_json],
                             help="re-hash the record chain, check every signed checkpoint "
                                  "and its anchors; say where it breaks, if anywhere")
    p.add_argument("--offline", action="store_true",
                   help="do not read the anchors in the evidence bucket (this host's anchor "
                        "file and the catalog's checkpoints only)")
    p = audit_sub.add_parser("export", parents=[common, as_json],
                             help="write an evidence bundle anyone can verify offline "
                                  "(sha256sum, openssl, jq, or its own verify.py)")
    p.add_argument("--since", metavar="AGE|DATE", help="start of the period (default: 30d)")
    p.add_argument("--until", metavar="DATE", help="end of the period (default: now)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="a new (or empty) directory for the bundle")

    rem = sub.add_parser("remediation", parents=[common],
                         help="items a drill found to fix: add, close, list (records)")
    rem_sub = rem.add_subparsers(dest="remediation_command", metavar="SUBCOMMAND",
                                 parser_class=_Parser)
    p = rem_sub.add_parser("add", parents=[common, as_json], help="open an item for a plan")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("text", nargs="+", metavar="TEXT", help="what must be done")
    p.add_argument("--owner", required=True, metavar="WHO")
    p.add_argument("--due", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--drill", type=int, metavar="RECORD_ID",
                   help="the drill (record id) that found it")
    p = rem_sub.add_parser("close", parents=[common, as_json], help="close an item")
    p.add_argument("id", metavar="ID")
    p.add_argument("--note", metavar="TEXT", help="what was done")
    p = rem_sub.add_parser("list", parents=[common, as_json], help="the open items")
    p.add_argument("--all", action="store_true", help="closed ones too")

    p = sub.add_parser("ack", parents=[common, as_json],
                       help="acknowledge a backup flagged as an anomaly (recorded)")
    p.add_argument("record_ids", type=int, nargs="+", metavar="RECORD_ID",
                   help="the flagged backup records (one run flags each repository)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why it is fine")

    sub.add_parser("metrics", parents=[common],
                   help="Prometheus metrics (text format) for node_exporter's textfile "
                        "collector")

    p = sub.add_parser("keygen", parents=[common],
                       help="write an Ed25519 key pair for signing the chain's checkpoints")
    p.add_argument("--output", default=".", metavar="DIR",
                   help="where to write evidence.key and evidence.pub (default: .)")

    p = sub.add_parser("serve", parents=[common],
                       help="run every schedule in the config through Prefect (embedded "
                            "server unless PREFECT_API_URL is set)")
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="also serve Prometheus metrics at http://ADDR:PORT/metrics")
    p.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDR",
                   help="the metrics listener's address (default: 127.0.0.1)")
    p.add_argument("--server-restarts", type=int, default=3, metavar="N",
                   help="restart a dead embedded Prefect server up to N times, then stop "
                        "with exit 1 (default: 3)")
    p = sub.add_parser("deploy", parents=[common],
                       help="register the site's schedules on a Prefect work pool (scale-out: "
                            "'drkit worker' on each host)")
    p.add_argument("--work-pool", metavar="NAME", help="default: drkit-SITE")
    p = sub.add_parser("worker", parents=[common],
                       help="run this host's Prefect worker: the site's pool, queues "
                            "host-HOST and any")
    p.add_argument("--work-pool", metavar="NAME", help="default: drkit-SITE")
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most N flow runs at once on this host")

    p = sub.add_parser("demo", parents=[common],
                       help="the whole loop on a local S3 endpoint, in a temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    return parser


class _Redacting(logging.Formatter):
    """Masks every secret drkit knows in every log line (a second line of defence). Without
    --verbose, other libraries' lines (Prefect's, while serving) come without traceback."""

    def __init__(self, fmt: str, *, verbose: bool) -> None:
        super().__init__(fmt)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        from drkit.config.secrets import redact

        if not self.verbose and record.exc_info and not record.name.startswith("drkit"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None})
            text = redact(super().format(record))
            return text if "(run with --verbose" in text else \
                f"{text} (run with --verbose for the traceback)"
        return redact(super().format(record))


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting("drkit: %(message)s" if not verbose else
                                    "%(asctime)s %(name)s %(levelname)s: %(message)s",
                                    verbose=verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "sqlalchemy", "weasyprint",
                  "fontTools", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _sigterm_as_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 failed, 2 bad request)."""
    try:
        return _run(argv)
    finally:
        # Interpreter shutdown spends ~0.3 s collecting pydantic/SQLAlchemy objects that die
        # with the process anyway; freezing them skips that (finalizers still run).
        gc.freeze()


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _configure_logging(verbose)
    if args.command is None or (args.command == "repo" and args.repo_command is None) or (
            args.command == "audit" and args.audit_command is None) or (
            args.command == "remediation" and args.remediation_command is None):
        parser.print_help(sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    # drkit uses no pydantic plugins; looking for them reads every installed package's
    # metadata (~25 ms on a cold start, on every command).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from drkit.errors import DrkitError

    try:
        from drkit.cli import commands

        return commands.dispatch(args)
    except DrkitError as exc:
        if verbose:
            log.exception("traceback")
        from drkit.config.secrets import redact

        print(f"drkit: error: {redact(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"drkit: hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("drkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # the last resort: still one line, traceback only when asked
        if verbose:
            log.exception("internal error")
        print(f"drkit: internal error: {type(exc).__name__}: {exc} "
              "(run with --verbose for the traceback)", file=sys.stderr)
        return 1
    finally:
        _finish_evidence()


def _finish_evidence() -> None:
    """The signed checkpoint of what this command appended to the catalog (if it opened
    one): one place for every command. Its problems are logged, never raised."""
    if "drkit.catalog.store" not in sys.modules:
        return  # no catalog was opened: nothing to sign (and nothing to import)
    try:
        from drkit.jobs.evidence import finish

        finish()
    except Exception as exc:
        log.error("evidence: no checkpoint written: %s: %s", type(exc).__name__, exc)
