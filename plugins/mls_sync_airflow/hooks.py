"""Airflow connections -> the engine's plain objects. The only place the engine meets Airflow's
connection store: one hook per outside system, no IO until `get_conn()` is called.

Connections:
- MLS (`connection_id` in the provider YAML): conn type http; host = login URL (RETS) or OData
  service root (RESO); login/password; extras: user_agent, ua_password, rets_version (RETS),
  token_url, client_id, client_secret, scope, access_token (RESO).
- `mls_properties_db` (postgres): the properties store. Absent -> MLS_DATABASE_URL -> embedded.
- Object storage: provider YAML `storage`, else the JSON in MLS_MEDIA_STORAGE, else `.data/media`;
  the s3 backend reads credentials through S3Hook(aws_conn_id) (IAM role when the connection has none).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from mls_sync.connections import Connection, ConnectionNotFound
from mls_sync.objectstore import STORAGE_ENV, ObjectStore, ObjectStoreConfigError, storage_settings, store_from_settings
from mls_sync.store.db import DRIVER, ENV_VAR, DatabaseConfigError, get_engine
from sqlalchemy.engine import URL, Engine

PROPERTIES_DB_CONN_ID = "mls_properties_db"


# Executors whose tasks all run on this one machine: only there may the demo's defaults (an embedded
# PostgreSQL and photos in .data/media) stand in for a missing setting.
ONE_HOST_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def distributed_executor() -> str | None:
    """The configured executor when tasks may run on other hosts (Celery, Kubernetes...), else None."""
    from airflow.configuration import conf

    executor = conf.get("core", "executor", fallback="") or ""
    names = [part.split(":")[-1].strip().split(".")[-1] for part in executor.split(",") if part.strip()]
    return executor if names and not set(names) <= ONE_HOST_EXECUTORS else None


def _optional_connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


class MlsHook(BaseHook):
    """An MLS login (RETS or RESO Web API) as the engine's `Connection`."""

    conn_name_attr = "mls_conn_id"
    default_conn_name = "mls_default"
    conn_type = "http"
    hook_name = "MLS (RETS / RESO Web API)"

    def __init__(self, mls_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mls_conn_id = mls_conn_id

    def get_mls_connection(self) -> Connection:
        """`get_conn`, with a missing connection said in the engine's terms (a config error that no
        retry fixes) and with the fix."""
        try:
            return self.get_conn()
        except AirflowNotFoundException:
            raise ConnectionNotFound(
                f"connection {self.mls_conn_id!r} (the provider YAML's connection_id) is not defined: add it in "
                f"Airflow (Admin > Connections, or `airflow connections add {self.mls_conn_id} ...`; see README) "
                "or in a secrets backend") from None

    def get_conn(self) -> Connection:
        c = self.get_connection(self.mls_conn_id)
        return Connection(conn_id=self.mls_conn_id, conn_type=c.conn_type or "http", host=c.host, port=c.port,
                          schema=c.schema, login=c.login, password=c.password, extra=dict(c.extra_dejson or {}))


# The connection's own fields give these; any other libpq keyword in its extras (the URI's query,
# as docs/DEPLOY.md's `?sslmode=require`) goes to the driver, and Airflow's own extras do not.
_URL_PARTS = frozenset({"host", "port", "user", "password", "dbname"})


@cache
def libpq_options() -> frozenset[str]:
    """The connection keywords this libpq knows (sslmode, sslrootcert, connect_timeout ...)."""
    import psycopg

    return frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()) - _URL_PARTS


def properties_db_url(conn: Any) -> str:
    """SQLAlchemy URL from a postgres connection, including a unix-socket host (pgserver) and the
    libpq options in its extras (TLS above all: dropping `sslmode=require` would let the store's
    connection fall back to plain text without a word).

    The postgres provider builds a broken URL for a socket directory host, so we build it here.
    """
    extra = getattr(conn, "extra_dejson", None) or {}
    query = {k: str(v) for k, v in extra.items() if k in libpq_options() and v not in (None, "")}
    host = conn.host or None
    if host and host.startswith("/"):  # a socket directory: libpq takes it as the host parameter
        query, host = {"host": host, **query}, None
    url = URL.create(DRIVER, username=conn.login or "postgres", password=conn.password or None, host=host,
                     port=conn.port if host else None, database=conn.schema or "postgres", query=query)
    return url.render_as_string(hide_password=False)


class PropertiesStoreHook(BaseHook):
    """The PostgreSQL holding `properties` and the sync tables."""

    conn_name_attr = "postgres_conn_id"
    default_conn_name = PROPERTIES_DB_CONN_ID
    conn_type = "postgres"
    hook_name = "MLS properties store"

    def __init__(self, postgres_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.postgres_conn_id = postgres_conn_id

    def get_conn(self) -> Engine:
        conn = _optional_connection(self.postgres_conn_id)
        if conn is None and not os.environ.get(ENV_VAR) and (executor := distributed_executor()):
            raise DatabaseConfigError(
                f"no properties database is configured: add the Airflow connection {self.postgres_conn_id} "
                f"(postgres) or set {ENV_VAR}. Under {executor} each worker would otherwise write to an embedded "
                "database of its own")
        return get_engine(properties_db_url(conn) if conn is not None else None)


def _s3_client_via_hook(settings: dict[str, Any]) -> Any:
    """boto3 S3 client from the Airflow AWS connection (or the IAM role when it holds no keys)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=settings.get("aws_conn_id") or "aws_default", region_name=settings.get("region_name"))
    if settings.get("endpoint_url"):  # MinIO / moto: same credentials, another endpoint
        return hook.get_session().client("s3", endpoint_url=settings["endpoint_url"],
                                         region_name=settings.get("region_name") or "us-east-1")
    return hook.get_conn()


def media_store(provider_storage: dict[str, Any]) -> ObjectStore:
    if not provider_storage and not os.environ.get(STORAGE_ENV) and (executor := distributed_executor()):
        raise ObjectStoreConfigError(
            f"no photo storage is configured: set `storage:` in the provider YAML or {STORAGE_ENV} (an S3 "
            f"bucket). Under {executor} each worker would otherwise keep photos on its own disk")
    settings = storage_settings(provider_storage)
    if settings.get("backend") == "local" and settings.get("root"):
        settings["root"] = str(Path(settings["root"]).expanduser())
    return store_from_settings(settings, s3_client_factory=_s3_client_via_hook)
