"""Running the real generated DAGs with `dag.test()` against the test database and a mock MLS."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

from devstack import ROOT, mls_connections


def point_at(mls: Any, db_url: str, media_root: str | None = None) -> None:
    """Aim the DAGs' connections at this mock MLS and test database (env, as Airflow reads it)."""
    os.environ.update(mls_connections(mls.url, mls.credentials))
    os.environ["MLS_DATABASE_URL"] = db_url
    if media_root:
        os.environ["MLS_MEDIA_STORAGE"] = f'{{"backend": "local", "root": "{media_root}"}}'
    from mls_sync_airflow import tasks

    tasks.provider.cache_clear()  # YAMLs may differ per test (MLS_MAPPINGS_DIR)
    tasks._db.cache_clear()


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id).test(run_conf=conf or {})


def task_states(dagrun: Any) -> dict[str, str]:
    return {f"{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
            for ti in dagrun.get_task_instances()}


def last_run(engine: sa.Engine, provider_id: str) -> dict[str, Any]:
    with engine.connect() as c:
        return dict(c.execute(sa.text(
            "SELECT * FROM mls_sync_history WHERE provider_id = :p AND mode <> 'status' ORDER BY id DESC LIMIT 1"),
            {"p": provider_id}).mappings().one())


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as c:
        return c.execute(sa.text(sql), params).scalar()


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(sa.text(sql), params).mappings())
