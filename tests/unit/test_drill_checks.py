"""Drill checks without restic: text and boolean expectations, the sqlite default database
kept inside the restored data, and sandbox trees removed whole."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drkit.drills.checks import StepContext, run_check
from drkit.drills.expect import evaluate, parse_expectation
from drkit.drills.plans import SqlCheck, SqliteIntegrityCheck

SNAP = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def holds(expect: str, value: object) -> bool:
    return evaluate(parse_expectation(expect), value, SNAP)[0]


def test_text_expectations() -> None:
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    assert holds(f"== '{md5}'", md5)
    assert not holds(f"== '{md5}'", md5[:-1] + "f")
    assert holds("!= 'draft'", "final") and not holds("!= 'draft'", "draft")
    assert holds("== 'it''s'", "it's")  # a quote is doubled, as in SQL
    assert holds("== ''", "") and not holds("== ''", None)
    assert holds("== '42'", 42)  # compared as the database printed it


def test_regex_and_boolean_expectations() -> None:
    assert holds(r"matches [0-9a-f]{32}", "d41d8cd98f00b204e9800998ecf8427e")
    assert not holds(r"matches [0-9a-f]{32}", "d41d8cd98f00b204e9800998ecf8427e!")  # whole
    for true in ("t", "true", "1", 1, True, "on"):
        assert holds("is true", true) and not holds("is false", true)
    for false in ("f", "false", "0", 0, False):
        assert holds("is false", false) and not holds("is true", false)
    ok, detail = evaluate(parse_expectation("is true"), "maybe", SNAP)
    assert not ok and "not a boolean" in detail
    with pytest.raises(ValueError, match="not a regular expression"):
        parse_expectation("matches [unclosed")
    with pytest.raises(ValueError, match="== 'text'"):
        parse_expectation("== unquoted text")


def test_sqlite_default_database_cannot_point_outside_the_restored_data(tmp_path: Path
                                                                        ) -> None:
    """A symlink restored where the target's file should be points at the live database:
    the default path goes through the same guard as an explicit one."""
    live = tmp_path / "production.sqlite"
    with closing(sqlite3.connect(live)) as db:
        db.execute("create table orders (id int)")
        db.execute("insert into orders values (1)")
        db.commit()
    restored = tmp_path / "sandbox" / "00-orders"
    restored.mkdir(parents=True)
    (restored / "orders.sqlite").symlink_to(live)
    context = StepContext(data_dir=restored, sandbox=tmp_path / "sandbox", snapshot_time=SNAP,
                          default_database=restored / "orders.sqlite")
    for check in (SqlCheck(sql="select count(*) from orders", expect="== 1"),
                  SqliteIntegrityCheck(sqlite_integrity=True)):
        result = run_check(check, context)
        assert result.status == "failed" and "outside the restored data" in result.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_remove_tree_removes_read_only_directories() -> None:
    """As an ordinary user (root ignores permissions): a restored tree with a read-only
    directory is removed entirely, where rmtree(ignore_errors=True) left it behind."""
    base = Path(tempfile.mkdtemp(prefix="drkit-ro-"))  # reachable by nobody, unlike tmp_path
    base.chmod(0o755)
    os.chown(base, 65534, 65534)  # the sandbox root is the user's own
    try:
        _remove_as_nobody(base / "sandbox")
    finally:
        shutil.rmtree(base)


def _remove_as_nobody(tree: Path) -> None:
    (tree / "ro" / "deep").mkdir(parents=True)
    (tree / "ro" / "deep" / "data").write_text("restored")
    (tree / "ro" / "deep").chmod(0o555)
    (tree / "ro").chmod(0o555)
    subprocess.run(["chown", "-R", "nobody", str(tree)], check=True)
    code = ("import sys; from pathlib import Path; from drkit.owned import remove_tree; "
            "remove_tree(Path(sys.argv[1]))")
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             sys.executable, "-c", code, str(tree)],
                            capture_output=True, text=True, env={**os.environ, "HOME": "/"})
    assert result.returncode == 0, result.stderr
    assert not tree.exists()


def test_mysql_dump_filter_disables_events_and_keeps_to_the_loaded_database() -> None:
    from drkit.drills.databases import _DISABLE_EVENTS, _OWN_DATABASE

    dump = "\n".join([
        "/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `tick` ON "
        "SCHEDULE EVERY 1 SECOND STARTS '2026-11-26 21:18:07' ON COMPLETION NOT PRESERVE "
        "ENABLE DO insert into shop.t values ('ON COMPLETION PRESERVE ENABLE ') */ ;;",
        "/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`%`*/ /*!50106 EVENT `keep` ON SCHEDULE AT "
        "'2027-01-01 00:00:00' ON COMPLETION PRESERVE ENABLE DO delete from shop.t */ ;;",
        "ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;",
        "/*!50003 ALTER DATABASE `we``ird` CHARACTER SET utf8mb4 */ ;;",
        "insert into t values ('ALTER DATABASE `shop` stays text');",
    ])
    out = subprocess.run(["sed", "-E", "-e", _DISABLE_EVENTS, "-e", _OWN_DATABASE],
                         input=dump, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "ON COMPLETION NOT PRESERVE DISABLE DO insert" in lines[0]
    assert lines[0].endswith("values ('ON COMPLETION PRESERVE ENABLE ') */ ;;")  # body kept
    assert "ON COMPLETION PRESERVE DISABLE DO delete" in lines[1]
    assert lines[2] == "ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci ;"
    assert lines[3] == "/*!50003 ALTER DATABASE CHARACTER SET utf8mb4 */ ;;"
    assert lines[4] == "insert into t values ('ALTER DATABASE `shop` stays text');"


def test_restored_data_is_never_reached_through_a_symlink(tmp_path: Path) -> None:
    """A files target whose path is a symlink to production's directory: restic stores the
    link; the checks must look at the restore directory, not follow it to production."""
    from drkit.drills.restore import data_root
    from drkit.restic.commands import Snapshot

    production = tmp_path / "data" / "app-release-42"
    production.mkdir(parents=True)
    into = tmp_path / "sandbox" / "00-files"
    (into / "srv").mkdir(parents=True)
    (into / "srv" / "app").symlink_to(production)
    snapshot = Snapshot.from_json({"id": "ab" * 32, "short_id": "abababab",
                                   "time": "2026-11-26T12:00:00Z", "paths": ["/srv/app"],
                                   "hostname": "h", "tags": []})
    assert data_root(snapshot, into) == into
    (into / "srv" / "app").unlink()
    (into / "srv" / "app").mkdir()
    assert data_root(snapshot, into) == into / "srv" / "app"


def test_pick_is_newest_or_a_random_window_with_one_clear_error() -> None:
    from pydantic import ValidationError

    from drkit.drills.plans import PlanStep, RandomPick

    assert PlanStep(target="t").pick == "newest"
    assert PlanStep.model_validate({"target": "t", "pick": {"random_within": "30d"}}).pick \
        == RandomPick(random_within=30 * 86400)
    with pytest.raises(ValidationError) as caught:
        PlanStep.model_validate({"target": "t", "pick": {"random_within": "soon"}})
    (error,) = caught.value.errors()
    assert "not a duration: 'soon'" in error["msg"]
    with pytest.raises(ValidationError):
        PlanStep.model_validate({"target": "t", "pick": "oldest"})
