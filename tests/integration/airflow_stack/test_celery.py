"""A sync through the distributed stack: the real scheduler queues the demo RESO sync to two
Celery workers through Redis; the tasks report to the API server's execution API, honour the
provider's pool, write the properties database named by AIRFLOW_CONN_MLS_PROPERTIES_DB and put
photo variants in S3 (moto standing in for MinIO), never on a worker's disk."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from devstack.topology import worker_hostnames
from tests.integration.airflow_stack.api import wait_for
from tests.integration.airflow_stack.conftest import WORKERS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

PROVIDER = "demo_reso"
DAG_ID = f"mls_sync__{PROVIDER}"
SIZES = {"thumbnail", "medium", "large"}
FORMATS = {"webp", "jpeg"}


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


def _most_at_once(tis: list[dict[str, Any]]) -> int:
    """The largest number of these task instances that ran at the same moment."""
    def at(v: str) -> datetime:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))

    events = sorted([(at(t["start_date"]), 1) for t in tis] + [(at(t["end_date"]), -1) for t in tis],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_sync_through_celery_on_two_workers(stack: Stack) -> None:
    api = stack.api
    pool = api.get(f"/pools/mls_{PROVIDER}")
    assert pool.status_code == 200 and pool.json()["slots"] == 2, pool.text  # airflow-init made it
    run_id = api.trigger(DAG_ID, {"include_photos": True})
    state = api.wait_run(DAG_ID, run_id, timeout=300)
    tis = api.task_instances(DAG_ID, run_id)
    summary = {(t["task_id"], t["map_index"]): (t["state"], t["hostname"]) for t in tis}
    assert state == "success", summary

    hosts = set(worker_hostnames(WORKERS))
    assert {t["hostname"] for t in tis} <= hosts, summary  # every task ran on a Celery worker
    media = [t for t in tis if t["task_id"] == "media"]
    assert len(media) >= 4 and all(t["map_index"] >= 0 and t["state"] == "success" for t in media), summary
    assert {t["hostname"] for t in media} == hosts, summary  # the mapped batches spread over both workers
    assert {t["pool"] for t in tis} == {f"mls_{PROVIDER}"}
    assert _most_at_once(tis) <= 2, summary  # the provider's pool (2 slots) bounded its concurrent tasks
    assert {t["executor"] for t in tis} <= {None, "CeleryExecutor"}

    meta = sa.create_engine(stack.topo.airflow_db_url)

    def celery_done() -> bool:  # a worker stores a result just after the task reported its state
        with meta.connect() as c:
            return c.execute(sa.text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")).scalar() >= 1

    try:
        wait_for("Celery results in the result backend", celery_done, stack.topo, 30)
    finally:
        meta.dispose()

    expected = _expected_on_market(stack.mock_url)
    props = sa.create_engine(stack.topo.properties_db_url)
    try:
        with props.connect() as c:
            keys = set(c.execute(sa.text("SELECT listing_key FROM properties WHERE provider_id = :p"),
                                 {"p": PROVIDER}).scalars())
            history = c.execute(sa.text("SELECT * FROM mls_sync_history WHERE dag_run_id = :r"),
                                {"r": run_id}).mappings().all()
            photos = c.execute(sa.text("SELECT listing_key, variants FROM property_media"
                                       " WHERE provider_id = :p AND state = 'stored'"), {"p": PROVIDER}).all()
            roster_held = {kind: c.execute(sa.text(f"SELECT count(*) FROM {table} WHERE provider_id = :p AND "
                                                   "deleted_at IS NULL"), {"p": PROVIDER}).scalar()
                           for kind, table in (("member", "members"), ("office", "offices"),
                                               ("open_house", "open_houses"))}
    finally:
        props.dispose()
    assert keys == expected and len(expected) > 10
    assert len(history) == 1 and history[0]["state"] == "success", history
    assert history[0]["photos_added"] == len(expected)
    assert {p.listing_key for p in photos} == expected  # one photo per listing
    # the roster task ran on a worker too, into the same database, and the run says what it fetched
    assert summary[("sync_roster", -1)][0] == "success", summary
    roster = history[0]["report"]["roster"]
    assert {k: v["added"] for k, v in roster.items()} == roster_held and all(roster_held.values()), roster

    from tests.integration.s3_server import s3_client

    objects = s3_client(stack.topo.s3_endpoint).list_objects_v2(Bucket=stack.topo.bucket, MaxKeys=1000)
    in_bucket = {o["Key"] for o in objects.get("Contents", [])}
    for _key, variants in photos:
        assert set(variants) == SIZES
        for fmts in variants.values():
            assert set(fmts) == FORMATS
            assert {e["key"] for e in fmts.values()} <= in_bucket


def test_media_maintenance_maps_one_pair_per_provider_on_the_workers(stack: Stack) -> None:
    """The maintenance DAG's task group, mapped over the providers, as the real dag-processor,
    scheduler and Celery workers run it: one labelled pair per provider with photos (the broken
    YAMLs left out), each provider's orphan search after its own cleanup."""
    api, dag_id = stack.api, "mls_media_maintenance"
    run_id = api.trigger(dag_id)  # orphans: a dry run unless triggered with dry_run=false
    assert api.wait_run(dag_id, run_id) == "success", api.states(dag_id, run_id)
    tis = {(t["task_id"], t["rendered_map_index"]): t for t in api.task_instances(dag_id, run_id)}
    providers = {"demo_rets", "demo_reso", "bad_login", "no_conn", "worker_loss"}
    assert set(tis) == {(f"housekeeping.{task}", pid) for task in ("cleanup_removed", "orphans") for pid in providers}
    assert {t["state"] for t in tis.values()} == {"success"}
    for pid in providers:
        cleanup, orphans = tis[("housekeeping.cleanup_removed", pid)], tis[("housekeeping.orphans", pid)]
        assert orphans["start_date"] >= cleanup["end_date"], (pid, cleanup, orphans)
