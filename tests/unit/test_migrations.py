"""Alembic migrations: a new catalog is created at the head revision, an old one is upgraded
in place on first use (records and chain intact), and the migrations match the models."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from drkit.catalog import migrate
from drkit.catalog.audit import verify_chain
from drkit.catalog.chain import record_hash
from drkit.catalog.inflight import utcnow
from drkit.catalog.models import Base
from drkit.catalog.store import NewRecord, open_catalog

VERSIONS = Path(migrate.__file__).parent / "migrations" / "versions"


def test_head_revision_constant_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    with_connection = migrate.alembic_config(None)  # type: ignore[arg-type]
    script = ScriptDirectory.from_config(with_connection)
    assert script.get_current_head() == migrate.HEAD_REVISION
    assert len(list(VERSIONS.glob("0*.py"))) == len(list(script.walk_revisions()))


def test_new_catalog_is_at_head_and_matches_the_models(catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    with catalog.engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.HEAD_REVISION
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_catalog_from_before_migrations_is_upgraded_in_place(catalog_url: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    # What drkit 0.1 left: the first revision's tables (it used create_all), no version row.
    engine = create_engine(catalog_url)
    with engine.begin() as connection:
        command.upgrade(migrate.alembic_config(connection), "0001")
        connection.execute(text("DROP TABLE alembic_version"))
    now = utcnow()
    previous = "0" * 64
    with engine.begin() as connection:  # records as drkit 0.1 wrote them: format 1
        for index in range(3):
            fields = {"seq": index + 1, "run_id": f"run-{index}", "kind": "drill",
                      "status": "passed", "target": None, "repository": None,
                      "plan": f"p{index}", "hostname": "old-host", "drkit_version": "0.1.0",
                      "restic_version": None, "started_at": now,
                      "finished_at": now + timedelta(seconds=1), "snapshot_id": None,
                      "error": None, "evidence": "{}", "prev_hash": previous}
            fields["hash"] = previous = record_hash(fields)
            connection.execute(text(
                "INSERT INTO records (seq, run_id, kind, status, plan, hostname, "
                          "drkit_version, started_at, finished_at, evidence, prev_hash, hash) "
                          "VALUES (:seq, :run_id, :kind, :status, :plan, :hostname, "
                          ":drkit_version, :started_at, :finished_at, :evidence, :prev_hash, "
                          ":hash)"), fields)
        connection.execute(text("INSERT INTO chain_head (id, seq, hash) VALUES (1, 3, :h)"),
                           {"h": previous})
    engine.dispose()

    upgraded = open_catalog(catalog_url)
    with upgraded.engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.HEAD_REVISION
        indexes = {ix["name"] for ix in inspect(connection).get_indexes("records")}
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert {"ix_records_kind_plan_finished",
            "ix_records_kind_status_target_finished_repo_started"} <= indexes
    assert "ix_records_kind_status_target_finished" not in indexes  # replaced by 0003
    assert diff == []
    result = verify_chain(upgraded)
    assert result.intact and result.records == 3
    upgraded.append(NewRecord(kind="drill", status="passed", plan="p9", started_at=now,
                              finished_at=now))
    assert verify_chain(open_catalog(catalog_url)).records == 4
