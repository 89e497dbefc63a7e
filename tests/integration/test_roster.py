"""Members, offices and open houses over real HTTP (mock MLS) into PostgreSQL, for RETS and RESO.

The first run reads every roster resource in full; the mock then gains a member, changes an office
and removes an open house; the next incremental run fetches only those changes (the removal is
visible to it over RESO, where MlgCanView says so, and only to a key reconciliation over RETS,
where a removed row just stops being served), and a reconciling run makes each table hold exactly
the MLS's rows. Roster requests are counted on the run, within the provider's one budget.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from mls_sync import sync
from mls_sync.roster import sync_roster

from tests.integration.engine_runs import context

pytestmark = pytest.mark.integration

TABLES = {"member": ("members", "member_key", "Member"), "office": ("offices", "office_key", "Office"),
          "open_house": ("open_houses", "open_house_key", "OpenHouse")}


def _permits(db, provider: str) -> int:
    with db.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM mls_rate_permits WHERE provider_id = :p AND requests > 0"),
                         {"p": provider}).scalar_one()


def _listings(ctx: sync.SyncContext, mode: str) -> dict[str, Any]:
    """A run's plan with its listing stages done: what the roster stage follows."""
    plan = sync.plan(ctx, dag_id=None, dag_run_id=None, conf={"include_photos": False, "mode": mode},
                     trigger="manual")
    for stage in (sync.fetch, sync.transform_load, sync.reconcile):
        stage(ctx, plan)
    return plan


def _run(ctx: sync.SyncContext, **conf: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = _listings(ctx, conf.get("mode", "auto"))
    roster = sync_roster(ctx, plan)
    return roster, sync.finalize(ctx, plan)


def _held(db: sa.Engine, provider: str, kind: str) -> dict[str, dict[str, Any]]:
    table, key, _ = TABLES[kind]
    with db.connect() as c:
        return {r[key]: dict(r) for r in c.execute(sa.text(
            f"SELECT * FROM {table} WHERE provider_id = :p AND deleted_at IS NULL"), {"p": provider}).mappings()}


def _matches_mls(db: sa.Engine, mls: Any, provider: str) -> None:
    for kind, (_table, _key, resource) in TABLES.items():
        assert sorted(_held(db, provider, kind)) == mls.roster_keys(resource), kind


@pytest.mark.parametrize("provider", ["demo_reso", "demo_rets"])
def test_roster_syncs_incrementally_and_reconciles(mock_mls_factory, db, provider) -> None:
    mls = mock_mls_factory(listings=120, seed=5, photos_per_listing=1, mlg_can_view=True)
    ctx = context(mls, db, provider)
    roster, first = _run(ctx)
    assert first["state"] == "success"
    _matches_mls(db, mls, provider)
    for kind, (_t, _k, resource) in TABLES.items():
        assert roster[kind]["added"] == len(mls.roster_keys(resource)) > 0
        assert roster[kind]["mode"] == "full"
    # what an agent app reads: typed columns, the raw record, the listing an open house is for
    member = next(iter(_held(db, provider, "member").values()))
    assert member["full_name"] and member["email"].endswith("@example.com") and member["raw"]
    house = next(iter(_held(db, provider, "open_house").values()))
    assert house["start_at"] < house["end_at"] and house["date"] == house["start_at"].date()
    with db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM properties WHERE provider_id = :p AND listing_key = :k"),
                         {"p": provider, "k": house["listing_key"]}).scalar_one() == 1

    changed = mls.mutate(member_new=1, office_change=1, open_house_remove=1)
    office = changed["office_change"][0]
    phone_before = _held(db, provider, "office")[office]["phone"]
    roster, second = _run(ctx, mode="incremental")
    assert second["state"] == "success" and second["mode"] == "incremental"
    # only the changes come back, and the newest row already held (read again within overlap_minutes
    # of the watermark, like listings), unchanged
    assert all(roster[kind]["unchanged"] <= 1 for kind in TABLES)
    fetched = {kind: roster[kind]["fetched"] - roster[kind]["unchanged"] for kind in TABLES}
    assert roster["member"]["mode"] == "incremental" and roster["member"]["added"] == 1
    assert roster["office"]["updated"] == 1 and roster["open_house"]["updated"] == 0
    assert _held(db, provider, "office")[office]["phone"] != phone_before
    assert sorted(_held(db, provider, "member")) == mls.roster_keys("Member")
    gone = changed["open_house_remove"][0]
    if provider == "demo_reso":  # MlgCanView=false: the incremental walk sees the removal
        assert roster["open_house"]["deleted"] == 1 and gone not in _held(db, provider, "open_house")
        assert fetched == {"member": 1, "office": 1, "open_house": 1}  # the changes, nothing else
    else:  # RETS serves a removed row no more: only the key walk can notice
        assert roster["open_house"]["deleted"] == 0 and gone in _held(db, provider, "open_house")
        assert fetched == {"member": 1, "office": 1, "open_house": 0}

    mls.reset_counters()
    permits_before = _permits(db, provider)
    roster, third = _run(ctx, mode="reconcile")
    assert third["state"] == "success"
    # every request the run made, the roster's included, is counted on it (one meter, one budget)
    served = mls.counters()["requests"]
    # ... and took its permit from the provider's budget in the store, which every task shares
    # (a RETS logout, best effort at the end of a session, waits for no permit)
    budgeted = sum(n for name, n in served.items() if name != "rets:logout")
    assert _permits(db, provider) - permits_before == budgeted, served
    searches = sum(n for name, n in served.items() if name == "rets:search" or (name.startswith("reso:")
                   and name != "reso:token"))
    assert third["requests"] >= searches, served
    if provider == "demo_reso":
        assert served["reso:Member"] >= 3 and served["reso:OpenHouse"] >= 3  # cut, walk, key walk
    _matches_mls(db, mls, provider)
    expected_gone = 0 if provider == "demo_reso" else 1
    assert roster["open_house"]["reconcile"]["gone"] == expected_gone
    assert roster["open_house"]["deleted"] == expected_gone
    with db.connect() as c:
        deleted_at = c.execute(sa.text("SELECT deleted_at FROM open_houses WHERE provider_id = :p AND "
                                       "open_house_key = :k"), {"p": provider, "k": gone}).scalar_one()
        report = c.execute(sa.text("SELECT report, requests FROM mls_sync_history WHERE id = :i"),
                           {"i": third["sync_id"]}).one()
    assert deleted_at is not None
    assert set(report.report["roster"]) == set(TABLES)


def _watermarks(db: sa.Engine, provider: str) -> dict[str, Any]:
    with db.connect() as c:
        return dict(c.execute(sa.text("SELECT resource, watermark FROM mls_resource_sync WHERE provider_id = :p"),
                              {"p": provider}).all())


def test_a_roster_walk_cut_short_fails_and_keeps_its_watermark(mock_mls_factory, db) -> None:
    """A YAML that says $top is a page size, against a server that reads it as OData does: each
    walk ends after one page. Whatever resource that cuts short fails the roster stage naming both
    numbers; its watermark stays (a later run reads the changes again) and a key walk cut short
    deletes nothing it did not see. The resources read in full still sync."""
    provider = "demo_reso"
    mls = mock_mls_factory(listings=120, seed=5, photos_per_listing=1, mlg_can_view=True)
    good = context(mls, db, provider)
    roster, first = _run(good)
    assert first["state"] == "success"
    for kind in TABLES:  # each walk is checked against the server's count
        assert roster[kind]["read_verified"] == {"server_count": roster[kind]["fetched"],
                                                 "distinct_keys": roster[kind]["fetched"]}
    before = _watermarks(db, provider)
    held = {kind: _held(db, provider, kind) for kind in TABLES}

    mls.configure(reso_top="total")
    changed = mls.mutate(member_change=30, office_change=1)
    wrong = context(mls, db, provider, reso={**good.provider.reso.model_dump(), "paging": "nextlink",
                                              "page_size": 10, "top_is_page_size": True})
    plan = _listings(good, "incremental")  # the listings' own walk is test_reso_profiles'
    with pytest.raises(sync.IncompleteRead, match=r"the member walk read 10 distinct member records but the "
                                                  r"server counts (\d+)") as err:
        sync_roster(wrong, plan)
    assert int(err.value.args[0].split("counts ")[1].split()[0]) >= 30
    assert "office" not in str(err.value) and "open_house" not in str(err.value)
    result = sync.finalize(good, plan, ["sync_roster"])
    assert result["state"] == "failed" and "member walk read 10" in result["error_summary"]
    after = _watermarks(db, provider)
    assert after["member"] == before["member"]  # the member changes are read again next time
    assert after["office"] > before["office"]  # the office walk was whole: written, watermark moved
    office = changed["office_change"][0]
    assert _held(db, provider, "office")[office]["phone"] != held["office"][office]["phone"]

    # a reconciling run: a key walk cut short must not take what it did not see for deleted
    plan = _listings(good, "reconcile")
    with pytest.raises(sync.IncompleteRead, match=r"key walk read 10 distinct") as err:
        sync_roster(wrong, plan)
    sync.finalize(good, plan, ["sync_roster"])
    for kind in TABLES:
        assert set(_held(db, provider, kind)) == set(held[kind]), kind  # nothing deleted
    assert _watermarks(db, provider)["member"] == before["member"]

    mls.configure(reso_top="page")
    roster, last = _run(good, mode="incremental")
    assert last["state"] == "success"
    # the whole window again, from the watermark the short walks left; the 10 they wrote are unchanged
    assert roster["member"]["fetched"] >= 30 and roster["member"]["updated"] == 20
    _matches_mls(db, mls, provider)
    assert _watermarks(db, provider)["member"] > before["member"]


@pytest.mark.parametrize("provider", ["demo_rets"])
def test_a_key_list_that_lacks_a_live_row_deletes_nothing_and_a_full_run_needs_no_key_walk(
        mock_mls_factory, db, monkeypatch, provider) -> None:
    """A server that caps a key list silently (no MAXROWS, no count) hands the reconciliation a list
    without some rows it still has: those are asked for by key and kept, never deleted. A full run's
    own walk already listed every key, so it sends no key walk, and still deletes what is gone."""
    from mls_sync import roster as roster_mod

    mls = mock_mls_factory(listings=80, seed=7, photos_per_listing=1)
    ctx = context(mls, db, provider)
    _run(ctx, mode="full")
    kept = mls.roster_keys("Member")[0]
    real_walk = roster_mod.ResourceSync._key_walk

    def capped(self: roster_mod.ResourceSync) -> dict[str, Any]:
        listed = real_walk(self)
        if self.kind == "member":
            listed.pop(kept)  # the row the server left out of its list
        return listed

    monkeypatch.setattr(roster_mod.ResourceSync, "_key_walk", capped)
    roster, run = _run(ctx, mode="reconcile")
    assert run["state"] == "success"
    assert roster["member"]["reconcile"]["gone"] == 0 and roster["member"]["reconcile"]["refreshed"] == 1
    assert roster["member"]["deleted"] == 0 and kept in _held(db, provider, "member")
    monkeypatch.undo()

    removed = mls.mutate(member_remove=1)["member_remove"][0]
    mls.reset_counters()
    roster, run = _run(ctx, mode="full")
    assert run["state"] == "success"
    assert roster["member"]["reconcile"]["gone"] == 1 and removed not in _held(db, provider, "member")
    _matches_mls(db, mls, provider)
    # each roster row served once, by the full walk: no key walk served them a second time
    assert mls.counters()["roster_rows_served"] == sum(len(mls.roster_keys(r)) for _t, _k, r in TABLES.values())
