"""$filter building and escaping: no value from a run's conf may change a query's meaning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from mls_sync.sources.base import QueryError, SearchCriteria, SourceFields
from mls_sync.sources.reso import odata

ROLES = SourceFields(key="ListingKey", modified="ModificationTimestamp", status="StandardStatus",
                     postal_code="PostalCode", city="City")
HOSTILE = "x' or 1 eq 1 or ListingKey eq '"


def test_string_literal_doubles_quotes() -> None:
    assert odata.string("O'Brien") == "'O''Brien'"
    assert odata.string(HOSTILE) == "'x'' or 1 eq 1 or ListingKey eq '''"


@pytest.mark.parametrize("bad", ["a\nb", "a\x00", "tab\there", "x\u2028y", "del\x7f"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(QueryError):
        odata.string(bad)


def test_hostile_values_stay_inside_one_literal() -> None:
    crit = SearchCriteria(cities=(HOSTILE,), postal_codes=("12345') or (1 eq 1",), statuses=("Active",))
    text = odata.criteria_filter(crit, ROLES, keys=(HOSTILE,))
    assert text is not None
    # Strip every quoted literal: what remains must be only our own operators and field names.
    skeleton = odata_skeleton(text)
    assert skeleton == ("(ListingKey in (L)) and (PostalCode in (L)) and (City in (L)) "
                        "and (StandardStatus in (L))")


def odata_skeleton(text: str) -> str:
    """Replace each OData string literal (with '' escapes) by L, the way a parser tokenises."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "'":
            i += 1
            while i < len(text):
                if text[i] == "'" and text[i + 1:i + 2] == "'":
                    i += 2
                elif text[i] == "'":
                    break
                else:
                    i += 1
            i += 1
            out.append("L")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_timestamps_are_utc_literals() -> None:
    est = timezone(timedelta(hours=-5))
    assert odata.timestamp(datetime(2024, 1, 15, 7, 30, tzinfo=est)) == "2024-01-15T12:30:00Z"
    assert odata.timestamp(datetime(2024, 1, 15, 12, 30, 0, 250000, tzinfo=UTC)) == "2024-01-15T12:30:00.25Z"
    assert odata.timestamp(datetime(2024, 1, 15, 12, 30)) == "2024-01-15T12:30:00Z"  # naive = UTC
    # server literals keep their precision, so `eq` matches 7-digit fractions exactly
    assert odata.timestamp("2024-01-15T12:30:00.1234567Z") == "2024-01-15T12:30:00.1234567Z"


@pytest.mark.parametrize("bad", ["2024-01-15", "2024-01-15T12:30:00Z or 1 eq 1", "now()", "", 5])
def test_timestamp_rejects_non_literals(bad: object) -> None:
    with pytest.raises(QueryError):
        odata.timestamp(bad)  # type: ignore[arg-type]


def test_parse_timestamp() -> None:
    assert odata.parse_timestamp("2024-01-15T12:30:00.1234567Z") == datetime(2024, 1, 15, 12, 30, 0, 123456,
                                                                             tzinfo=UTC)
    assert odata.parse_timestamp("2024-01-15T07:30:00-05:00") == datetime(2024, 1, 15, 12, 30, tzinfo=UTC)
    assert odata.parse_timestamp(None) is None


def test_criteria_filter_combines_with_and() -> None:
    crit = SearchCriteria(modified_since=datetime(2024, 1, 1, tzinfo=UTC),
                          modified_until=datetime(2024, 2, 1, tzinfo=UTC),
                          statuses=("Active", "Pending"), raw_query="ListPrice gt 100000 or BedroomsTotal eq 3")
    assert odata.criteria_filter(crit, ROLES) == (
        "(ModificationTimestamp ge 2024-01-01T00:00:00Z) and (ModificationTimestamp lt 2024-02-01T00:00:00Z)"
        " and (StandardStatus in ('Active','Pending')) and (ListPrice gt 100000 or BedroomsTotal eq 3)")
    assert odata.criteria_filter(SearchCriteria(), ROLES) is None


def test_filter_by_role_without_field_is_refused() -> None:
    with pytest.raises(QueryError, match=r"source_fields\.city"):
        odata.criteria_filter(SearchCriteria(cities=("Springfield",)), SourceFields("K", "M"))


def test_keyset_condition() -> None:
    clause = odata.after_filter([("ModificationTimestamp", "2024-01-01T00:00:00Z"), ("ListingKey", "'K1'")])
    assert clause == ("ModificationTimestamp gt 2024-01-01T00:00:00Z or (ModificationTimestamp eq "
                      "2024-01-01T00:00:00Z and ListingKey gt 'K1')")
    assert odata.after_filter([("A", "1"), ("B", "2"), ("C", "3")]) == \
        "A gt 1 or (A eq 1 and (B gt 2 or (B eq 2 and C gt 3)))"


@pytest.mark.parametrize("bad", ["ListPrice desc", "a,b", "x'y", "1abc", "Name eq 'x'", ""])
def test_identifiers_are_checked(bad: str) -> None:
    with pytest.raises(QueryError):
        odata.ident(bad)


def test_select_adds_required_fields_once() -> None:
    assert odata.select_list(["ListPrice", "ListingKey"], ["ListingKey", "ModificationTimestamp", None]) == \
        "ListPrice,ListingKey,ModificationTimestamp"
    assert odata.select_list([], ["ListingKey"]) is None


def test_key_chunks_are_sorted_unique_and_bounded() -> None:
    keys = [*reversed([f"K{i:04d}" for i in range(250)]), "K0001"]
    chunks = odata.key_chunks(keys, 100)
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert chunks[0][0] == "K0000" and sum(chunks, ()) == tuple(sorted(set(keys)))


def test_cursor_validation() -> None:
    assert odata.check_cursor(None, "keyset") is None
    with pytest.raises(QueryError):
        odata.check_cursor({"v": 1, "mode": "nextlink"}, "keyset")
    with pytest.raises(QueryError):
        odata.check_cursor({"offset": 5}, "keyset")
