"""`mls-sync sync`: the same stages as the DAG, from a shell, into the properties store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack import ROOT, mls_connections
from tests.integration.dagrun import scalar

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mls_sync.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_sync_full_then_incremental_then_dry_run(mock_mls_factory, db, db_url, tmp_path) -> None:
    mls = mock_mls_factory(listings=200, seed=9, photos_per_listing=1)
    env = {**os.environ, **mls_connections(mls.url, mls.credentials), "MLS_DATABASE_URL": db_url,
           "MLS_MEDIA_STORAGE": json.dumps({"backend": "local", "root": str(tmp_path / "media")})}
    out = _cli(env, "sync", "--provider", "demo_rets")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "success" and result["mode"] == "full" and result["added"] > 100
    assert result["photos_added"] == result["added"]  # one photo per listing
    assert scalar(db, "SELECT count(*) FROM properties") == result["added"]
    assert scalar(db, "SELECT count(*) FROM property_media") == result["photos_added"]
    # the roster the YAML names, in the same line: what was fetched and is held per resource
    assert set(result["roster"]) == {"member", "office", "open_house"}
    for kind, table in (("member", "members"), ("office", "offices"), ("open_house", "open_houses")):
        held = scalar(db, f"SELECT count(*) FROM {table} WHERE deleted_at IS NULL")
        assert result["roster"][kind]["held"] == result["roster"][kind]["added"] == held > 0, kind

    changed = mls.mutate(price=3, member_new=1)
    out = _cli(env, "sync", "--provider", "demo_rets", "--no-photos")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mode"] == "incremental" and result["updated"] == len(changed["price"])
    assert result["roster"]["member"]["added"] == 1

    before = scalar(db, "SELECT max(updated_at) FROM properties")
    mls.mutate(price=2)
    out = _cli(env, "sync", "--provider", "demo_rets", "--dry-run")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dry_run"] and result["updated"] == 2
    assert result["roster"] == {}  # a dry run leaves the roster alone
    assert scalar(db, "SELECT max(updated_at) FROM properties") == before


def test_sync_with_unreachable_database_is_one_line(mock_mls_factory) -> None:
    mls = mock_mls_factory(listings=20, seed=9, photos_per_listing=1)
    env = {**os.environ, **mls_connections(mls.url, mls.credentials),
           "MLS_DATABASE_URL": "postgresql://nobody:hunter2@127.0.0.1:1/none"}
    out = _cli(env, "sync", "--provider", "demo_reso")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "MLS_DATABASE_URL" in out.stderr and "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr


def test_sync_attempts_flag_sets_the_retries_of_the_run(mock_mls_factory, db, db_url) -> None:
    mls = mock_mls_factory(listings=50, seed=9, photos_per_listing=1)
    env = {**os.environ, **mls_connections(mls.url, mls.credentials), "MLS_DATABASE_URL": db_url}
    # one 503 on the search: with a single attempt the run fails, with the YAML's five it is retried
    mls.fault("http_error", status=503, count=1, path="/rets/search")
    out = _cli(env, "sync", "--provider", "demo_rets", "--no-photos", "--attempts", "1")
    assert out.returncode != 0 and "503" in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["state"] == "failed"
    assert scalar(db, "SELECT count(*) FROM properties") == 0
    mls.fault("http_error", status=503, count=1, path="/rets/search")
    out = _cli(env, "sync", "--provider", "demo_rets", "--no-photos")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["state"] == "success"
    out = _cli(env, "sync", "--provider", "demo_rets", "--attempts", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == ("mls-sync: --attempts 0: Input should be greater than or equal to 1 "
                          "(attempts per request, retries + 1)\n")
