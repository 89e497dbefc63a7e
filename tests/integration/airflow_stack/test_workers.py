"""Workers that share nothing but the stores: one dies mid-batch and nothing is lost or doubled.

A media batch of `worker_loss` (demo RETS, one listing per GetObject, each answer slowed to 1 s)
is running on one Celery worker, with some of its listings' photos already stored, when that
worker and everything it runs get SIGKILL, as when a host dies. The scheduler finds the task
without a heartbeat (20 s in this stack), fails that try and retries it; the other worker runs it,
from what the stores hold, not from anything the dead one left on its disk. The killed worker is
restarted afterwards, so the package's other tests keep two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from devstack.topology import worker_name
from tests.integration.airflow_stack.api import wait_for
from tests.integration.airflow_stack.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

PROVIDER = "worker_loss"
DAG_ID = f"mls_sync__{PROVIDER}"
IMAGE_MAGIC = (b"\xff\xd8\xff", b"RIFF", b"\x89PNG")


def _control(stack: Stack, action: str, **body: Any) -> Any:
    r = requests.post(f"{stack.mock_url}/_control/{action}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def _stored(engine: sa.Engine, keys: list[str]) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM property_media WHERE provider_id = :p AND state = 'stored'"
                                 " AND listing_key = ANY(:k)"), {"p": PROVIDER, "k": keys}).scalar()


def _victim(stack: Stack, run_id: str, engine: sa.Engine) -> dict[str, Any] | None:
    """A running media batch with some, not all, of its listings' photos stored."""
    from mls_sync.media_select import batch_keys

    batches = stack.api.xcom(DAG_ID, run_id, "media_batches")
    if not batches:
        return None
    for ti in stack.api.task_instances(DAG_ID, run_id):
        if ti["task_id"] == "media" and ti["state"] == "running" and ti["hostname"]:
            keys = batch_keys(batches[ti["map_index"]])
            done = _stored(engine, keys)
            if 0 < done < len(keys):
                return {**ti, "keys": keys, "stored_at_kill": done}
    return None


def test_a_worker_killed_mid_batch_is_survived(stack: Stack) -> None:
    api, topo = stack.api, stack.topo
    props = sa.create_engine(topo.properties_db_url)
    killed: str | None = None
    _control(stack, "fault", kind="latency", seconds=1.0, path="/rets/getobject")
    try:
        run_id = api.trigger(DAG_ID, {"include_photos": True})
        victim = wait_for("a media batch half stored", lambda: _victim(stack, run_id, props), topo, 300, every=0.3,
                          detail=lambda: api.states(DAG_ID, run_id))
        killed = worker_name(victim["hostname"])
        topo.kill(killed)
        _control(stack, "clear_faults")
        state = api.wait_run(DAG_ID, run_id, timeout=300)
    finally:
        _control(stack, "clear_faults")
        if killed:
            topo.start(killed)
    assert state == "success", api.states(DAG_ID, run_id)
    # a YAML that names no roster resources: the roster task is skipped, and the run still succeeds
    roster = next(t for t in api.task_instances(DAG_ID, run_id) if t["task_id"] == "sync_roster")
    assert roster["state"] == "skipped", roster

    tries = api.mapped_tries(DAG_ID, run_id, "media", victim["map_index"])
    assert [t["state"] for t in tries] == ["failed", "success"], tries  # no heartbeat -> failed, retried
    assert tries[0]["hostname"] == victim["hostname"]
    assert tries[1]["hostname"] and tries[1]["hostname"] != victim["hostname"], tries  # on the other worker
    # the retry started from what the database held: the listings the dead worker finished were skipped
    counts = api.xcom(DAG_ID, run_id, "media", victim["map_index"])
    assert counts["skipped_listings"] >= victim["stored_at_kill"], counts

    with props.connect() as c:
        rows = c.execute(sa.text("SELECT listing_key, media_order, state, variants, original_key FROM property_media"
                                 " WHERE provider_id = :p"), {"p": PROVIDER}).mappings().all()
        active = set(c.execute(sa.text("SELECT listing_key FROM properties WHERE provider_id = :p"
                                       " AND deleted_at IS NULL"), {"p": PROVIDER}).scalars())
        history = c.execute(sa.text("SELECT * FROM mls_sync_history WHERE dag_run_id = :r"),
                            {"r": run_id}).mappings().one()
    props.dispose()
    # every photo exactly once: one row per listing's photo (1 each here), all stored, counted once
    assert sorted(r["listing_key"] for r in rows) == sorted(active) and len(active) > 20
    assert {r["state"] for r in rows} == {"stored"}
    assert history["state"] == "success" and history["photos_added"] == len(rows), dict(history)
    assert history["photos_failed"] == 0

    from tests.integration.s3_server import s3_client

    referenced = {e["key"] for r in rows for fmts in r["variants"].values() for e in fmts.values()}
    referenced |= {r["original_key"] for r in rows if r["original_key"]}
    listed = s3_client(topo.s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=topo.bucket)
    in_bucket = [o["Key"] for page in listed for o in page.get("Contents", []) if f"/{PROVIDER}/" in o["Key"]]
    assert len(in_bucket) == len(set(in_bucket))
    assert set(in_bucket) == referenced  # nothing the dead try uploaded is left beside what is recorded

    # the restarted worker (same host name) answers again: the package's other tests keep two workers
    wait_for(f"{killed} to answer a ping", lambda: topo.worker_answers(victim["hostname"]), topo, 120, every=2)


def test_workers_keep_nothing_on_their_own_disk(stack: Stack) -> None:
    """Every photo of the package's syncs went to S3: none on a worker's own folder (its working
    directory and TMPDIR) nor in the local store's default folder, which a worker without
    MLS_MEDIA_STORAGE would have used."""
    from mls_sync.objectstore import DEFAULT_LOCAL_ROOT

    started = stack.topo.started_at
    hosts = list((stack.topo.home / "hosts").iterdir())
    assert len(hosts) == 2
    for host in hosts:
        for path in host.rglob("*"):
            if path.is_file():
                assert not _is_image(path), f"a photo on {host.name}'s disk: {path}"
    if DEFAULT_LOCAL_ROOT.exists():
        recent = [p for p in DEFAULT_LOCAL_ROOT.rglob("*") if p.is_file() and p.stat().st_mtime >= started]
        assert not recent, recent[:5]


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".png"):
        return True
    with path.open("rb") as f:
        return f.read(4).startswith(IMAGE_MAGIC)
