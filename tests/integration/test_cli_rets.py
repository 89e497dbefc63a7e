"""`mls-sync` as a subprocess against the running mock MLS (RETS): the operator's view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def mls_sync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mls_sync.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def mls():
    from mock_mls import MockMLS

    with MockMLS(listings=400, seed=11, photos_per_listing=2, control=True, require_ua_auth=True) as m:
        yield m


@pytest.fixture
def conn_env(mls: Any) -> dict[str, str]:
    c = mls.credentials
    conn = {"conn_type": "http", "host": mls.rets_login_url, "login": c["username"], "password": c["password"],
            "extra": {"user_agent": c["user_agent"], "ua_password": c["ua_password"]}}
    return {"AIRFLOW_CONN_MLS_DEMO_RETS": json.dumps(conn)}


def explicit(mls: Any, password: str | None = None) -> list[str]:
    c = mls.credentials
    return ["--login-url", mls.rets_login_url, "--username", c["username"], "--password",
            password or c["password"], "--user-agent", c["user_agent"], "--ua-password", c["ua_password"],
            "--key-field", "LIST_1", "--modified-field", "LIST_87", "--class", "RE_1"]


def test_check_with_provider(conn_env: dict[str, str], mls: Any) -> None:
    r = mls_sync("check", "--provider", "demo_rets", env=conn_env)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["protocol"] == "rets" and "Search" in facts["capabilities"] and facts["time_zone"] == "UTC-05:00"
    assert mls.credentials["password"] not in r.stdout + r.stderr


def test_metadata_json(conn_env: dict[str, str]) -> None:
    r = mls_sync("metadata", "--provider", "demo_rets", env=conn_env)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    names = {f["SystemName"] for f in meta["fields"]}
    assert {"LIST_1", "LIST_87", "LIST_15"} <= names and "ListingStatus" in meta["lookups"]


def test_search_json_lines_with_query_select_since_limit(conn_env: dict[str, str]) -> None:
    r = mls_sync("search", "--provider", "demo_rets", "--query", "(LIST_15=|ACT)", "--select", "LIST_1,LIST_15",
                 "--since", "2024-01-01T00:00:00Z", "--limit", "7", env=conn_env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 7 and all(row["LIST_15"] == "Active" for row in rows)
    assert set(rows[0]) == {"LIST_1", "LIST_15", "LIST_87"}  # the walk always needs key + timestamp
    r = mls_sync("search", "--provider", "demo_rets", "--filter", "(LIST_15=|ACT)", env=conn_env)
    assert r.returncode == 0 and len(r.stdout.splitlines()) > 7


def test_search_and_photos_with_explicit_arguments(mls: Any, tmp_path: Path) -> None:
    r = mls_sync("search", *explicit(mls))
    assert r.returncode == 0, r.stderr
    keys = [json.loads(line)["LIST_1"] for line in r.stdout.splitlines()]
    assert sorted(keys) == sorted(mls.all_keys())
    key = mls.active_keys()[0]
    r = mls_sync("photos", *explicit(mls), "--listing", key, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{key}\t0\t")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}-000.jpg", f"{key}-001.jpg"]


def test_bad_password_exits_3(mls: Any) -> None:
    r = mls_sync("check", *explicit(mls, password="wrong-password"))
    assert r.returncode == 3
    assert r.stderr.startswith("mls-sync: authentication failed") and "Traceback" not in r.stderr
    assert "wrong-password" not in r.stderr


def test_dead_port_exits_4() -> None:
    r = mls_sync("check", "--login-url", "http://127.0.0.1:9/rets/login", "--username", "u", "--password", "p",
                 "--attempts", "2")
    assert r.returncode == 4 and "server or network error" in r.stderr and "Traceback" not in r.stderr


def test_bad_query_exits_2_with_server_text(conn_env: dict[str, str]) -> None:
    r = mls_sync("search", "--provider", "demo_rets", "--query", "(NO_SUCH_FIELD=1)", env=conn_env)
    assert r.returncode == 2 and "NO_SUCH_FIELD" in r.stderr


@pytest.mark.airflow
def test_check_reads_the_connection_from_airflows_store(mls: Any, tmp_path: Path) -> None:
    """`airflow connections add`, then `mls-sync check`: the CLI asks Airflow when no AIRFLOW_CONN_*
    is set (docs and error texts tell users to put the connection there)."""
    from devstack import private_airflow_home

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(private_airflow_home(tmp_path / "airflow"))  # a copy of the migrated metadata DB
    airflow = str(Path(sys.executable).with_name("airflow"))
    c = mls.credentials
    missing = subprocess.run([sys.executable, "-m", "mls_sync.cli", "check", "--provider", "demo_rets"],
                             capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT / "plugins")},
                             timeout=180, cwd=ROOT)
    assert missing.returncode == 2 and "Airflow was asked too" in missing.stderr, missing.stderr
    assert "airflow connections add mls_demo_rets" in missing.stderr

    added = subprocess.run([airflow, "connections", "add", "mls_demo_rets", "--conn-type", "http",
                            "--conn-host", mls.rets_login_url, "--conn-login", c["username"],
                            "--conn-password", c["password"], "--conn-extra",
                            json.dumps({"user_agent": c["user_agent"], "ua_password": c["ua_password"]})],
                           capture_output=True, text=True, env=env, timeout=180)
    assert added.returncode == 0, added.stderr
    r = subprocess.run([sys.executable, "-m", "mls_sync.cli", "check", "--provider", "demo_rets"],
                       capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT / "plugins")},
                       timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["protocol"] == "rets"
    assert c["password"] not in r.stdout + r.stderr
