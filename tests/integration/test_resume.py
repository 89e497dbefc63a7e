"""A fetch killed with SIGKILL mid-walk resumes from its checkpoint: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from mls_sync import sync
from mls_sync.columns import ACTIVE_STATUSES
from mls_sync.config import find_provider
from mls_sync.connections import from_env

from devstack import ROOT, mls_connections

pytestmark = pytest.mark.integration

CHILD = """
import json, sys
from mls_sync import sync
from mls_sync.config import find_provider
from mls_sync.connections import from_env
from mls_sync.store.db import get_engine
cfg = find_provider(sys.argv[1])
ctx = sync.SyncContext(provider=cfg, db=get_engine(), mls=from_env(cfg.connection_id))
sync.fetch(ctx, json.loads(sys.argv[2]))
"""


def _pages(engine: sa.Engine, sid: int) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT pages_fetched FROM mls_sync_history WHERE id = :s"), {"s": sid}).scalar()


@pytest.mark.parametrize("provider_id", ["demo_reso", "demo_rets"])
def test_killed_fetch_resumes_without_duplicates(provider_id, mock_mls_factory, db, db_url) -> None:
    mls = mock_mls_factory(listings=3000, seed=5, photos_per_listing=1)
    mls.configure(max_page_size=200, row_cap=200, latency=0.2)
    env = {**os.environ, **mls_connections(mls.url, mls.credentials), "MLS_DATABASE_URL": db_url,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}
    os.environ.update(mls_connections(mls.url, mls.credentials))
    cfg = find_provider(provider_id)
    ctx = sync.SyncContext(provider=cfg, db=db, mls=from_env(cfg.connection_id))
    plan = sync.plan(ctx, dag_id="t", dag_run_id="killed", conf={"include_photos": False})

    child = subprocess.Popen([sys.executable, "-c", CHILD, provider_id, json.dumps(plan)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 90
    while _pages(db, plan["sync_id"]) < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    landed = _pages(db, plan["sync_id"])
    assert landed >= 3, "the child should have landed a few pages before the kill"

    mls.configure(latency=0.0)
    mls.reset_counters()
    out = sync.fetch(ctx, plan)
    assert out["resumed"] is True
    expected = {k for k in mls.all_keys() if mls.listing(k)["StandardStatus"] in ACTIVE_STATUSES}
    served = mls.counters()["rows_served"]
    assert served <= len(expected) - (landed - 1) * 200, "the resumed fetch started over"
    with db.connect() as c:
        keys = list(c.execute(sa.text("SELECT listing_key FROM mls_raw_records WHERE sync_id = :s"),
                              {"s": plan["sync_id"]}).scalars())
    assert set(keys) == expected and len(keys) == len(set(keys))
    sync.transform_load(ctx, plan)
    with db.connect() as c:
        stored = c.execute(sa.text("SELECT count(*), count(DISTINCT listing_key) FROM properties")).one()
    assert stored == (len(expected), len(expected))
