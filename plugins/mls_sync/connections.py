"""Connection details for an MLS, the same shape whether Airflow or the environment supplies them.

In Airflow the hook (`mls_sync_airflow.hooks`) fills a `Connection` from Airflow's connection
store. The CLI reads Airflow's own `AIRFLOW_CONN_<ID>` variable (URI or JSON form) and, when that
is not set and Airflow is installed, asks Airflow's CLI (`airflow connections get`, which reads its
database and secrets backends), so one definition serves both without the engine importing Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


AIRFLOW_LOOKUP_SECONDS = 120


def airflow_command() -> str | None:
    """Airflow's CLI: the one installed beside this Python (the same virtualenv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "airflow")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("airflow")


def from_airflow(conn_id: str) -> Connection | None:
    """The connection as Airflow resolves it (its database, then its secrets backends), through its
    CLI in a child process; None when Airflow is not installed or does not know the connection.

    What the child prints holds the password: it is parsed, never logged or put into an error.
    """
    command = airflow_command()
    if command is None:
        return None
    try:
        done = subprocess.run([command, "connections", "get", conn_id, "--output", "json"], capture_output=True,
                              text=True, timeout=AIRFLOW_LOOKUP_SECONDS, env=os.environ.copy())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConnectionNotFound(f"connection {conn_id!r}: asking Airflow failed ({type(exc).__name__}); "
                                 f"set AIRFLOW_CONN_{conn_id.upper()} instead") from None
    if done.returncode != 0:
        if "not found" in done.stderr.lower():
            return None
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        raise ConnectionNotFound(f"connection {conn_id!r}: `airflow connections get` failed ({last}); "
                                 f"is Airflow configured here (AIRFLOW_HOME)? Or set AIRFLOW_CONN_{conn_id.upper()}")
    try:
        data = json.loads(done.stdout[done.stdout.index("["):])[0]
    except (ValueError, IndexError, KeyError):
        raise ConnectionNotFound(f"connection {conn_id!r}: could not read what Airflow answered") from None
    return from_mapping(conn_id, {**data, "extra": data.get("extra_dejson") or {}})


def lookup(conn_id: str, environ: dict[str, str] | None = None) -> Connection:
    """`AIRFLOW_CONN_<ID>` when set, else Airflow's own connection store (for the CLI)."""
    try:
        return from_env(conn_id, environ)
    except ConnectionNotFound:
        found = from_airflow(conn_id)
        if found is not None:
            return found
        where = " (Airflow was asked too)" if airflow_command() else ""
        raise ConnectionNotFound(
            f"connection {conn_id!r} not found{where}: set AIRFLOW_CONN_{conn_id.upper()} (Airflow URI or JSON "
            f"form) or define it in Airflow (Admin > Connections, or `airflow connections add {conn_id} ...`)"
        ) from None
