"""Dashboard queries (store/reports.py) and conflict resolution (store/conflicts.py) on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from mls_sync.mapping import row_hash
from mls_sync.store import conflicts, reports, runs
from mls_sync.store import errors as err_store
from mls_sync.store import properties as prop_store
from mls_sync.store.tables import tables

pytestmark = pytest.mark.integration
PID = "demo_reso"


def _row(key: str, **over: Any) -> tuple[dict[str, Any], str]:
    row: dict[str, Any] = {"listing_key": key, "mls_listing_id": f"M{key}", "status": "Active", "price": 100000,
                           "city": "Springfield", "public_remarks": "Nice", "address": f"{key} Main St"}
    row.update(over)
    return row, row_hash(row)


def _conflict(db, key: str = "K1", policy: str = "manual") -> int:
    """A real field_changed conflict: local edit, then an MLS change to the same column."""
    t = tables(db)
    with db.begin() as c:
        prop_store.upsert_rows(c, t, PID, policy, [_row(key)], None)
        prop_store.edit_property(c, t, PID, key, {"price": 95000, "public_remarks": "Local <b>text</b>"}, "agent1")
        prop_store.upsert_rows(c, t, PID, policy, [_row(key, price=120000, public_remarks="<script>x</script>")],
                               None)
        pc = t.property_conflicts
        return int(c.execute(sa.select(pc.c.id).where(pc.c.listing_key == key)).scalar_one())


def _run(db, state: str = "success", **counts: int) -> int:
    t = tables(db)
    with db.begin() as c:
        runs.ensure_status(c, t, PID, "Demo", "reso")
        sid, _ = runs.open_run(c, t, provider_id=PID, dag_id=f"mls_sync__{PID}", dag_run_id=f"r{state}{counts}",
                               mode="full", trigger="manual", dry_run=False, conf={}, watermark_before=None)
        runs.add_counts(c, t, sid, counts)
        runs.record_stage(c, t, sid, "fetch", 1.5)
        runs.record_stage(c, t, sid, "plan", 0.1)
        if state != "running":
            runs.close_run(c, t, sid, state=state, error_summary=None, watermark_after=None, move_watermark=False,
                           unresolved_errors=0)
    return sid


def test_overview_counts_conflicts_and_errors(db):
    t = tables(db)
    first = _run(db, added=3)
    last = _run(db, added=7, updated=2, records_fetched=9)
    _conflict(db)
    with db.begin() as c:
        err_store.record_error(c, t, provider_id=PID, stage="transform", category="data", ref="K9",
                               message="bad", sync_id=last)
        err_store.record_error(c, t, provider_id=PID, stage="fetch", category="network", ref="r1",
                               message="timeout", sync_id=last, max_attempts=1)
        old = t.mls_sync_errors.insert().values(provider_id=PID, stage="x", category="auth", ref="old", message="o",
                                                last_seen_at=datetime.now(UTC) - timedelta(days=3))
        c.execute(old)
    with db.connect() as c:
        ov = reports.overview(c, t)
        assert reports.overview(c, t, provider_ids=[]) == {}
    item = ov[PID]
    assert item["last_run"]["id"] == last != first
    assert item["last_run"]["counts"]["added"] == 7 and item["last_run"]["counts"]["updated"] == 2
    assert item["last_counts"]["added"] == 7
    assert item["errors_24h"] == 2 and item["open_errors"] == 3 and item["dead_letters"] == 1
    assert item["open_conflicts"] == 1
    assert item["current_run"] is None


def test_history_paging_and_run_detail(db):
    t = tables(db)
    ids = [_run(db, added=i) for i in range(5)]
    with db.begin() as c:
        err_store.record_error(c, t, provider_id=PID, stage="transform", category="data", ref="K1",
                               message="<script>bad</script>", payload={"x": "y"}, sync_id=ids[-1])
    with db.connect() as c:
        page = reports.history_page(c, t, page=2, per_page=2)
        assert page["total"] == 5 and page["pages"] == 3 and len(page["rows"]) == 2
        assert [r["id"] for r in page["rows"]] == [ids[2], ids[1]]
        assert reports.history_page(c, t, provider_ids=["other"])["total"] == 0
        detail = reports.run_detail(c, t, ids[-1])
        assert [s for s, _ in detail["timings"]] == ["plan", "fetch"]
        assert detail["errors"][0]["state"] == "retrying" and '"x"' in detail["errors"][0]["payload_preview"]
        assert reports.run_detail(c, t, ids[-1], provider_ids=["other"]) is None


def test_errors_filters_and_actions(db):
    t = tables(db)
    with db.begin() as c:
        for i, (cat, dead) in enumerate((("data", False), ("network", True), ("auth", False))):
            err_store.record_error(c, t, provider_id=PID, stage="s", category=cat, ref=f"r{i}", message="m",
                                   max_attempts=1 if dead else 5)
    with db.connect() as c:
        assert reports.errors_page(c, t, state="dead_letter")["total"] == 1
        assert reports.errors_page(c, t, state="retrying")["total"] == 2
        assert reports.errors_page(c, t, category="auth")["rows"][0]["ref"] == "r2"
        with pytest.raises(ValueError):
            reports.errors_page(c, t, state="bogus")
        dead = reports.errors_page(c, t, state="dead_letter")["rows"][0]["id"]
        assert reports.error_providers(c, t, [dead]) == {dead: PID}
    with db.begin() as c:
        assert err_store.retry_now(c, t, [dead]) == 1
        assert err_store.dismiss(c, t, [dead], "ops") == 1
    with db.connect() as c:
        assert reports.errors_page(c, t, state="resolved")["rows"][0]["resolution"] == "dismissed by ops"


def test_conflict_side_by_side_and_keep_local(db):
    t = tables(db)
    cid = _conflict(db)
    with db.connect() as c:
        page = reports.conflicts_page(c, t)
    assert page["total"] == 1
    fields = {f["column"]: f for f in page["rows"][0]["side_by_side"]}
    assert fields["price"]["local"] == 95000 and fields["price"]["mls"] == 120000
    assert fields["public_remarks"]["mls"] == "<script>x</script>"
    with db.begin() as c:
        done = conflicts.resolve(c, t, cid, "local", "admin")
    assert done["state"] == "resolved" and done["resolved_by"] == "admin" and done["resolved_at"] is not None
    with db.connect() as c:
        prop = c.execute(sa.select(t.properties).where(t.properties.c.listing_key == "K1")).mappings().one()
    assert float(prop["price"]) == 95000
    assert prop["local_edits"]["price"]["mls_value"] == 120000  # the next sync will not clash again
    with db.begin() as c, pytest.raises(conflicts.ConflictClosedError):
        conflicts.resolve(c, t, cid, "mls", "admin")


def test_conflict_take_mls_and_per_field(db):
    t = tables(db)
    cid = _conflict(db, "K1")
    cid2 = _conflict(db, "K2")
    with db.begin() as c:
        conflicts.resolve(c, t, cid, "mls", "admin")
        with pytest.raises(conflicts.ConflictDecisionError):
            conflicts.resolve(c, t, cid2, "per_field", "admin", {"price": "mls"})
    with db.begin() as c:
        conflicts.resolve(c, t, cid2, "per_field", "admin", {"price": "mls", "public_remarks": "local"})
    with db.connect() as c:
        p = t.properties
        k1, k2 = (c.execute(sa.select(p).where(p.c.listing_key == k)).mappings().one() for k in ("K1", "K2"))
        row = c.execute(sa.select(t.property_conflicts).where(t.property_conflicts.c.id == cid2)).mappings().one()
    assert float(k1["price"]) == 120000 and k1["local_edits"] == {} and k1["row_hash"] == ""
    assert float(k2["price"]) == 120000 and k2["public_remarks"] == "Local <b>text</b>"
    assert set(k2["local_edits"]) == {"public_remarks"}
    assert row["resolution"] == "per_field" and row["resolution_detail"]["fields"]["price"] == "mls"


def test_deleted_in_mls_take_mls_soft_deletes(db):
    t = tables(db)
    with db.begin() as c:
        prop_store.upsert_rows(c, t, PID, "manual", [_row("K5")], None)
        prop_store.edit_property(c, t, PID, "K5", {"price": 1}, "agent")
        prop_store.remove_listings(c, t, PID, ["K5"], "gone", "manual", None)
        cid = c.execute(sa.select(t.property_conflicts.c.id)).scalar_one()
        with pytest.raises(conflicts.ConflictDecisionError):
            conflicts.resolve(c, t, cid, "per_field", "admin", {"price": "mls"})
    with db.begin() as c:
        conflicts.resolve(c, t, cid, "mls", "admin")
    with db.connect() as c:
        prop = c.execute(sa.select(t.properties).where(t.properties.c.listing_key == "K5")).mappings().one()
    assert prop["deleted_at"] is not None and prop["is_active"] is False and prop["local_edits"] == {}
    assert float(prop["price"]) == 100000  # the MLS value is back before the delete
