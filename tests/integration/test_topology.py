"""The docker-compose topology, run without Docker (devstack.topology), end to end.

The real scheduler queues the demo RESO sync to the real Celery worker through Redis, the tasks
report to the real API server's execution API, honour the provider's pool, write the properties
database named by AIRFLOW_CONN_MLS_PROPERTIES_DB and upload photo variants to S3 (moto standing
in for MinIO). Triggered through the REST API as an operator would; every process is gone after.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from devstack import pg_reachable
from devstack.topology import PG_ADMIN_URL, REDIS_URL, WORKER_HOSTNAME, Topology, group_alive, pid_alive, topology

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

PROVIDER = "demo_reso"
DAG_ID = f"mls_sync__{PROVIDER}"
LISTINGS = 60
RUN_TIMEOUT = 240
SIZES = {"thumbnail", "medium", "large"}
FORMATS = {"webp", "jpeg"}


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


@pytest.fixture(scope="module", autouse=True)
def services() -> None:
    if not pg_reachable(PG_ADMIN_URL):
        pytest.skip(f"needs PostgreSQL at {PG_ADMIN_URL} (trust auth) for the Airflow metadata DB")
    if not _redis_up():
        pytest.skip(f"needs Redis at {REDIS_URL} for the Celery broker")


def _wait(what: str, check: Any, timeout: float, stack: Topology, every: float = 1.0,
          detail: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        dead = {name: p.returncode for name, p in stack.processes.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            pytest.fail(f"{name} exited ({dead[name]}) while waiting for {what}:\n{stack.log(name)[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s; {detail()}\nlogs (kept) in {stack.home}; "
                        f"scheduler log:\n{stack.log('scheduler')[-2000:]}\n"
                        f"worker log:\n{stack.log('celery-worker')[-2000:]}")
        time.sleep(every)


def _expected_on_market(mock_url: str) -> set[str]:
    """Listings the sync keeps: the mock's feed, filtered to on-market statuses like the engine does."""
    from mls_sync.columns import ACTIVE_STATUSES

    keys = requests.get(f"{mock_url}/_control/keys", params={"which": "all"}, timeout=30).json()["keys"]
    out = set()
    for k in keys:
        rec = requests.get(f"{mock_url}/_control/listing/{k}", timeout=30).json()
        if rec["StandardStatus"] in ACTIVE_STATUSES:
            out.add(k)
    return out


def _trigger(stack: Topology, api: requests.Session) -> str:
    base = f"{stack.api_url}/api/v2/dags/{DAG_ID}"
    _wait("the DAG serialized by the dag-processor", lambda: api.get(base, timeout=30).status_code == 200, 120, stack)
    r = api.patch(base, json={"is_paused": False}, timeout=30)
    assert r.status_code == 200 and r.json()["is_paused"] is False, r.text
    r = api.post(f"{base}/dagRuns", json={"logical_date": None, "conf": {"include_photos": True}}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["dag_run_id"]


def _task_instances(stack: Topology, api: requests.Session, run_id: str) -> list[dict[str, Any]]:
    r = api.get(f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", timeout=30,
                params={"limit": 100})
    r.raise_for_status()
    return r.json()["task_instances"]


def _check_run(stack: Topology) -> None:
    api = stack.session("admin")
    pool = api.get(f"{stack.api_url}/api/v2/pools/mls_{PROVIDER}", timeout=30)
    assert pool.status_code == 200 and pool.json()["slots"] == 2, pool.text  # airflow-init made it

    run_id = _trigger(stack, api)

    def finished() -> str | None:
        state = api.get(f"{stack.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30).json()["state"]
        return state if state in ("success", "failed") else None

    def states() -> str:
        return "task states: " + ", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']} (try {t['try_number']})"
                                           for t in _task_instances(stack, api, run_id))

    state = _wait(f"run {run_id} to finish", finished, RUN_TIMEOUT, stack, every=2, detail=states)
    tis = _task_instances(stack, api, run_id)
    summary = {(t["task_id"], t["map_index"]): (t["state"], t["hostname"]) for t in tis}
    assert state == "success", f"{summary}\nscheduler:\n{stack.log('scheduler')[-3000:]}"

    # every task ran on the Celery worker (its hostname), media mapped into several tasks, all in the pool
    assert {t["hostname"] for t in tis} == {WORKER_HOSTNAME}, summary
    media = [t for t in tis if t["task_id"] == "media"]
    assert len(media) >= 2 and all(t["map_index"] >= 0 and t["state"] == "success" for t in media), summary
    assert {t["pool"] for t in tis} == {f"mls_{PROVIDER}"}
    assert {t["executor"] for t in tis} <= {None, "CeleryExecutor"}
    meta = sa.create_engine(stack.airflow_db_url)

    def celery_done() -> bool:  # the worker stores a result just after the task reported its state
        with meta.connect() as c:
            done = c.execute(sa.text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")).scalar()
        return done >= len(tis)

    try:
        _wait("a Celery result for every task", celery_done, 30, stack)
    finally:
        meta.dispose()

    # the properties database named by AIRFLOW_CONN_MLS_PROPERTIES_DB holds the feed and its photos
    expected = _expected_on_market(stack.mock_url)
    props = sa.create_engine(stack.properties_db_url)
    try:
        with props.connect() as c:
            keys = set(c.execute(sa.text("SELECT listing_key FROM properties WHERE provider_id = :p"),
                                 {"p": PROVIDER}).scalars())
            history = c.execute(sa.text("SELECT * FROM mls_sync_history WHERE dag_run_id = :r"),
                                {"r": run_id}).mappings().all()
            photos = c.execute(sa.text("SELECT listing_key, variants FROM property_media"
                                       " WHERE provider_id = :p AND state = 'stored'"), {"p": PROVIDER}).all()
    finally:
        props.dispose()
    assert keys == expected and len(expected) > 10
    assert len(history) == 1 and history[0]["state"] == "success" and history[0]["mode"] == "full", history
    assert history[0]["added"] == len(expected) and history[0]["photos_added"] == len(expected)
    assert {p.listing_key for p in photos} == expected  # one photo per listing

    from tests.integration.s3_server import s3_client

    objects = s3_client(stack.s3_endpoint).list_objects_v2(Bucket=stack.bucket, MaxKeys=1000).get("Contents", [])
    in_bucket = {o["Key"] for o in objects}
    for _key, variants in photos:
        assert set(variants) == SIZES
        for fmts in variants.values():
            assert set(fmts) == FORMATS
            assert {e["key"] for e in fmts.values()} <= in_bucket
    assert len(in_bucket) >= len(expected) * len(SIZES) * len(FORMATS)


def test_compose_topology_syncs_through_celery() -> None:
    started: dict[str, int] = {}
    groups: list[int] = []
    with topology(listings=LISTINGS, photos_per_listing=1, providers=(PROVIDER,)) as stack:
        started.update(stack.pids)
        groups.extend(p.pid for p in stack.processes.values())
        assert set(started) >= {"mock-mls", "s3", "api-server", "scheduler", "dag-processor", "celery-worker"}
        _check_run(stack)
    left = {name: pid for name, pid in started.items() if pid_alive(pid)}
    assert not left, f"still running after teardown: {left}"
    assert not [g for g in groups if group_alive(g)], "a service's process group outlived teardown"
