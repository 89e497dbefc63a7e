"""Bulk upserts (one JSON document per batch) carry every awkward value through unchanged."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from mls_sync.store import properties as prop_store
from mls_sync.store import raw as raw_store
from mls_sync.store.tables import tables

pytestmark = pytest.mark.integration

AWKWARD = 'tab\there, newline\nthere, back\\slash, "quotes", {braces}, comma, NULL, \\N, é ✓'


def test_upsert_round_trips_awkward_values(db) -> None:
    row = {"listing_key": "K1", "mls_listing_id": "M1", "public_remarks": AWKWARD, "status": "Active",
           "price": Decimal("123456.78"), "listed_date": date(2024, 2, 29), "bedrooms": 3,
           "mls_modified_at": datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=UTC),
           "interior_features": [AWKWARD, "Fireplace", ""], "appliances": None, "parking_features": [],
           "latitude": Decimal("-12.5")}
    t = tables(db)
    with db.begin() as c:
        res = prop_store.upsert_rows(c, t, "p", "mls_wins", [(row, "h1")], 1)
    assert (res.added, res.updated, res.unchanged) == (1, 0, 0)
    with db.connect() as c:
        got = c.execute(sa.text("SELECT * FROM properties WHERE listing_key = 'K1'")).mappings().one()
    assert got["public_remarks"] == AWKWARD
    assert got["interior_features"] == [AWKWARD, "Fireplace", ""]
    assert got["appliances"] is None and got["parking_features"] == [] and got["price"] == Decimal("123456.78")
    assert got["bedrooms"] == 3 and got["latitude"] == Decimal("-12.5") and got["is_active"] is True
    assert got["listed_date"] == date(2024, 2, 29) and got["mls_modified_at"] == row["mls_modified_at"]
    with db.begin() as c:  # same hash: nothing written
        assert prop_store.upsert_rows(c, t, "p", "mls_wins", [(row, "h1")], 2).unchanged == 1
    with db.begin() as c:  # a new hash: rewritten, counted as updated
        res = prop_store.upsert_rows(c, t, "p", "mls_wins",
                                     [(dict(row, bedrooms=4), "h2"), (dict(row, listing_key="K2"), "h1")], 3)
    assert (res.added, res.updated, res.unchanged) == (1, 1, 0)


@pytest.mark.parametrize("items, stored", [
    ([""], [""]), (["", ""], ["", ""]), (["only"], ["only"]), ([str(i) for i in range(40, 0, -1)], None),
    (["unit\x1fseparator", "next"], ["unit separator", "next"]), ([7, 2.5, None], ["7", "2.5", ""]),
])
def test_text_arrays_keep_every_item_in_order(db, items, stored) -> None:
    row = {"listing_key": "K1", "mls_listing_id": "M1", "status": "Active", "interior_features": items}
    with db.begin() as c:
        prop_store.upsert_rows(c, tables(db), "p", "mls_wins", [(row, "h1")], 1)
    with db.connect() as c:
        got = c.execute(sa.text("SELECT interior_features FROM properties")).scalar_one()
    assert got == (items if stored is None else stored)


def test_raw_landing_keeps_payload_and_last_duplicate(db) -> None:
    t = tables(db)
    recs = [("K1", {"A": AWKWARD, "n": 1}), ("K2", {"A": None}), ("K1", {"A": "second", "__deleted__": True}),
            ("K3", {"A": "record\x1eseparator\x1finside", "B": ["x\x1ey"]}),
            ('K"4\x1e,{}\\', {"A": "awkward key", "__deleted__": True})]
    with db.begin() as c:
        raw_store.land(c, t, "p", 7, recs)
    with db.connect() as c:
        rows = dict(c.execute(sa.text("SELECT listing_key, payload FROM mls_raw_records")).all())
        deleted = dict(c.execute(sa.text("SELECT listing_key, deleted FROM mls_raw_records")).all())
    assert rows["K2"] == {"A": None} and len(rows) == 4
    assert rows["K3"] == {"A": "record\x1eseparator\x1finside", "B": ["x\x1ey"]}
    assert rows['K"4\x1e,{}\\']["A"] == "awkward key"
    assert rows["K1"]["A"] == "second"
    assert deleted == {"K1": True, "K2": False, "K3": False, 'K"4\x1e,{}\\': True}


def test_nul_characters_are_dropped_not_fatal(db) -> None:
    """PostgreSQL text cannot hold NUL: an MLS value with one is stored without it, and a literal
    backslash-u0000 typed into remarks is kept as text."""
    literal = "C:\\u0000 is not a NUL"
    row = {"listing_key": "K1", "mls_listing_id": "M1", "status": "Active", "public_remarks": "a\x00b " + literal,
           "interior_features": ["x\x00y"]}
    t = tables(db)
    with db.begin() as c:
        assert prop_store.upsert_rows(c, t, "p", "mls_wins", [(row, "h1")], 1).added == 1
        raw_store.land(c, t, "p", 1, [("K1", {"Remarks": "a\x00b", "Other": literal})])
        raw_store.land(c, t, "p", 1, [("K\x002", {"Key": "K\x002"})])  # a key with a NUL lands without it
    with db.connect() as c:
        got = c.execute(sa.text("SELECT public_remarks, interior_features FROM properties")).one()
        payloads = dict(c.execute(sa.text("SELECT listing_key, payload FROM mls_raw_records")).all())
    assert got.public_remarks == "ab " + literal and got.interior_features == ["xy"]
    assert payloads == {"K1": {"Remarks": "ab", "Other": literal}, "K2": {"Key": "K2"}}


def test_commit_without_flush_stays_inside_its_transaction(db) -> None:
    """Batches commit without waiting for their WAL; the connection goes back to the pool with
    the server's setting, so other work on it (a stage's closing commit) waits as usual."""
    from mls_sync.store.db import commit_without_flush

    with db.connect() as c:
        server_setting = c.exec_driver_sql("SHOW synchronous_commit").scalar()
        c.commit()
        with c.begin():
            commit_without_flush(c)
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == server_setting != "off"


@pytest.mark.parametrize("after_key", [None, "K0500"])
def test_a_runs_raw_records_are_read_in_key_order_without_sorting_them(db, after_key) -> None:
    """transform_load reads a run's payloads in key order; sorting them instead of reading an
    index in order spilled to disk at 10,000 listings (and grew with the run)."""
    t = tables(db)
    with db.begin() as c:
        raw_store.land(c, t, "p", 7, [(f"K{i:04d}", {"i": i}) for i in range(1000, 0, -1)])
        raw_store.land(c, t, "p", 8, [("K0001", {"i": "newer"})])  # another run's copy of a key
    with db.connect() as c:
        q = raw_store.run_query(t, "p", 7, after_key)
        plan = "\n".join(c.execute(sa.text("EXPLAIN " + str(q.compile(db, compile_kwargs={"literal_binds": True}))
                                            )).scalars())
    assert "Sort" not in plan and "mls_raw_records_pkey" in plan, plan  # (provider, sync_id, listing_key)
    keys = [k for batch in raw_store.iter_run(db, t, "p", 7, after_key=after_key, batch=300) for k, _, _ in batch]
    first = 1 if after_key is None else 501
    assert keys == [f"K{i:04d}" for i in range(first, 1001)]  # run 8's copy of K0001 takes nothing from run 7


def test_list_columns_and_the_tables_text_arrays_must_agree(db) -> None:
    """A text[] column that columns.py does not call a list would be stored as its JSON text:
    the upsert refuses to build instead."""
    from sqlalchemy.dialects.postgresql import ARRAY

    real = tables(db).properties
    extra = sa.Table("properties", sa.MetaData(), *[sa.Column(c.name, c.type) for c in real.c],
                     sa.Column("view_features", ARRAY(sa.Text)))
    cols = (*prop_store._UPSERT_COLUMNS, "view_features")
    with pytest.raises(RuntimeError, match="view_features"):
        prop_store._upsert_statement(extra, cols, False)
    prop_store._upsert_statement(real, prop_store._UPSERT_COLUMNS, False)  # the real pair agrees
