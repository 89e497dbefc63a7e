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
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ROOT / "plugins/mls_sync/cli.py").exists(), reason="mls_sync/cli.py not written yet"),
]


@pytest.fixture(scope="module")
def mls() -> Iterator[Any]:
    with MockMLS(listings=300, seed=7, photos_per_listing=2, control=True) as server:
        yield server


def run_cli(mls: Any, *args: str) -> subprocess.CompletedProcess[str]:
    cred = mls.credentials
    conn = {"conn_type": "http", "host": mls.reso_url, "login": cred["client_id"],
            "password": cred["client_secret"], "extra": {"token_url": mls.token_url}}
    env = {**os.environ, "AIRFLOW_CONN_MLS_DEMO_RESO": json.dumps(conn),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "mls_sync.cli", *args, "--provider", "demo_reso"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert cred["client_secret"] not in proc.stdout + proc.stderr
    return proc


def test_check(mls: Any) -> None:
    proc = run_cli(mls, "check")
    assert proc.returncode == 0, proc.stderr
    assert "reso" in proc.stdout.lower()


def test_metadata(mls: Any) -> None:
    proc = run_cli(mls, "metadata")
    assert proc.returncode == 0, proc.stderr
    assert "ModificationTimestamp" in proc.stdout and "Property" in proc.stdout


def test_search(mls: Any) -> None:
    key = mls.all_keys()[0]
    proc = run_cli(mls, "search", "--key", key)
    assert proc.returncode == 0, proc.stderr
    assert key in proc.stdout


def test_photos(mls: Any, tmp_path: Path) -> None:
    key = mls.all_keys()[0]
    proc = run_cli(mls, "photos", key)
    assert proc.returncode == 0, proc.stderr
    assert key in proc.stdout
