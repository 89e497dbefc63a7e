"""DMQL2 -> SQL translation: every value a parameter, RETS error codes for bad queries."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from mock_mls.dmql import DMQLError, Translator, fixed_zone
from mock_mls.fields import BY_SYSTEM

TZ = fixed_zone("-05:00")


def tr(query: str) -> tuple[str, list]:
    return Translator(BY_SYSTEM.get, TZ, datetime(2025, 1, 2, 12, tzinfo=UTC)).translate(query)


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute('CREATE TABLE t ("ListingKey", "ListPrice", "MlsStatus", "City", "ModificationTimestamp",'
                 ' "Appliances", "ListingContractDate", "Longitude")')
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        ("A", 100000, "ACT", "Austin", 1_700_000_000_000, "DW,MW", "2024-01-01", -97.7),
        ("B", 250000, "PND", "Dallas", 1_700_000_100_000, "REF", "2024-02-01", -96.8),
        ("C", 400000, "CLS", "Boulder", 1_700_000_200_000, "", "2024-03-01", -105.2),
    ])
    return conn


def keys(db: sqlite3.Connection, query: str) -> list[str]:
    sql, params = tr(query)
    return [r[0] for r in db.execute(f"SELECT ListingKey FROM t WHERE {sql} ORDER BY 1", params)]


@pytest.mark.parametrize(("query", "expected"), [
    ("(LIST_22=100000-300000)", ["A", "B"]),
    ("(LIST_22=250000+)", ["B", "C"]),
    ("(LIST_22=250000-)", ["A", "B"]),
    ("(LIST_15=|ACT,PND)", ["A", "B"]),
    ("(LIST_15=ACT)", ["A"]),
    ("(LIST_15=~ACT)", ["B", "C"]),
    ("~(LIST_15=|ACT)", ["B", "C"]),
    ("(LIST_15=|ACT,PND),(LIST_22=200000+)", ["B"]),
    ("(LIST_15=|CLS)|(LIST_39=Austin)", ["A", "C"]),
    ("((LIST_15=|CLS) OR (LIST_39=Dal*)) AND (LIST_22=0+)", ["B", "C"]),
    ("(LIST_39=Austin,Boulder)", ["A", "C"]),
    ("(GF21=|MW,REF)", ["A", "B"]),
    ("(GF21=+DW,MW)", ["A"]),
    ("(LIST_132=2024-01-15+)", ["B", "C"]),
    ("(LIST_132=2024-01-01-2024-02-01)", ["A", "B"]),
    ("(LIST_47=-100--97)", ["A"]),
])
def test_queries_select_expected_rows(db: sqlite3.Connection, query: str, expected: list[str]) -> None:
    assert keys(db, query) == expected


def test_datetimes_are_server_local_time(db: sqlite3.Connection) -> None:
    # 1_700_000_100_000 ms = 2023-11-14T22:15:00Z = 17:15:00 at -05:00
    assert keys(db, "(LIST_87=2023-11-14T17:15:00+)") == ["B", "C"]
    assert keys(db, "(LIST_87=2023-11-14T17:15:00)") == ["B"]
    assert keys(db, "(LIST_87=2023-11-14T22:15:00Z+)") == ["B", "C"]
    assert keys(db, "(LIST_87=2023-11-14T17:00:00-2023-11-14T17:16:00)") == ["A", "B"]


def test_values_are_parameters_never_sql() -> None:
    sql, params = tr("(LIST_39=x' OR 1=1 --)")
    assert "1=1" not in sql and params == ["x' OR 1=1 --"]


@pytest.mark.parametrize(("query", "code"), [
    ("(NOPE=1)", 20203),
    ("(LIST_22=abc)", 20203),
    ("LIST_22=1", 20206),
    ("(LIST_22=1", 20206),
    ("(LIST_22=1)(LIST_22=2)", 20206),
    ("", 20206),
])
def test_bad_queries_carry_rets_codes(query: str, code: int) -> None:
    with pytest.raises(DMQLError) as err:
        tr(query)
    assert err.value.code == code
