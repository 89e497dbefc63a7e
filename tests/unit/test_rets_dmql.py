"""DMQL2 building: clauses, quoting, refusal of syntax in values, time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from mls_sync.sources.base import QueryError
from mls_sync.sources.rets import dmql


def test_clauses() -> None:
    assert dmql.clause_in("LIST_1", ["A1", "B2"]) == "(LIST_1=A1,B2)"
    assert dmql.clause_in("LIST_39", ["Oak Park", "Winston-Salem"]) == '(LIST_39="Oak Park","Winston-Salem")'
    assert dmql.clause_lookup("LIST_15", ["ACT", "PND"]) == "(LIST_15=|ACT,PND)"
    assert dmql.clause_range("LIST_87", "2024-01-01T00:00:00", None) == "(LIST_87=2024-01-01T00:00:00+)"
    assert dmql.clause_range("F", None, "5") == "(F=5-)" and dmql.clause_range("F", "1", "5") == "(F=1-5)"
    assert dmql.and_all(["(A=1)", "", "(B=2)"]) == "(A=1),(B=2)"


@pytest.mark.parametrize("value", ["1),(LIST_22=0+", "A|B", "a,b", "x*", "?", '"q"', "~x", "a=b", ".ANY.",
                                   "", "  ", "line\nbreak", "back\\slash", "1+"])
def test_syntax_in_values_is_refused(value: str) -> None:
    with pytest.raises(QueryError):
        dmql.clause_in("LIST_1", [value])


@pytest.mark.parametrize("name", ["LIST_1)", "(x", "a b", ""])
def test_bad_field_names(name: str) -> None:
    with pytest.raises(QueryError):
        dmql.clause_in(name, ["1"])


def test_chunks() -> None:
    keys = [str(i) for i in range(250)]
    assert [len(c) for c in dmql.chunks(keys, 100)] == [100, 100, 50]


def test_time_zone_conversion() -> None:
    utc = datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    assert dmql.format_ts(dmql.to_server(utc, dmql.parse_zone("-05:00"))) == "2024-06-01T07:00:00.250"
    assert dmql.format_ts(dmql.to_server(utc, dmql.parse_zone("America/Chicago"))) == "2024-06-01T07:00:00.250"
    assert dmql.format_ts(dmql.to_server(utc.replace(month=1), dmql.parse_zone("America/Chicago"))) == \
        "2024-01-01T06:00:00.250"
    assert dmql.parse_zone("+0530") == timezone(timedelta(hours=5, minutes=30))
    assert dmql.parse_zone(None) is None and dmql.parse_zone("Z") == UTC
    with pytest.raises(QueryError):
        dmql.parse_zone("Mars/Olympus")
    assert dmql.format_ts(datetime(2024, 1, 1)) == "2024-01-01T00:00:00"
