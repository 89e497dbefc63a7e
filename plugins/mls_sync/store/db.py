"""Where the properties store lives, and getting it to the current schema.

Order of precedence for the database: an explicit URL (Airflow connection on the Airflow side),
`MLS_DATABASE_URL`, else an embedded PostgreSQL (pgserver) under `.data/pg/` for the demo.
Never SQLite: the upserts, arrays, jsonb and triggers are PostgreSQL's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
SQL_DIR = ROOT / "include" / "sql"
EMBEDDED_DIR = ROOT / ".data" / "pg"
ENV_VAR = "MLS_DATABASE_URL"
_MIGRATION_LOCK = 7_105_771  # pg_advisory_lock key: one migrator at a time


class DatabaseConfigError(RuntimeError):
    """The database named by configuration cannot be used; the message says which and why."""

    category = "config"


DRIVER = "postgresql+psycopg"


def _normalise(url: str) -> str:
    """Any PostgreSQL URL people paste (postgres://, postgresql://, a psycopg2 one) with our driver.

    The store talks to PostgreSQL through psycopg 3, which sends parameters apart from the
    statement. psycopg2 spliced them into the SQL text, so every page landed and every batch
    upserted (a 1-2 MB JSON document) was first lexed by the server as one string literal: landing
    2,500 raw records took 39 ms that way and 28 ms with the parameter bound.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgres", "postgresql"):
        raise ValueError(f"{parsed.get_backend_name()} is not PostgreSQL, which the store needs")
    return parsed.set(drivername=DRIVER).render_as_string(hide_password=False)


def embedded_url(data_dir: Path = EMBEDDED_DIR) -> str:
    """Start (or reuse) the embedded PostgreSQL and return its URL; it keeps data between runs."""
    try:
        import pgserver  # a development package: only the demo and tests without a server use it
    except ImportError:
        raise DatabaseConfigError(
            f"no properties database is configured: set the Airflow connection mls_properties_db (postgres) "
            f"or {ENV_VAR}; the embedded PostgreSQL of `make demo` (pgserver) is not installed here") from None

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode=None)
    return server.get_uri()


def database_url(explicit: str | None = None) -> str:
    url = explicit or os.environ.get(ENV_VAR) or embedded_url()
    return _normalise(url)


@cache
def _engine_for(url: str) -> Engine:
    # prepare_threshold None: no server-side prepared statements, which a PgBouncer in
    # transaction mode in front of the store would not keep between transactions
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                            connect_args={"application_name": "mls_sync", "prepare_threshold": None})


def get_engine(url: str | None = None, *, check: bool = True) -> Engine:
    """A pooled engine for the store; `check` turns a bad URL into one clear error line."""
    source = "the given database URL" if url else (ENV_VAR if os.environ.get(ENV_VAR) else "embedded PostgreSQL")
    try:
        full = database_url(url)
        engine = _engine_for(full)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseConfigError(f"{source} is not a valid database URL ({exc}); "
                                  "expected postgresql://user:password@host:5432/dbname") from None
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
            masked = make_url(full).render_as_string(hide_password=True)
            raise DatabaseConfigError(f"cannot connect to PostgreSQL via {source} ({masked}): {reason}. "
                                      f"Fix {ENV_VAR} or start the server.") from None
    return engine


def commit_without_flush(conn: sa.Connection) -> None:
    """Let this transaction's commit return before its WAL reaches disk.

    For a stage's per-page and per-batch transactions, each of which carries its own checkpoint:
    a PostgreSQL crash can lose only the last few of them, data and checkpoint together, and the
    retried task redoes them from the checkpoint before. Nothing is lost once a stage ends: the
    stage's closing commit (`_stage`) is an ordinary one, and it waits for every earlier commit's
    WAL too. Saves one fsync per batch (a few ms each here; more on network storage).
    """
    conn.exec_driver_sql("SET LOCAL synchronous_commit TO off")


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())


def migrate(engine: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; returns those applied.

    Files are idempotent themselves, so a half-recorded migration is safe to apply again;
    a file that changed after it was applied is reported (not silently re-run).
    """
    applied: list[str] = []
    with engine.connect() as conn:
        # Session-level lock on this one connection: concurrent migrators (two DAG runs, a test
        # and the demo) queue here instead of racing on CREATE statements.
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
        conn.commit()
        try:
            with conn.begin():
                conn.execute(sa.text(
                    "CREATE TABLE IF NOT EXISTS mls_schema_migrations ("
                    " name text PRIMARY KEY, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"))
                done = dict(conn.execute(sa.text("SELECT name, checksum FROM mls_schema_migrations")).all())
            for path in migration_files(sql_dir):
                body = path.read_text(encoding="utf-8")
                digest = hashlib.sha256(body.encode()).hexdigest()
                if done.get(path.name) == digest:
                    continue
                if path.name in done:
                    log.warning("migration %s changed after it was applied; re-applying (files are idempotent)",
                                path.name)
                with conn.begin():
                    conn.exec_driver_sql(body)
                    conn.execute(sa.text(
                        "INSERT INTO mls_schema_migrations (name, checksum) VALUES (:n, :c) "
                        "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()"),
                        {"n": path.name, "c": digest})
                applied.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
    return applied
