"""The demo's defaults (an embedded PostgreSQL, photos in .data/media) never stand in for a missing
setting when tasks may run on other hosts: each Celery worker would keep a store of its own."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow")


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLS_DATABASE_URL", "MLS_MEDIA_STORAGE", "AIRFLOW_CONN_MLS_PROPERTIES_DB"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("executor", ["CeleryExecutor", "LocalExecutor,CeleryExecutor",
                                      "airflow.providers.celery.executors.celery_executor.CeleryExecutor"])
def test_a_distributed_executor_refuses_the_local_defaults(no_settings, monkeypatch, executor) -> None:
    from mls_sync.objectstore import ObjectStoreConfigError
    from mls_sync.store.db import DatabaseConfigError
    from mls_sync_airflow.hooks import PropertiesStoreHook, distributed_executor, media_store

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    assert distributed_executor() == executor
    with pytest.raises(DatabaseConfigError, match="add the Airflow connection mls_properties_db"):
        PropertiesStoreHook().get_conn()
    with pytest.raises(ObjectStoreConfigError, match="own disk"):
        media_store({})
    # a store that is configured is used as it is
    assert media_store({"backend": "s3", "bucket": "photos", "region_name": "us-east-1"}) is not None


@pytest.mark.parametrize("executor", ["LocalExecutor", "SequentialExecutor", ""])
def test_one_host_keeps_the_demo_defaults(no_settings, monkeypatch, tmp_path, executor) -> None:
    from mls_sync_airflow.hooks import distributed_executor, media_store

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    assert distributed_executor() is None
    monkeypatch.setenv("MLS_MEDIA_STORAGE", f'{{"backend": "local", "root": "{tmp_path}"}}')
    assert media_store({}) is not None
