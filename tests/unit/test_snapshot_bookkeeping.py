"""What the catalog says about snapshots: good ones, what failed runs left, what prunes removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drkit.catalog import snapshots as known
from drkit.catalog.store import Catalog, NewRecord, open_catalog

T0 = datetime(2026, 11, 1, 12, 0, 0)


def catalog(tmp_path: Path, host: str = "alpha") -> Catalog:
    return open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}", hostname=host)


def backup(cat: Catalog, status: str, snapshot: str | None, minute: int,
           **evidence: Any) -> None:
    when = T0 + timedelta(minutes=minute)
    cat.append(NewRecord(kind="backup", status=status, target="t", repository="r",
                         snapshot_id=snapshot, started_at=when,
                         finished_at=when + timedelta(seconds=30), evidence=evidence))


def prune(cat: Catalog, minute: int, **evidence: Any) -> None:
    when = T0 + timedelta(minutes=minute)
    cat.append(NewRecord(kind="prune", status="failed", target="t", repository="r",
                         started_at=when, finished_at=when, evidence=evidence))


def test_the_newest_good_snapshot_is_the_catalogs_choice(tmp_path: Path) -> None:
    alpha, beta = catalog(tmp_path, "alpha"), catalog(tmp_path, "beta")
    backup(alpha, "succeeded", "aaaa1111", 0)
    backup(alpha, "failed", "torn2222", 1, snapshot_state="torn")
    backup(beta, "succeeded", "beta3333", 2)  # another deployment, same target name
    with alpha.read_session() as session:
        good = known.newest_good_snapshot(session, target="t", repository="r", host="alpha")
    assert good is not None and good.snapshot_id == "aaaa1111"
    prune(alpha, 3, removed=[{"id": "aaaa1111aaaa", "time": "x"}])
    with alpha.read_session() as session:
        assert known.newest_good_snapshot(session, target="t", repository="r",
                                          host="alpha") is None


def test_a_torn_snapshot_whose_removal_is_uncertain_is_forgotten_again(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    backup(cat, "failed", "torn1111", 0, snapshot_state="torn")
    prune(cat, 1, removal_uncertain=["torn1111"], removed=[])
    with cat.read_session() as session:
        # Forgetting a snapshot that is already gone is harmless; keeping a torn one is not.
        assert known.unusable_snapshots(session, target="t", repository="r",
                                        host="alpha").forget == ["torn1111"]
    prune(cat, 2, forgotten_failed=["torn1111"])
    with cat.read_session() as session:
        assert known.unusable_snapshots(session, target="t", repository="r",
                                        host="alpha").forget == []


def test_an_incomplete_backup_is_forgotten_only_once_a_later_one_succeeded(
        tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    backup(cat, "failed", "part1111", 0, snapshot_state="incomplete")
    backup(cat, "failed", "torn2222", 1, snapshot_state="torn")
    with cat.read_session() as session:
        # One unreadable file in every run must not leave the target with no snapshot at all.
        held = known.unusable_snapshots(session, target="t", repository="r", host="alpha")
    assert held.forget == ["torn2222"] and held.held_back == ["part1111"]
    backup(cat, "succeeded", "good3333", 2)
    with cat.read_session() as session:
        later = known.unusable_snapshots(session, target="t", repository="r", host="alpha")
    assert later.forget == ["part1111", "torn2222"] and later.held_back == []


def test_a_snapshot_nobody_recorded_during_a_run_cut_short_is_unusable(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    backup(cat, "succeeded", "good1111", 0)
    cat.append(NewRecord(kind="backup", status="interrupted", target="t", repository="r",
                         started_at=T0 + timedelta(minutes=10),
                         finished_at=T0 + timedelta(minutes=40)))
    cat.append(NewRecord(kind="backup", status="failed", target="t", repository="r",
                         started_at=T0 + timedelta(minutes=60),
                         finished_at=T0 + timedelta(minutes=70), error="timed out"))
    present = [("good1111ffff", (T0 + timedelta(minutes=0, seconds=5)).replace(tzinfo=UTC)),
               ("lost2222ffff", (T0 + timedelta(minutes=11)).replace(tzinfo=UTC)),
               ("other333ffff", (T0 + timedelta(minutes=50)).replace(tzinfo=UTC)),
               ("stopped4ffff", (T0 + timedelta(minutes=61)).replace(tzinfo=UTC))]
    with cat.read_session() as session:
        assert known.had_runs_cut_short(session, target="t", repository="r", host="alpha")
        assert known.unrecorded_in_runs_cut_short(
            session, target="t", repository="r", host="alpha",
            present=present) == ["lost2222ffff", "stopped4ffff"]


def test_expected_snapshots_are_this_hosts_own(tmp_path: Path) -> None:
    """Two deployments sharing one catalog, each with a repository called "r" of its own."""
    alpha, beta = catalog(tmp_path, "alpha"), catalog(tmp_path, "beta")
    backup(alpha, "succeeded", "alpha111", 0)
    backup(beta, "succeeded", "beta2222", 1)
    with alpha.read_session() as session:
        assert set(known.expected_snapshots(session, "r", "alpha")) == {"alpha111"}
