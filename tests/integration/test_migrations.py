"""Schema migrations: ordered, idempotent, safe to run twice and concurrently."""

from __future__ import annotations

import threading
import uuid

import psycopg2
import pytest
import sqlalchemy as sa
from mls_sync.store.db import DatabaseConfigError, get_engine, migrate, migration_files

pytestmark = pytest.mark.integration

EXPECTED = {"properties", "property_media", "property_status_history", "property_conflicts", "mls_sync_status",
            "mls_sync_history", "mls_sync_errors", "mls_raw_records", "mls_schema_migrations"}
STORY_INDEXES = {"idx_properties_mls_listing_id", "idx_properties_status_updated",
                 "idx_mls_sync_status_provider", "idx_mls_sync_history_sync_id"}


@pytest.fixture
def empty_db(pg_admin_url: str):
    name = f"mls_mig_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    yield engine
    engine.dispose()
    admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def _schema(engine: sa.Engine) -> dict[str, list[str]]:
    insp = sa.inspect(engine)
    return {t: sorted(c["name"] for c in insp.get_columns(t)) for t in insp.get_table_names()}


def test_apply_twice_to_empty_database(empty_db: sa.Engine) -> None:
    first = migrate(empty_db)
    assert first == [p.name for p in migration_files()]
    before = _schema(empty_db)
    assert set(before) >= EXPECTED
    assert migrate(empty_db) == []
    # the files themselves are idempotent: forget they ran and apply them again
    with empty_db.begin() as c:
        c.execute(sa.text("DELETE FROM mls_schema_migrations"))
    assert migrate(empty_db) == first
    assert _schema(empty_db) == before
    with empty_db.connect() as c:
        names = set(c.execute(sa.text("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")).scalars())
    assert names >= STORY_INDEXES


def test_concurrent_migrators_do_not_collide(empty_db: sa.Engine) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_db)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(_schema(empty_db)) >= EXPECTED


def test_status_changes_are_recorded_by_trigger(db: sa.Engine) -> None:
    with db.begin() as c:
        c.execute(sa.text("INSERT INTO properties (provider_id, listing_key, status, row_hash) "
                          "VALUES ('p', 'k', 'Active', 'h')"))
        c.execute(sa.text("UPDATE properties SET status = 'Pending' WHERE listing_key = 'k'"))
        c.execute(sa.text("UPDATE properties SET price = 1 WHERE listing_key = 'k'"))
        rows = c.execute(sa.text("SELECT old_status, new_status FROM property_status_history")).all()
    assert rows == [("Active", "Pending")]


def test_bad_database_url_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseConfigError) as exc:
        get_engine()
    msg = str(exc.value)
    assert "MLS_DATABASE_URL" in msg and "\n" not in msg
    monkeypatch.setenv("MLS_DATABASE_URL", "not a url at all")
    with pytest.raises(DatabaseConfigError, match="not a valid database URL"):
        get_engine()
    monkeypatch.setenv("MLS_DATABASE_URL", "sqlite:////tmp/properties.db")  # never SQLite for the store
    with pytest.raises(DatabaseConfigError, match="sqlite is not PostgreSQL"):
        get_engine()


def test_raw_payloads_become_json_and_keep_their_records(empty_db: sa.Engine, tmp_path) -> None:
    """A database made before 003 (payload jsonb, with rows) is converted in place; nothing is lost."""
    older = [p for p in migration_files() if p.name < "003"]
    for p in older:
        (tmp_path / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    migrate(empty_db, sql_dir=tmp_path)
    with empty_db.begin() as c:
        c.execute(sa.text("INSERT INTO mls_raw_records (provider_id, listing_key, sync_id, payload) "
                          "VALUES ('p', 'K1', 1, '{\"ListPrice\": 1.50, \"Remarks\": \"é\"}'::jsonb)"))
    assert "003_raw_json.sql" in migrate(empty_db)
    with empty_db.connect() as c:
        kind = c.execute(sa.text("SELECT data_type FROM information_schema.columns WHERE "
                                 "table_name = 'mls_raw_records' AND column_name = 'payload'")).scalar_one()
        payload = c.execute(sa.text("SELECT payload FROM mls_raw_records")).scalar_one()
    assert kind == "json"
    assert payload == {"ListPrice": 1.5, "Remarks": "é"}


def test_raw_records_become_keyed_by_run_on_a_database_holding_old_rows(empty_db: sa.Engine, tmp_path) -> None:
    """006 on a database written by older code: its rows are kept, two runs may then land the same
    listing side by side, a run-level failure may be `config`, and applying 006 again changes nothing."""
    for p in (p for p in migration_files() if p.name < "006"):
        (tmp_path / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    migrate(empty_db, sql_dir=tmp_path)
    with empty_db.begin() as c:
        c.execute(sa.text("INSERT INTO mls_raw_records (provider_id, listing_key, sync_id, payload) "
                          "VALUES ('p', 'K1', 1, '{\"a\": 1}'), ('p', 'K2', 1, '{\"a\": 2}')"))
        c.execute(sa.text("INSERT INTO mls_sync_errors (provider_id, stage, category, ref, message) "
                          "VALUES ('p', 'fetch', 'network', 'x', 'old')"))
    assert "006_run_integrity.sql" in migrate(empty_db)

    def key_and_rows() -> tuple[list[str], int]:
        with empty_db.connect() as c:
            key = c.execute(sa.text(
                "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_constraint p "
                "CROSS JOIN unnest(p.conkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = k.attnum "
                "WHERE p.conrelid = 'mls_raw_records'::regclass AND p.contype = 'p'")).scalar_one()
            return list(key), c.execute(sa.text("SELECT count(*) FROM mls_raw_records")).scalar_one()

    assert key_and_rows() == (["provider_id", "sync_id", "listing_key"], 2)
    with empty_db.begin() as c:
        c.execute(sa.text("INSERT INTO mls_raw_records (provider_id, listing_key, sync_id, payload) "
                          "VALUES ('p', 'K1', 2, '{\"a\": 3}')"))  # another run, the same listing
        c.execute(sa.text("INSERT INTO mls_sync_errors (provider_id, stage, category, ref, message) "
                          "VALUES ('p', 'fetch', 'config', 'sync:2', 'no connection')"))
    with empty_db.begin() as c:
        c.execute(sa.text("DELETE FROM mls_schema_migrations WHERE name = '006_run_integrity.sql'"))
    assert migrate(empty_db) == ["006_run_integrity.sql"]
    assert key_and_rows() == (["provider_id", "sync_id", "listing_key"], 3)
