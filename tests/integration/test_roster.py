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


def _run(ctx: sync.SyncContext, **conf: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = sync.plan(ctx, dag_id=None, dag_run_id=None, conf={"include_photos": False, **conf}, trigger="manual")
    sync.fetch(ctx, plan)
    sync.transform_load(ctx, plan)
    sync.reconcile(ctx, plan)
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
    roster, third = _run(ctx, mode="reconcile")
    assert third["state"] == "success"
    # every request the run made, the roster's included, is counted on it (one meter, one budget)
    served = mls.counters()["requests"]
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
