"""The real generated DAGs (`dag.test()`) against the mock MLS over HTTP and PostgreSQL.

These are the acceptance checks of the sync engine: full, incremental, no-change, partial, dry run,
status poll, conflicts. Photos are off here (their own tests cover the media stage).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from mls_sync.columns import ACTIVE_STATUSES
from mls_sync.store import properties as prop_store
from mls_sync.store.tables import tables

from tests.integration.dagrun import last_run, point_at, rows, run_dag, scalar, task_states
from tests.integration.engine_runs import mls_listings_in

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

NO_PHOTOS = {"include_photos": False}


@pytest.fixture
def mls(mock_mls_factory, db, db_url, tmp_path):
    m = mock_mls_factory(listings=400, seed=11, photos_per_listing=1)
    point_at(m, db_url, str(tmp_path / "media"))
    return m


def _expected_active(mls) -> dict[str, dict]:
    return mls_listings_in(mls, ACTIVE_STATUSES)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _assert_matches_mls(db, mls, keys) -> None:
    got = {r["listing_key"]: r for r in rows(db, "SELECT * FROM properties WHERE listing_key = ANY(:k)",
                                             k=list(keys))}
    for k in keys:
        want, row = mls.listing(k), got[k]
        assert row["price"] == Decimal(str(want["ListPrice"])).quantize(Decimal("0.01")), k
        assert row["status"] == want["StandardStatus"], k
        assert row["city"] == want["City"] and row["postal_code"] == want["PostalCode"], k
        assert row["bedrooms"] == want["BedroomsTotal"], k
        assert row["mls_modified_at"] == _ts(want["ModificationTimestamp"]), k
        assert "<" not in (row["public_remarks"] or ""), k


def test_full_then_incremental_then_no_change(mls, db) -> None:
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    assert str(dr.state) == "success", task_states(dr)
    expected = _expected_active(mls)
    run = last_run(db, "demo_reso")
    assert run["mode"] == "full" and run["state"] == "success"
    assert run["added"] == len(expected) and run["failed"] == 0
    assert scalar(db, "SELECT count(*) FROM properties WHERE provider_id = 'demo_reso'") == len(expected)
    _assert_matches_mls(db, mls, list(expected)[:60])
    status = rows(db, "SELECT * FROM mls_sync_status WHERE provider_id = 'demo_reso'")[0]
    assert status["state"] == "idle" and status["watermark"] is not None and status["last_success_at"]

    changed = mls.mutate(price=4, status=3, new=2)
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    assert str(dr.state) == "success", task_states(dr)
    run = last_run(db, "demo_reso")
    assert run["mode"] == "incremental"
    touched = set(changed["price"]) | set(changed["status"]) | set(changed["new"])
    sid = run["id"]
    updated = {r["listing_key"] for r in rows(
        db, "SELECT listing_key FROM properties WHERE last_sync_id = :s AND first_sync_id <> :s", s=sid)}
    added = {r["listing_key"]: r["is_active"] for r in rows(
        db, "SELECT listing_key, is_active FROM properties WHERE first_sync_id = :s", s=sid)}
    # exactly the changed listings were rewritten; besides the new ones, only listings the full
    # (active-only) sync never had arrive, and those are off the market
    assert updated == touched - set(changed["new"])
    assert set(changed["new"]) <= set(added)
    assert not any(active for k, active in added.items() if k not in changed["new"])
    assert run["updated"] == len(updated) and run["added"] == len(added)
    _assert_matches_mls(db, mls, touched)
    history = rows(db, "SELECT listing_key, new_status FROM property_status_history")
    assert {h["listing_key"] for h in history} == set(changed["status"])

    assert task_states(dr)["announce"] == "success"  # changes: the properties Asset is updated

    before = scalar(db, "SELECT max(updated_at) FROM properties")
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    run = last_run(db, "demo_reso")
    assert run["mode"] == "incremental" and run["added"] == 0 and run["updated"] == 0
    assert task_states(dr)["announce"] == "skipped"  # nothing changed: no Asset event
    assert scalar(db, "SELECT max(updated_at) FROM properties") == before  # not one row rewritten


def test_dry_run_writes_nothing_and_reports(mls, db) -> None:
    dr = run_dag("mls_sync__demo_reso", {**NO_PHOTOS, "dry_run": True, "mode": "full"})
    assert str(dr.state) == "success", task_states(dr)
    run = last_run(db, "demo_reso")
    assert run["dry_run"] and run["added"] == len(_expected_active(mls))
    assert len(run["report"]["dry_run_preview"]["add"]) == 50  # a sample of keys for the preview
    assert scalar(db, "SELECT count(*) FROM properties") == 0
    assert scalar(db, "SELECT watermark FROM mls_sync_status WHERE provider_id = 'demo_reso'") is None


def test_partial_by_listing_keys(mls, db) -> None:
    keys = sorted(k for k in mls.all_keys() if mls.listing(k)["StandardStatus"] != "Delete")[:3]
    dr = run_dag("mls_sync__demo_reso", {**NO_PHOTOS, "listing_keys": keys})
    assert str(dr.state) == "success", task_states(dr)
    run = last_run(db, "demo_reso")
    assert run["mode"] == "partial" and run["records_fetched"] == 3
    assert {r["listing_key"] for r in rows(db, "SELECT listing_key FROM properties")} == set(keys)
    # a partial run never moves the watermark
    assert scalar(db, "SELECT watermark FROM mls_sync_status WHERE provider_id = 'demo_reso'") is None


def test_bad_conf_is_refused_before_the_run_starts(mls, db) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    mls.reset_counters()
    with pytest.raises(ParamValidationError, match="listing_keys"):
        run_dag("mls_sync__demo_reso", {"listing_keys": ["x' or 1 eq 1 or ListingKey eq '"]})
    assert scalar(db, "SELECT count(*) FROM mls_sync_history") == 0
    assert "reso:Property" not in str(mls.counters())


def test_status_poll_applies_status_changes(mls, db) -> None:
    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    changed = mls.mutate(status=3)
    dr = run_dag("mls_status__demo_reso")
    assert str(dr.state) == "success", task_states(dr)
    for k in changed["status"]:
        row = rows(db, "SELECT status, is_active FROM properties WHERE listing_key = :k", k=k)[0]
        assert row["status"] == mls.listing(k)["StandardStatus"]
        assert row["is_active"] == (row["status"] in ACTIVE_STATUSES)
    assert scalar(db, "SELECT count(*) FROM property_status_history") == len(changed["status"])
    # off-market listings are archived once they have been off the market archive_after_days (30)
    with db.begin() as c:  # one closed 31 days ago, one closed yesterday
        c.execute(sa.text("UPDATE properties SET status = 'Closed', is_active = false, status_changed_at = "
                          "now() - interval '31 days' WHERE listing_key = (SELECT min(listing_key) FROM properties)"))
        c.execute(sa.text("UPDATE properties SET status = 'Closed', is_active = false, status_changed_at = "
                          "now() - interval '1 day' WHERE listing_key = (SELECT max(listing_key) FROM properties)"))
    run_dag("mls_status__demo_reso")
    archived = [r["listing_key"] for r in rows(db, "SELECT listing_key FROM properties WHERE archived_at IS NOT NULL")]
    assert archived == [scalar(db, "SELECT min(listing_key) FROM properties")]


def test_deleted_listing_with_local_edits_becomes_conflict(mls, db) -> None:
    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    removed = mls.mutate(remove=2)["remove"]
    on_market = [k for k in removed if scalar(db, "SELECT count(*) FROM properties WHERE listing_key = :k", k=k)]
    assert on_market, "the mock removed listings we never stored; pick another seed"
    edited, plain = on_market[0], on_market[1:]
    with db.begin() as c:
        prop_store.edit_property(c, tables(db), "demo_reso", edited, {"price": 123456, "public_remarks": "ours"},
                                 by="agent@example.com")
    dr = run_dag("mls_sync__demo_reso", {**NO_PHOTOS, "mode": "full"})
    assert str(dr.state) == "success", task_states(dr)
    conflict = rows(db, "SELECT * FROM property_conflicts WHERE listing_key = :k", k=edited)
    assert len(conflict) == 1 and conflict[0]["kind"] == "deleted_in_mls"
    assert conflict[0]["fields"]["price"]["local"] == 123456
    # demo_reso's policy is mls_wins: recorded, resolved by policy, listing soft-deleted
    assert conflict[0]["state"] == "resolved" and conflict[0]["resolution"] == "mls"
    for k in [edited, *plain]:
        assert scalar(db, "SELECT deleted_at IS NOT NULL FROM properties WHERE listing_key = :k", k=k)


def test_mls_change_to_locally_edited_field_is_a_conflict(mls, db, monkeypatch, tmp_path) -> None:
    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    price_changed = mls.mutate(price=3)["price"]
    key = next(k for k in price_changed
               if scalar(db, "SELECT count(*) FROM properties WHERE listing_key = :k", k=k))
    with db.begin() as c:
        prop_store.edit_property(c, tables(db), "demo_reso", key, {"price": 1}, by="agent@example.com")
    _use_policy(monkeypatch, tmp_path, "demo_reso", "manual")
    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    row = rows(db, "SELECT price, local_edits FROM properties WHERE listing_key = :k", k=key)[0]
    assert row["price"] == Decimal("1.00")  # manual policy: the local value stays until someone decides
    c = rows(db, "SELECT * FROM property_conflicts WHERE listing_key = :k", k=key)[0]
    assert c["state"] == "open" and c["kind"] == "field_changed"
    assert Decimal(c["fields"]["price"]["mls"]) == Decimal(str(mls.listing(key)["ListPrice"]))


def _use_policy(monkeypatch, tmp_path, provider_id: str, policy: str) -> None:
    import shutil

    import yaml
    from mls_sync_airflow import tasks

    from devstack import ROOT

    for p in (ROOT / "include" / "mappings").glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    path = tmp_path / f"{provider_id}.yaml"
    data = yaml.safe_load(path.read_text())
    data["conflicts"] = {"policy": policy}
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLS_MAPPINGS_DIR", str(tmp_path))
    tasks.provider.cache_clear()


def test_watermark_only_moves_on_success(mls, db) -> None:
    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    mark = scalar(db, "SELECT watermark FROM mls_sync_status WHERE provider_id = 'demo_reso'")
    mls.mutate(price=2)
    mls.fault("http_error", status=500, count=1000)
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    mls.clear_faults()
    assert task_states(dr)["fetch"] == "failed" and str(dr.state) == "failed"
    fetch_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "fetch")
    assert fetch_ti.try_number == 3  # a server error keeps Airflow's retries (task_retries: 2)
    run = last_run(db, "demo_reso")
    assert run["state"] == "failed" and run["error_summary"].startswith("fetch failed: ServerError (network)"), run
    status = rows(db, "SELECT * FROM mls_sync_status WHERE provider_id = 'demo_reso'")[0]
    assert status["watermark"] == mark and status["state"] == "failed"
    assert status["consecutive_failures"] == 1


def test_a_failure_a_retry_fixed_is_not_the_runs_cause(mls, db) -> None:
    """A 503 storm that outlasts the client's attempts fails one try of fetch; the task retry
    succeeds, so the run succeeds in Airflow and in its history, with no failure left on it."""
    mls.fault("http_error", status=503, count=2)  # request_attempts: 2, so exactly one try fails
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    mls.clear_faults()
    fetch_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "fetch")
    assert fetch_ti.try_number == 2 and str(fetch_ti.state) == "success"
    assert str(dr.state) == "success"
    run = last_run(db, "demo_reso")
    assert run["state"] == "success" and run["error_summary"] is None
    assert not (run["report"] or {}).get("failures"), run["report"]
    _assert_matches_mls(db, mls, list(_expected_active(mls)))


def test_missing_mls_connection_fails_the_fetch_and_the_run_is_still_closed(mls, db, monkeypatch) -> None:
    """Only the tasks that talk to the MLS need its connection: without it the run is opened and
    closed as failed with the reason (no retries: none can add the connection), and the Airflow
    run fails too."""
    monkeypatch.delenv("AIRFLOW_CONN_MLS_DEMO_RESO")
    dr = run_dag("mls_sync__demo_reso", NO_PHOTOS)
    states = task_states(dr)
    assert states["plan"] == "success" and states["fetch"] == "failed" and states["finalize"] == "failed"
    assert str(dr.state) == "failed"
    fetch_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "fetch")
    assert fetch_ti.try_number == 1
    run = last_run(db, "demo_reso")
    assert run["state"] == "failed"
    assert run["error_summary"].startswith("fetch failed: ConnectionNotFound (config): connection 'mls_demo_reso'")
    assert "airflow connections add mls_demo_reso" in run["error_summary"]
    assert scalar(db, "SELECT count(*) FROM properties") == 0


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch, tmp_path_factory):
    """Task retries with second-long delays, so failure paths finish quickly under dag.test()."""
    import shutil

    import yaml
    from mls_sync_airflow import tasks

    from devstack import ROOT

    d = tmp_path_factory.mktemp("mappings")
    for p in (ROOT / "include" / "mappings").glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        data["retry"] = {"task_retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2}
        data["limits"] = {**data.get("limits", {}), "request_attempts": 2, "requests_per_second": None}
        (d / p.name).write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLS_MAPPINGS_DIR", str(d))
    tasks.provider.cache_clear()
    yield
    tasks.provider.cache_clear()
    shutil.rmtree(d, ignore_errors=True)


def test_engine_rejects_bad_records_into_errors(mls, db) -> None:
    """A record with an unreadable required field is logged with payload and skipped, not fatal."""
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env

    cfg = find_provider("demo_reso")
    ctx = sync.SyncContext(provider=cfg, db=db, mls=from_env(cfg.connection_id))
    plan = sync.plan(ctx, dag_id="t", dag_run_id="bad", conf=NO_PHOTOS)
    sync.fetch(ctx, plan)
    with db.begin() as c:
        c.execute(sa.text("UPDATE mls_raw_records"
                          " SET payload = (payload::jsonb || '{\"ModificationTimestamp\": \"soon\"}')::json"
                          " WHERE listing_key = (SELECT min(listing_key) FROM mls_raw_records)"))
    out = sync.transform_load(ctx, plan)
    assert out["failed"] == 1
    err = rows(db, "SELECT * FROM mls_sync_errors WHERE stage = 'transform'")[0]
    assert err["category"] == "data" and "ISO 8601" in err["message"]
    assert err["payload"]["ModificationTimestamp"] == "soon" and err["next_retry_at"] is not None
    result = sync.finalize(ctx, plan, [])
    assert result["failed"] == 1 and result["state"] == "success"


def test_rets_provider_stores_the_same_listings_as_the_mls_serves(mls, db) -> None:
    """RETS system names, lookups, local-time timestamps: normalized to the same values RESO gives."""
    dr = run_dag("mls_sync__demo_rets", NO_PHOTOS)
    assert str(dr.state) == "success", task_states(dr)
    expected = _expected_active(mls)
    run = last_run(db, "demo_rets")
    assert run["mode"] == "full" and run["added"] == len(expected) and run["failed"] == 0
    _assert_matches_mls(db, mls, list(expected))
    changed = mls.mutate(price=3, status=2)
    run_dag("mls_sync__demo_rets", NO_PHOTOS)
    run = last_run(db, "demo_rets")
    assert run["mode"] == "incremental" and run["requests"] > 0
    _assert_matches_mls(db, mls, set(changed["price"]) | set(changed["status"]))
    run_dag("mls_sync__demo_rets", NO_PHOTOS)
    run = last_run(db, "demo_rets")
    assert run["added"] == 0 and run["updated"] == 0


def _engine_ctx(db):
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env

    cfg = find_provider("demo_reso")
    return sync.SyncContext(provider=cfg, db=db, mls=from_env(cfg.connection_id))


def test_run_stopped_from_the_ui_is_cancelled_and_keeps_the_watermark(mls, db) -> None:
    from mls_sync import sync

    run_dag("mls_sync__demo_reso", NO_PHOTOS)
    mark = scalar(db, "SELECT watermark FROM mls_sync_status")
    mls.mutate(price=5)
    ctx = _engine_ctx(db)
    plan = sync.plan(ctx, dag_id="mls_sync__demo_reso", dag_run_id="stopped", conf=NO_PHOTOS)
    sync.fetch(ctx, plan)
    sync.transform_load(ctx, plan)  # stored, but the operator stops the run before finalize
    assert sync.mark_cancelled_if_running(ctx, "mls_sync__demo_reso", "stopped") is True
    run = last_run(db, "demo_reso")
    assert run["state"] == "cancelled" and run["error_summary"] == "cancelled by an operator"
    assert scalar(db, "SELECT watermark FROM mls_sync_status") == mark
    assert scalar(db, "SELECT state FROM mls_sync_status") == "idle"
    assert sync.mark_cancelled_if_running(ctx, "mls_sync__demo_reso", "stopped") is False


def test_error_rate_over_threshold_raises_an_alert(mls, db) -> None:
    from mls_sync import sync

    ctx = _engine_ctx(db)
    plan = sync.plan(ctx, dag_id="t", dag_run_id="bad-batch", conf=NO_PHOTOS)
    sync.fetch(ctx, plan)
    with db.begin() as c:  # one record in ten arrives unreadable
        c.execute(sa.text("UPDATE mls_raw_records SET payload = (payload::jsonb || '{\"ListingId\": \"\"}')::json"
                          " WHERE ('x' || substr(md5(listing_key), 1, 8))::bit(32)::int % 10 = 0"))
    out = sync.transform_load(ctx, plan)
    result = sync.finalize(ctx, plan, [])
    assert out["failed"] > 0 and result["error_rate"] > 0.05
    assert any("error rate" in a for a in result["alerts"])


def test_reconcile_keeps_the_runs_watermark(mls, db) -> None:
    """A listing held as active that the MLS has since closed (with an old timestamp) is refreshed by
    reconcile; the watermark must stay the newest record of the whole run, not of reconcile's few."""
    from mls_sync import sync

    off_market = [k for k in mls.all_keys() if mls.listing(k)["StandardStatus"] not in ACTIVE_STATUSES]
    oldest = min(off_market, key=lambda k: _ts(mls.listing(k)["ModificationTimestamp"]))
    with db.begin() as c:  # we still think it is on the market
        prop_store.upsert_rows(c, tables(db), "demo_reso", "mls_wins",
                               [({"listing_key": oldest, "mls_listing_id": oldest, "status": "Active"}, "h")], None)
    ctx = _engine_ctx(db)
    plan = sync.plan(ctx, dag_id="t", dag_run_id="full", conf={**NO_PHOTOS, "mode": "full"})
    sync.fetch(ctx, plan)
    sync.transform_load(ctx, plan)
    assert sync.reconcile(ctx, plan)["refreshed"] == 1
    sync.finalize(ctx, plan, [])
    assert scalar(db, "SELECT status FROM properties WHERE listing_key = :k", k=oldest) == \
        mls.listing(oldest)["StandardStatus"]
    newest = max(_ts(r["ModificationTimestamp"]) for r in _expected_active(mls).values())
    assert scalar(db, "SELECT watermark_after FROM mls_sync_history WHERE id = :i", i=plan["sync_id"]) == newest
    assert scalar(db, "SELECT watermark FROM mls_sync_status") == newest


def test_records_without_a_key_are_one_error_row_per_page(db) -> None:
    """Keyless records are logged and skipped: one error row per page saying how many, with a
    sample payload; pages of the retry pass do not overwrite those of the main walk."""
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import Connection
    from mls_sync.sources.base import Page, Source

    class TwoPages(Source):
        def check(self):  # pragma: no cover - not used by fetch
            return {}

        def metadata(self):  # pragma: no cover
            return {}

        def photos(self, listing_keys):  # pragma: no cover
            return iter(())

        def pages(self, criteria, resume_from=None):
            for n in (1, 2):
                yield Page([{"ListingKey": f"K{n}", "ModificationTimestamp": "2024-01-01T00:00:00Z"},
                            {"ListingKey": "", "City": f"a{n}"}, {"City": f"b{n}"}], {"page": n}, n)

    cfg = find_provider("demo_reso")
    ctx = sync.SyncContext(provider=cfg, db=db, mls=Connection(cfg.connection_id),
                           source_factory=lambda *a: TwoPages())
    plan = sync.plan(ctx, dag_id="t", dag_run_id="keyless", conf=NO_PHOTOS)
    assert sync.fetch(ctx, plan)["records"] == 2
    errs = rows(db, "SELECT ref, message, payload FROM mls_sync_errors WHERE stage = 'fetch' ORDER BY ref")
    assert [e["message"] for e in errs] == ["2 record(s) without ListingKey on page 1",
                                            "2 record(s) without ListingKey on page 2"]
    assert len({e["ref"] for e in errs}) == 2 and errs[0]["payload"] == {"ListingKey": "", "City": "a1"}
