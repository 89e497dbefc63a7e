"""Connection details for an MLS, the same shape whether Airflow or the environment supplies them.

In Airflow the hook (`mls_sync_airflow.hooks`) fills a `Connection` from Airflow's connection
store; on the CLI we read Airflow's own `AIRFLOW_CONN_<ID>` variable (URI or JSON form), so one
definition serves both without the engine importing Airflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class ConnectionNotFound(LookupError):
    """No connection with that id is defined where we looked."""

    category = "config"


class ConnectionInvalid(ValueError):
    """The connection exists but cannot be used as it is (no host, ...)."""

    category = "config"


@dataclass(frozen=True)
class Connection:
    conn_id: str
    conn_type: str = "http"
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def url(self, key: str = "url") -> str:
        """The endpoint URL: `extra[key]` if given, else rebuilt from host/port/schema.

        Airflow splits `http://host:port/path` into host, port and schema; we put it back
        together, and also accept a full URL stored in `host` as people often do.
        """
        if self.extra.get(key):
            return str(self.extra[key])
        host = self.host or ""
        if "://" in host:
            return host
        if not host:
            raise ConnectionInvalid(
                f"connection {self.conn_id!r} has no host: set host to the MLS URL "
                f"(e.g. https://rets.example.com/rets/login) or extra.{key}"
            )
        scheme = self.conn_type if self.conn_type in ("http", "https") else "https"
        netloc = f"{host}:{self.port}" if self.port else host
        path = f"/{self.schema.lstrip('/')}" if self.schema else ""
        return f"{scheme}://{netloc}{path}"

    def secret_values(self) -> list[str]:
        """Every secret this connection holds, so logs and errors can mask them."""
        keys = ("password", "ua_password", "client_secret", "access_token", "token")
        vals = [self.password] + [self.extra.get(k) for k in keys]
        return [str(v) for v in vals if v]


def _from_uri(conn_id: str, uri: str) -> Connection:
    parts = urlsplit(uri)
    conn_type = parts.scheme.replace("-", "_")
    extra = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "__extra__" in extra:
        extra = json.loads(extra["__extra__"])
    return Connection(
        conn_id=conn_id,
        conn_type=conn_type,
        host=unquote(parts.hostname or "") or None,
        port=parts.port,
        schema=unquote(parts.path.lstrip("/")) or None,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        extra=extra,
    )


def from_mapping(conn_id: str, data: dict[str, Any]) -> Connection:
    """Build from Airflow's JSON connection form (the same keys Airflow uses)."""
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    port = data.get("port")
    return Connection(
        conn_id=conn_id,
        conn_type=data.get("conn_type", "http"),
        host=data.get("host"),
        port=int(port) if port not in (None, "") else None,
        schema=data.get("schema"),
        login=data.get("login"),
        password=data.get("password"),
        extra=extra,
    )


def from_env(conn_id: str, environ: dict[str, str] | None = None) -> Connection:
    """Read `AIRFLOW_CONN_<CONN_ID>` (URI or JSON), as Airflow itself would."""
    env = os.environ if environ is None else environ
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = env.get(name)
    if not raw:
        raise ConnectionNotFound(
            f"connection {conn_id!r} not found: set {name} (Airflow URI or JSON form) "
            "or define it in Airflow (Admin > Connections)"
        )
    raw = raw.strip()
    if raw.startswith("{"):
        return from_mapping(conn_id, json.loads(raw))
    return _from_uri(conn_id, raw)
