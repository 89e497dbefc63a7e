"""`mls-sync --provider demo_reso` (check, metadata, search, photos) against the mock MLS.

The CLI is protocol-agnostic (it goes through open_source); these tests prove the RESO source
answers it end to end, with the connection given the way Airflow would: AIRFLOW_CONN_* JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mock_mls import MockMLS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mls() -> Iterator[Any]:
    with MockMLS(listings=300, seed=7, photos_per_listing=2, control=True) as server:
        yield server


def run_cli(mls: Any, *args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    cred = mls.credentials
    conn = {"conn_type": "http", "host": mls.reso_url, "login": cred["client_id"],
            "password": secret or cred["client_secret"], "extra": {"token_url": mls.token_url}}
    env = {**os.environ, "AIRFLOW_CONN_MLS_DEMO_RESO": json.dumps(conn),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "mls_sync.cli", *args, "--provider", "demo_reso"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert conn["password"] not in proc.stdout + proc.stderr
    return proc


def test_check(mls: Any) -> None:
    proc = run_cli(mls, "check", "-v")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["protocol"] == "reso" and facts["count"] == 300


def test_metadata(mls: Any) -> None:
    proc = run_cli(mls, "metadata")
    assert proc.returncode == 0, proc.stderr
    types = {t["name"]: t for t in json.loads(proc.stdout)["entity_types"]}
    assert "ModificationTimestamp" in {p["name"] for p in types["Property"]["properties"]}


def test_search(mls: Any) -> None:
    key = mls.all_keys()[0]
    proc = run_cli(mls, "search", "--query", f"ListingKey eq '{key}'", "--select", "ListPrice")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["ListingKey"] for r in rows] == [key] and "ListPrice" in rows[0]
    proc = run_cli(mls, "search", "--since", "2000-01-01T00:00:00Z", "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 5


def test_search_with_a_bad_filter_is_a_usage_error(mls: Any) -> None:
    proc = run_cli(mls, "search", "--query", "NoSuchField eq 1")
    assert proc.returncode == 2 and "NoSuchField" in proc.stderr


def test_photos(mls: Any, tmp_path: Path) -> None:
    key = mls.all_keys()[0]
    proc = run_cli(mls, "photos", "--listing", key, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}-000.jpg", f"{key}-001.jpg"]


def test_bad_secret_is_an_auth_failure(mls: Any) -> None:
    proc = run_cli(mls, "check", secret="wrong-secret")
    assert proc.returncode == 3 and "Unknown client" in proc.stderr


def test_metadata_of_a_vendor_document(mls: Any) -> None:
    """No EDM namespace, `edmx:DataService`, a set `Properties` of type `PropertyResi`, an undefined
    type, enum members `Active_Under_Contract`: read, the resource found, each oddity listed."""
    mls.configure(reso_profile="odata-4.0", reso_throttle_once=None)
    try:
        proc = run_cli(mls, "metadata")
    finally:
        mls.reset()
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["resource"]["entity_set"] == "Properties" and meta["odata_version"] == "4.0"
    assert meta["enums"]["Vendor.Data.StandardStatus"]["Active_Under_Contract"] == "Active Under Contract"
    text = " | ".join(meta["warnings"])
    for oddity in ("edmx:DataService", "no XML namespace", "Vendor.Data.SystemIdentifier", "MediaObjectID",
                   "'Properties' (type PropertyResi, annotated as Property)"):
        assert oddity in text


def test_unreadable_metadata_is_a_configuration_error_not_a_network_one(mls: Any) -> None:
    mls.configure(reso_metadata="html")
    try:
        proc = run_cli(mls, "metadata")
    finally:
        mls.reset()
    assert proc.returncode == 2, proc.stderr
    assert "declares no entity types (root <html>" in proc.stderr and "server or network" not in proc.stderr
