"""Shared fixtures: a throwaway PostgreSQL database, the Airflow environment, the mock MLS.

PostgreSQL: the machine's server on 127.0.0.1:5432 (or MLS_TEST_PG_URL); when none answers, an
embedded one (pgserver) in a temp dir. Each test session creates its own database and drops it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import ROOT, airflow_env, embedded_postgres, pg_reachable

# Airflow reads its settings at import: set them before anything imports airflow.
for _k, _v in airflow_env().items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

ADMIN_URL = os.environ.get("MLS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")



@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    if pg_reachable(ADMIN_URL):
        yield ADMIN_URL
        return
    tmp = Path(tempfile.mkdtemp(prefix="mls_test_pg_"))
    try:
        with embedded_postgres(tmp) as url:
            yield url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped (WITH FORCE) at the end."""
    from mls_sync.store import db as dbmod

    from devstack.topology import databases, with_db

    name = f"mls_test_{uuid.uuid4().hex[:10]}"
    with databases(pg_admin_url, name):
        yield with_db(pg_admin_url, name)
        dbmod._engine_for.cache_clear()


@pytest.fixture(scope="session")
def migrated_engine(db_url: str):
    from mls_sync.store.db import get_engine, migrate

    engine = get_engine(db_url)
    migrate(engine)
    return engine


@pytest.fixture
def db(migrated_engine):
    """The migrated test database, emptied before each test that uses it."""
    import sqlalchemy as sa
    from mls_sync.store.tables import TABLES

    with migrated_engine.begin() as c:
        c.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return migrated_engine


@pytest.fixture
def mock_mls_factory() -> Iterator:
    """Start mock MLS servers in this process over real HTTP; all stopped after the test."""
    from mock_mls import MockMLS

    started: list[MockMLS] = []

    def start(**kwargs) -> MockMLS:
        kwargs.setdefault("control", True)
        m = MockMLS(**kwargs).start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def artifacts_dir() -> Path:
    d = ROOT / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
