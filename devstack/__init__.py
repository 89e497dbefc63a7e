"""The local stack the demo, the tests and the benchmark share: mock MLS, PostgreSQL, S3, Airflow env.

Everything binds 127.0.0.1 on free ports and is stopped by whoever started it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path | None = None) -> dict[str, str]:
    """The Airflow settings `make` exports, for code started outside make (pytest, python -m)."""
    return {
        "AIRFLOW_HOME": str(home or ROOT / ".airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }


def private_airflow_home(dest: Path) -> dict[str, str]:
    """A throwaway AIRFLOW_HOME whose SQLite metadata DB is a consistent copy of the migrated one
    in .airflow (`make airflow-db`), for a child process that writes to its metadata: a second
    process writing the very file a test process has open corrupted that process's view of it
    ("database disk image is malformed") in full test runs. sqlite3's backup API copies what a
    WAL holds too, where a plain file copy would miss it."""
    import sqlite3

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "airflow.db"
    src = sqlite3.connect(ROOT / ".airflow" / "airflow.db")
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return {"AIRFLOW_HOME": str(dest), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{target}"}


def mls_connections(mock_url: str, creds: dict[str, str]) -> dict[str, str]:
    """AIRFLOW_CONN_* values (Airflow's JSON form) for the two demo providers against a mock MLS."""
    rets = {"conn_type": "http", "host": f"{mock_url}/rets/login", "login": creds["username"],
            "password": creds["password"],
            "extra": {"user_agent": creds["user_agent"], "ua_password": creds["ua_password"],
                      "rets_version": "RETS/1.7.2"}}
    reso = {"conn_type": "http", "host": f"{mock_url}/reso/odata", "login": creds["client_id"],
            "password": creds["client_secret"], "extra": {"token_url": f"{mock_url}/reso/oauth2/token"}}
    return {"AIRFLOW_CONN_MLS_DEMO_RETS": json.dumps(rets), "AIRFLOW_CONN_MLS_DEMO_RESO": json.dumps(reso)}


@contextmanager
def mock_mls_process(*args: str, data_dir: Path | None = None, timeout: float = 120) -> Iterator[dict[str, Any]]:
    """`python -m mock_mls` as a child process; yields {"url", "credentials", "pid"}; always stopped."""
    cmd = [sys.executable, "-m", "mock_mls", "--host", "127.0.0.1", "--port", "0", "--control", *args]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("MOCK_MLS_URL="):
                url = line.strip().split("=", 1)[1]
                break
            if not line and proc.poll() is not None:
                break
        if url is None:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"mock MLS did not start: {err.strip()[-500:]}")
        state = control(url, "state")
        yield {"url": url, "credentials": state["credentials"], "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# control actions that work through the whole feed (drawing every photo takes minutes at 10,000)
_SLOW_ACTIONS = {"prerender": 1800.0, "mutate": 600.0}  # 1 % of 1,000,000 listings changed: tens of seconds


def control(url: str, action: str, **body: Any) -> Any:
    """Call the mock's /_control API."""
    import requests

    timeout = _SLOW_ACTIONS.get(action, 60.0)
    if body or action not in ("state", "counters"):
        r = requests.post(f"{url}/_control/{action}", json=body, timeout=timeout)
    else:
        r = requests.get(f"{url}/_control/{action}", timeout=timeout)
    r.raise_for_status()
    return r.json()


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """pgserver under data_dir (data kept), stopped again on exit."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def pg_reachable(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=3).close()
        return True
    except Exception:
        return False


def set_env(values: dict[str, str]) -> None:
    os.environ.update(values)
