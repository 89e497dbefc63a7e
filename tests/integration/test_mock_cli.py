"""`python -m mock_mls` as a subprocess: prints its URL, serves, stops cleanly; start-up timing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mock_mls import MockMLS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_module_subprocess_starts_serves_and_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mock_mls", "--listings", "200", "--seed", "3", "--photos-per-listing", "1",
         "--data-dir", str(tmp_path), "--control", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        assert line.startswith("MOCK_MLS_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        state = requests.get(f"{url}/_control/state", timeout=10).json()
        assert state["url"] == url
        token = requests.post(f"{url}/reso/oauth2/token", timeout=10, data={
            "grant_type": "client_credentials", "client_id": "mock-client", "client_secret": "mock-secret"})
        assert token.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0
    assert not list(tmp_path.glob("*.sqlite"))  # data file removed on exit


def test_help_documents_options() -> None:
    out = subprocess.run([sys.executable, "-m", "mock_mls", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    for option in ("--listings", "--seed", "--photos-per-listing", "--data-dir", "--control", "--row-cap",
                   "--offset-mode", "--mlg-can-view", "--rate-limit-per-second"):
        assert option in out


@pytest.mark.slow
def test_ten_thousand_listings_start_in_seconds() -> None:
    started = time.perf_counter()
    with MockMLS(listings=10_000, seed=1, photos_per_listing=5) as mls:
        elapsed = time.perf_counter() - started
        print(f"\nmock_mls: 10,000 listings ready in {elapsed:.2f}s (generation {mls.startup_seconds:.2f}s)")
        assert len(mls.all_keys()) == 10_000


def test_kept_state_outlives_the_process(tmp_path: Path) -> None:
    """`--keep-state` (make demo): the feed and its changes survive a restart, and the next mutate()
    continues the sequence instead of repeating the first run's changes."""
    with MockMLS(listings=120, seed=5, photos_per_listing=1, data_dir=tmp_path, keep_state=True) as m:
        first = m.mutate(price=3, new=2, remove=2)
        changed_price = {k: m.listing(k)["ListPrice"] for k in first["price"]}
        keys = set(m.all_keys())
    with MockMLS(listings=120, seed=5, photos_per_listing=1, data_dir=tmp_path, keep_state=True) as m:
        assert set(m.all_keys()) == keys  # new listings still there, removed ones still gone
        assert {k: m.listing(k)["ListPrice"] for k in first["price"]} == changed_price
        second = m.mutate(price=3, new=2, remove=2)
        assert set(second["price"]).isdisjoint(first["price"]) or second["price"] != first["price"]
        assert set(second["new"]).isdisjoint(first["new"])
    with MockMLS(listings=120, seed=5, photos_per_listing=1, data_dir=tmp_path) as m:  # no keep_state: fresh
        assert set(m.all_keys()) != keys
