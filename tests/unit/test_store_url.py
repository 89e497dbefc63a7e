"""The properties store's URL from an Airflow postgres connection keeps what libpq needs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mls_sync.store.db import database_url
from mls_sync_airflow.hooks import properties_db_url
from sqlalchemy.engine import make_url


def _conn(**kw):
    base = {"login": "mls", "password": "p@ss/word", "schema": "mls", "host": "db.example.com", "port": 5432,
            "extra_dejson": {}}
    return SimpleNamespace(**{**base, **kw})


def test_tls_and_other_libpq_options_survive_airflow_settings_do_not() -> None:
    """docs/DEPLOY.md's `?sslmode=require` arrives as an extra: without it the driver would
    settle for plain text when the server offers no TLS."""
    url = make_url(properties_db_url(_conn(extra_dejson={
        "sslmode": "require", "sslrootcert": "/etc/ssl/ca.pem", "connect_timeout": 10, "cursor": "dictcursor"})))
    assert url.drivername == "postgresql+psycopg" and url.host == "db.example.com" and url.port == 5432
    assert url.username == "mls" and url.password == "p@ss/word" and url.database == "mls"
    assert dict(url.query) == {"sslmode": "require", "sslrootcert": "/etc/ssl/ca.pem", "connect_timeout": "10"}


def test_socket_directory_host_goes_in_the_query() -> None:
    url = make_url(properties_db_url(_conn(host="/tmp/pg sock", port=None, password=None,
                                           extra_dejson={"sslmode": "disable"})))
    assert url.host is None and dict(url.query) == {"host": "/tmp/pg sock", "sslmode": "disable"}


@pytest.mark.parametrize("given", ["postgres://u@h/d", "postgresql://u@h/d", "postgresql+psycopg2://u@h/d"])
def test_store_urls_all_take_the_psycopg3_driver(given: str) -> None:
    assert database_url(given) == "postgresql+psycopg://u@h/d"
