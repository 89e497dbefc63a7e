"""Key reconciliation against the mock MLS over HTTP and PostgreSQL, for RETS and RESO.

The mock changes across every kind an incremental sync cannot see (deleted listings, changes
stamped with an old time, changes made during a feed outage) and the kinds it can (new, price,
status); one reconciliation run brings the store to exactly the MLS's set and values, with the
conflict policy applied to a locally edited listing the MLS deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from mls_sync import sync
from mls_sync.store import properties as prop_store
from mls_sync.store.tables import tables

from tests.integration.engine_runs import context, mls_listings_in

pytestmark = pytest.mark.integration

SCOPE = ("Active", "ActiveUnderContract", "ComingSoon", "Pending")


def _run(ctx: sync.SyncContext, **conf: Any) -> dict[str, Any]:
    plan = sync.plan(ctx, dag_id=None, dag_run_id=None, conf={"include_photos": False, **conf}, trigger="manual")
    sync.fetch(ctx, plan)
    sync.transform_load(ctx, plan)
    sync.reconcile(ctx, plan)
    return sync.finalize(ctx, plan)


def _store(db: sa.Engine, provider: str) -> dict[str, dict[str, Any]]:
    with db.connect() as c:
        return {r["listing_key"]: dict(r) for r in c.execute(sa.text(
            "SELECT * FROM properties WHERE provider_id = :p AND deleted_at IS NULL AND status = ANY(:s)"),
            {"p": provider, "s": list(SCOPE)}).mappings()}


def _mls_scope(mls: Any) -> dict[str, dict[str, Any]]:
    return mls_listings_in(mls, SCOPE)


def _differences(db: sa.Engine, mls: Any, provider: str) -> list[str]:
    """Every way the store differs from the MLS in the provider's scope: keys and values."""
    store, want = _store(db, provider), _mls_scope(mls)
    out = [f"missing {k}" for k in sorted(set(want) - set(store))]
    out += [f"extra {k}" for k in sorted(set(store) - set(want))]
    for k in sorted(set(want) & set(store)):
        w, row = want[k], store[k]
        modified = datetime.fromisoformat(w["ModificationTimestamp"].replace("Z", "+00:00"))
        if row["price"] != Decimal(str(w["ListPrice"])).quantize(Decimal("0.01")) or row["mls_modified_at"] != modified:
            out.append(f"stale {k}")
    return out


@pytest.mark.parametrize("provider", ["demo_reso", "demo_rets"])
def test_one_reconciliation_repairs_what_incremental_syncs_cannot_see(mock_mls_factory, db, provider) -> None:
    mls = mock_mls_factory(listings=150, seed=21, photos_per_listing=1)
    ctx = context(mls, db, provider)
    first = _run(ctx)
    assert first["state"] == "success" and first["mode"] == "full"
    assert _differences(db, mls, provider) == []

    # a locally edited listing the MLS is about to delete: the conflict policy (mls_wins) decides
    t = tables(db)
    before = set(_store(db, provider))
    doomed_key = sorted(before)[0]
    with db.begin() as c:
        prop_store.edit_property(c, t, provider, doomed_key, {"public_remarks": "Our own words"}, "agent7")
    changed = mls.mutate(remove=12, backdate=3, late=3, new=3, price=3, status=3)
    with mls.store.write_lock:  # the edited listing leaves the feed too
        mls.store.conn().execute("UPDATE listings SET InFeed = 0 WHERE ListingKey = ?", (doomed_key,))
        mls.store.conn().commit()

    # an incremental sync leaves the back-dated, late and deleted listings as they were
    inc = _run(ctx, mode="incremental")
    assert inc["state"] == "success" and inc["mode"] == "incremental"
    left = _differences(db, mls, provider)
    removed = (set(changed["remove"]) | {doomed_key}) & before  # removals in scope, unseen by the incremental
    stale = set(changed["backdate"] + changed["late"]) - removed
    assert len(stale) >= 5 and len(removed) >= 2, (stale, removed)
    assert set(left) == {f"stale {k}" for k in stale} | {f"extra {k}" for k in removed}, left

    rec = _run(ctx, mode="reconcile")
    assert rec["state"] == "success" and rec["mode"] == "reconcile", rec
    # the store holds exactly the MLS's set and values; under the `manual` policy (demo_rets) the
    # locally edited listing the MLS deleted waits, as an open conflict, for an operator's decision
    manual = ctx.provider.conflicts.policy == "manual"
    assert _differences(db, mls, provider) == ([f"extra {doomed_key}"] if manual else [])
    figures = rec["reconcile"]
    assert figures["stale"] == len(stale) and figures["missing"] == 0, figures
    assert figures["gone"] == len(removed) and figures["deleted"] == len(removed) - manual, figures
    assert figures["conflicted"] == 1 and figures["mls_count"] == len(_mls_scope(mls)), figures
    assert figures["store_count_after"] == figures["mls_count"] + manual, figures
    with db.connect() as c:
        conflict = c.execute(sa.text("SELECT kind, resolution, state FROM property_conflicts "
                                     "WHERE provider_id = :p AND listing_key = :k"),
                             {"p": provider, "k": doomed_key}).mappings().one()
        status = c.execute(sa.text("SELECT last_reconciled_at, last_reconcile FROM mls_sync_status "
                                   "WHERE provider_id = :p"), {"p": provider}).mappings().one()
    assert conflict["kind"] == "deleted_in_mls", conflict
    assert (conflict["state"], conflict["resolution"]) == (("open", None) if manual else ("resolved", "mls")), conflict
    assert status["last_reconcile"]["gone"] == len(removed) and status["last_reconciled_at"] is not None

    # nothing left to repair: a second reconciliation finds no drift (but the conflict still open
    # under `manual`, which stays one conflict)
    again = _run(ctx, mode="reconcile")
    assert again["reconcile"]["differences"] == manual, again["reconcile"]
    with db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM property_conflicts WHERE provider_id = :p"),
                         {"p": provider}).scalar() == 1


def test_scheduled_runs_reconcile_when_due_and_drift_alerts(mock_mls_factory, db) -> None:
    mls = mock_mls_factory(listings=80, seed=22, photos_per_listing=1)
    ctx = context(mls, db, "demo_reso", reconcile={"every_hours": 24, "max_drift": 0.02})
    assert _run(ctx)["mode"] == "full"  # a full sync counts as a reconciliation
    assert _run(ctx)["mode"] == "incremental"  # not due yet
    with db.begin() as c:
        c.execute(sa.text("UPDATE mls_sync_status SET last_reconciled_at = :t WHERE provider_id = 'demo_reso'"),
                  {"t": datetime.now(UTC) - timedelta(hours=25)})
    mls.mutate(remove=3)
    due = _run(ctx)
    assert due["mode"] == "reconcile" and due["reconcile"]["gone"] == 3
    assert any(a.startswith("drift ") and "above 2.0%" in a for a in due["alerts"]), due["alerts"]
    assert _run(ctx)["mode"] == "incremental"  # reconciled just now


def _key_pages(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith("reconcile: key page "))


@pytest.mark.parametrize("provider", ["demo_reso", "demo_rets"])
def test_the_key_walk_asks_for_large_pages_and_takes_what_the_server_sends(
        mock_mls_factory, db, caplog, provider) -> None:
    """`reconcile.key_page_size` asks for key pages far larger than full-record pages: a server
    that serves key-only queries in large pages (Trestle) answers in few requests, and one that caps
    them like any query is paged to the end all the same; both reconcile exactly."""
    import logging
    import math

    caplog.set_level(logging.INFO, logger="mls_sync.reconciliation")
    mls = mock_mls_factory(listings=400, seed=23, photos_per_listing=1)
    cap = {"row_cap": 40} if provider == "demo_rets" else {"max_page_size": 40}
    mls.configure(**cap)
    ctx = context(mls, db, provider, reconcile={"key_page_size": 150})
    assert _run(ctx)["state"] == "success"
    in_scope = len(_mls_scope(mls))
    assert in_scope > 200, in_scope

    for key_only_cap, per_page in ((None, 40), (1000, 150)):
        mls.configure(key_only_cap=key_only_cap)
        changed = mls.mutate(remove=4, backdate=3)
        caplog.clear()
        rec = _run(ctx, mode="reconcile")
        assert rec["state"] == "success", rec
        assert rec["reconcile"]["mls_count"] == len(_mls_scope(mls))
        assert _key_pages(caplog) == math.ceil(rec["reconcile"]["mls_count"] / per_page), key_only_cap
        assert _differences(db, mls, provider) == [], key_only_cap
        assert rec["reconcile"]["stale"] == len(changed["backdate"]), (key_only_cap, rec["reconcile"])


def test_a_reso_key_list_shorter_than_the_servers_count_fails_the_run_and_deletes_nothing(
        mock_mls_factory, db, monkeypatch) -> None:
    """A server that cuts a key page short without a nextLink ends a keyset walk early: the key
    list is checked against `$count`, so the run fails, naming both numbers, and no listing the
    list lacks is touched."""
    from mls_sync.sources.reso.source import ResoSource

    mls = mock_mls_factory(listings=120, seed=24, photos_per_listing=1)
    ctx = context(mls, db, "demo_reso", reconcile={"key_page_size": 50})
    assert _run(ctx)["state"] == "success"
    held = set(_store(db, "demo_reso"))
    real_walk = ResoSource.walk

    def short(self: ResoSource, walk: Any, position: Any) -> Any:
        for i, (records, pos) in enumerate(real_walk(self, walk, position)):
            if walk.page_size == 50 and i == 0:  # the key walk's first page, 10 rows short, no nextLink
                records = records[:-10]
            yield records, pos

    monkeypatch.setattr(ResoSource, "walk", short)
    plan = sync.plan(ctx, dag_id=None, dag_run_id=None, conf={"include_photos": False, "mode": "reconcile"},
                     trigger="manual")
    with pytest.raises(sync.IncompleteRead, match=r"the key walk read \d+ distinct keys but the server counts"):
        sync.fetch(ctx, plan)
    # closed as failed (as the DAG's finalize does after a failed fetch), it records no reconciliation;
    # the next run, whole, finds the store as it was
    assert sync.finalize(ctx, plan)["state"] == "failed"
    with db.connect() as c:
        status = c.execute(sa.text("SELECT last_reconcile FROM mls_sync_status WHERE provider_id = 'demo_reso'")
                           ).scalar_one()
    assert (status or {}).get("mode") != "reconcile", status
    monkeypatch.undo()
    again = _run(ctx, mode="reconcile")
    assert again["state"] == "success" and again["reconcile"]["differences"] == 0, again["reconcile"]
    assert again["reconcile"]["mls_count"] == len(_mls_scope(mls)) and set(_store(db, "demo_reso")) == held
