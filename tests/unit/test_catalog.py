"""The catalog's chain: every record hashes its content and links to the one before it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from drkit.catalog.chain import record_hash
from drkit.catalog.inflight import RunJournal, utcnow
from drkit.catalog.models import GENESIS_HASH, ChainHead, Record
from drkit.catalog.store import NewRecord, open_catalog

COLUMNS = [column.name for column in Record.__table__.columns]


def verify_chain(records: list[Record]) -> None:
    """Recompute each hash from the stored columns and check the links."""
    previous = GENESIS_HASH
    for expected_seq, record in enumerate(records, start=1):
        assert record.seq == expected_seq
        assert record.prev_hash == previous
        fields = {c: getattr(record, c) for c in COLUMNS}
        assert record_hash(fields) == record.hash
        previous = record.hash


def all_records(catalog) -> list[Record]:  # type: ignore[no-untyped-def]
    with catalog.session() as session:
        return list(session.scalars(select(Record).order_by(Record.seq)))


def test_records_form_a_hash_chain(catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    now = utcnow()
    for index in range(5):
        catalog.append(NewRecord(kind="backup", status="succeeded", target=f"t{index}",
                                 started_at=now, finished_at=now + timedelta(seconds=1),
                                 evidence={"bytes": index, "name": "ünï"}))
    records = all_records(catalog)
    verify_chain(records)
    with catalog.session() as session:
        head = session.get(ChainHead, 1)
        assert head is not None and head.hash == records[-1].hash and head.seq == 5
    # An edited column no longer matches its hash.
    edited = records[2]
    fields = {c: getattr(edited, c) for c in COLUMNS}
    fields["status"] = "failed"
    assert record_hash(fields) != edited.hash


def test_concurrent_appends_from_threads_and_processes_keep_one_chain(catalog_url: str) -> None:
    url = catalog_url
    catalog = open_catalog(url)
    now = utcnow()

    def writer(index: int) -> None:
        for step in range(10):
            catalog.append(NewRecord(kind="backup", status="succeeded", target=f"w{index}",
                                     started_at=now, finished_at=now,
                                     evidence={"step": step}))

    script = (
        "import sys\n"
        "from drkit.catalog.store import open_catalog, NewRecord, utcnow\n"
        "c = open_catalog(sys.argv[1])\n"
        "for i in range(10):\n"
        "    n = utcnow()\n"
        "    c.append(NewRecord(kind='backup', status='succeeded', target='proc',"
        " started_at=n, finished_at=n))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, url]) for _ in range(2)]
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(proc.wait(timeout=120) == 0 for proc in procs)
    records = all_records(catalog)
    assert len(records) == 60
    verify_chain(records)


def test_relative_sqlite_path_is_next_to_the_config(tmp_path: Path) -> None:
    open_catalog("sqlite:///.drkit/catalog.db", base_dir=tmp_path)
    assert (tmp_path / ".drkit" / "catalog.db").exists()


def test_journaled_run_then_finished(tmp_path: Path, catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    journal = RunJournal(tmp_path / "state")
    handle = journal.open("backup", target="t", repository="r", restic_version="0.14.0")
    assert (journal.directory / f"{handle.run_id}.json").exists()
    assert catalog.recover_interrupted(journal) == []  # this process is alive
    record = catalog.finish_run(handle, status="succeeded", snapshot_id="abc",
                                evidence={"k": 1})
    journal.close(handle)
    assert record.run_id == handle.run_id and record.status == "succeeded"
    assert not list(journal.directory.iterdir())


def _journal_dead_run(journal: RunJournal, hostname: str) -> str:
    dead = subprocess.Popen(["true"])
    dead.wait()
    journal.directory.mkdir(parents=True, exist_ok=True)
    run_id = f"run-{hostname}"
    (journal.directory / f"{run_id}.json").write_text(json.dumps({
        "run_id": run_id, "kind": "backup", "started_at": utcnow().isoformat(),
        "hostname": hostname, "pid": dead.pid, "pid_started": "1", "target": "t",
        "repository": "r", "plan": None, "restic_version": "0.14.0"}))
    return run_id


def test_dead_process_run_becomes_interrupted_once(tmp_path: Path, catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    journal = RunJournal(tmp_path / "state")
    mine = _journal_dead_run(journal, catalog.hostname)
    _journal_dead_run(journal, "another-host")
    (record,) = catalog.recover_interrupted(journal)
    assert record.status == "interrupted" and record.run_id == mine
    assert "stopped before the run finished" in (record.error or "")
    assert catalog.recover_interrupted(journal) == []  # recorded once, never "running" forever
    remaining = sorted(p.name for p in journal.directory.iterdir())
    assert remaining == ["run-another-host.json"]  # another host's run is that host's to judge
    verify_chain(all_records(catalog))
