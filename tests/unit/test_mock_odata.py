"""OData $filter / $orderby -> SQL translation against the mock's Property columns."""

from __future__ import annotations

import sqlite3

import pytest

from mock_mls.odata import Column, FilterTranslator, ODataError, order_by
from mock_mls.reso import PROPERTY_COLUMNS


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute('CREATE TABLE l ("ListingKey", "ListPrice", "StandardStatus", "MlsStatus", "City", '
                 '"ModificationTimestamp", "ListingContractDate", InFeed)')
    conn.executemany("INSERT INTO l VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        ("A", 100000, "Active", "ACT", "O'Fallon", 1_700_000_000_000, "2024-01-01", 1),
        ("B", 250000, "Pending", "PND", "Dallas", 1_700_000_000_000, "2024-02-01", 1),
        ("C", 400000, "Closed", "CLS", "Austin", 1_700_000_200_000, "2024-03-01", 0),
    ])
    return conn


def keys(db: sqlite3.Connection, text: str) -> list[str]:
    sql, params = FilterTranslator(PROPERTY_COLUMNS).translate(text)
    return [r[0] for r in db.execute(f"SELECT l.ListingKey FROM l WHERE {sql} ORDER BY 1", params)]


@pytest.mark.parametrize(("text", "expected"), [
    ("ListPrice gt 100000", ["B", "C"]),
    ("ListPrice ge 100000 and ListPrice le 250000", ["A", "B"]),
    ("StandardStatus eq 'Active' or StandardStatus eq 'Closed'", ["A", "C"]),
    ("StandardStatus in ('Pending', 'Closed')", ["B", "C"]),
    ("MlsStatus eq 'Pending'", ["B"]),  # long value -> stored code
    ("City eq 'O''Fallon'", ["A"]),
    ("not (City eq 'Dallas')", ["A", "C"]),
    ("StandardStatus ne 'Active'", ["B", "C"]),
    ("ModificationTimestamp gt 2023-11-14T22:13:20Z", ["C"]),
    ("ModificationTimestamp gt 2023-11-14T22:13:20.000Z or "
     "(ModificationTimestamp eq 2023-11-14T22:13:20.000Z and ListingKey gt 'A')", ["B", "C"]),
    ("ModificationTimestamp ge 2023-11-14T17:13:20-05:00", ["A", "B", "C"]),
    ("ListingContractDate lt 2024-02-01", ["A"]),
    ("MlgCanView eq false", ["C"]),
    ("startswith(City,'Da') or contains(City, 'sti')", ["B", "C"]),
    ("(ListPrice gt 0) and (City eq 'Austin' or City eq 'Dallas')", ["B", "C"]),
])
def test_filters_select_expected_rows(db: sqlite3.Connection, text: str, expected: list[str]) -> None:
    assert keys(db, text) == expected


def test_literals_are_parameters() -> None:
    sql, params = FilterTranslator(PROPERTY_COLUMNS).translate("City eq 'x'' or 1 eq 1 --'")
    assert "1 eq 1" not in sql and params == ["x' or 1 eq 1 --"]


@pytest.mark.parametrize("text", [
    "Nope eq 1", "ListPrice eq 'abc'", "ListPrice gt", "ListPrice between 1", "City eq 'open",
    "ModificationTimestamp gt 'yesterday'", "(ListPrice gt 1", "ListPrice gt 1 extra",
])
def test_bad_filters_raise(text: str) -> None:
    with pytest.raises(ODataError):
        FilterTranslator(PROPERTY_COLUMNS).translate(text)


def test_orderby_adds_key_tiebreak_and_checks_names() -> None:
    assert order_by("ModificationTimestamp,ListingKey", PROPERTY_COLUMNS, 'l."ListingKey"') == (
        'l."ModificationTimestamp" ASC, l."ListingKey" ASC')
    assert order_by("ListPrice desc", PROPERTY_COLUMNS, 'l."ListingKey"').endswith('l."ListingKey" ASC')
    with pytest.raises(ODataError):
        order_by("Nope", PROPERTY_COLUMNS, "k")


STATUS = Column('l."StandardStatus"', "enum", enum_type="Vendor.Data.StandardStatus",
                members={"Active": "Active", "Active_Under_Contract": "ActiveUnderContract", "Pend": "Pending"})
ENUM_COLUMNS = {**PROPERTY_COLUMNS, "StandardStatus": STATUS}


def test_enum_members_are_typed_like_a_strict_server(db: sqlite3.Connection) -> None:
    """`Ns.Type'Member'` always; a plain string only under 4.01; only the members declared."""
    def run(text: str, version: str = "4.01") -> list[str]:
        sql, params = FilterTranslator(ENUM_COLUMNS, version=version).translate(text)
        return [r[0] for r in db.execute(f"SELECT l.ListingKey FROM l WHERE {sql} ORDER BY 1", params)]

    assert run("StandardStatus eq Vendor.Data.StandardStatus'Pend'", "4.0") == ["B"]
    assert run("StandardStatus eq 'Active'") == ["A"]
    for text, version in (("StandardStatus eq 'Active'", "4.0"),  # 4.0: enums only qualified
                          ("StandardStatus eq Other.StandardStatus'Active'", "4.01"),  # wrong type
                          ("StandardStatus eq 'Pending'", "4.01"),  # what it means is not a member
                          ("StandardStatus eq Vendor.Data.StandardStatus'ActiveUnderContract'", "4.01")):
        with pytest.raises(ODataError, match="Invalid literal"):
            run(text, version)


def test_odata_4_0_refuses_in() -> None:
    with pytest.raises(ODataError, match="'in' operator is not supported"):
        FilterTranslator(PROPERTY_COLUMNS, version="4.0").translate("City in ('Austin')")
    assert FilterTranslator(PROPERTY_COLUMNS, version="4.0").translate("City eq 'Austin' or City eq 'A'")[1] == [
        "Austin", "A"]


def test_keyset_page_filter_starts_the_index_range_at_its_timestamp() -> None:
    """`M gt T or (M eq T and K gt 'k')` (a keyset page): the same rows as the OR alone, and
    SQLite searches the (M, K) index from T instead of walking it from its first entry, which made
    a 1,000,000-listing walk quadratic."""
    conn = sqlite3.connect(":memory:")
    conn.execute('CREATE TABLE l ("ListingKey", "ModificationTimestamp", InFeed)')
    conn.execute('CREATE INDEX ix_mod ON l ("ModificationTimestamp", "ListingKey")')
    t0 = 1_700_000_000_000
    conn.executemany("INSERT INTO l VALUES (?, ?, 1)", [(f"K{i:04d}", t0 + (i // 10) * 1000) for i in range(500)])
    text = "ModificationTimestamp gt 2023-11-14T22:13:30Z or (ModificationTimestamp eq 2023-11-14T22:13:30Z " \
           "and ListingKey gt 'K0104')"
    sql, params = FilterTranslator(PROPERTY_COLUMNS).translate(text)
    page = f"SELECT l.ListingKey FROM l WHERE {sql} ORDER BY l.ModificationTimestamp, l.ListingKey"
    got = [r[0] for r in conn.execute(page, params)]
    assert got == [f"K{i:04d}" for i in range(105, 500)]
    plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {page}", params))
    assert "SEARCH l USING" in plan and "ModificationTimestamp>?" in plan.replace(" ", ""), plan
    # an OR of anything else is left as it was
    sql, params = FilterTranslator(PROPERTY_COLUMNS).translate("ListPrice gt 1 or ListingKey eq 'A'")
    assert ">=" not in sql and sql.count("?") == len(params) == 2
