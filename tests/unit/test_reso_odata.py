"""$filter building and escaping: no value from a run's conf may change a query's meaning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from mls_sync.sources.base import QueryError, SearchCriteria, SourceFields
from mls_sync.sources.reso import odata
from mls_sync.sources.reso.metadata import Enum, EnumMember, FieldType

ROLES = SourceFields(key="ListingKey", modified="ModificationTimestamp", status="StandardStatus",
                     postal_code="PostalCode", city="City")
STRING = FieldType("Edm.String")
DIALECT = odata.Dialect({"ListingKey": STRING, "ModificationTimestamp": FieldType("Edm.DateTimeOffset", 3),
                         "StandardStatus": STRING, "PostalCode": STRING, "City": STRING})
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
    text = odata.criteria_filter(crit, ROLES, DIALECT, keys=(HOSTILE,))
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
    assert odata.criteria_filter(crit, ROLES, DIALECT) == (
        "(ModificationTimestamp ge 2024-01-01T00:00:00Z) and (ModificationTimestamp lt 2024-02-01T00:00:00Z)"
        " and (StandardStatus in ('Active','Pending')) and (ListPrice gt 100000 or BedroomsTotal eq 3)")
    assert odata.criteria_filter(SearchCriteria(), ROLES, DIALECT) is None


def test_filter_by_role_without_field_is_refused() -> None:
    with pytest.raises(QueryError, match=r"source_fields\.city"):
        odata.criteria_filter(SearchCriteria(cities=("Springfield",)), SourceFields("K", "M"), DIALECT)


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
    chunks = DIALECT.chunks("ListingKey", keys)
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert chunks[0][0] == "K0000" and sum(chunks, ()) == tuple(sorted(set(keys)))


def test_or_chains_for_odata_4_0_are_bounded_and_cover_every_key() -> None:
    """A 4.0 server gets `F eq a or F eq b`, in as many requests as keep each URL short."""
    d40 = odata.Dialect(DIALECT.fields, use_in=False)
    keys = [f"2024010112000000{i:04d}" for i in range(250)]
    chunks = d40.chunks("ListingKey", keys)
    clauses = [d40.any_of("ListingKey", c) for c in chunks]
    assert len(chunks) > 3 and sum(chunks, ()) == tuple(sorted(keys))
    assert all(len(c) <= odata.OR_CHAIN_CHARS for c in clauses)
    assert clauses[0].startswith("ListingKey eq '2024010112000000") and " in (" not in clauses[0]
    assert odata.criteria_filter(SearchCriteria(statuses=("Active", "Pending")), ROLES, d40) == \
        "StandardStatus eq 'Active' or StandardStatus eq 'Pending'"
    # the list form is decided by a callable, asked once and only when a list is written
    asked: list[int] = []
    lazy = odata.Dialect(DIALECT.fields, use_in=lambda: bool(asked.append(1)))
    assert lazy.compare("ListingKey", "eq", "A") == "ListingKey eq 'A'" and asked == []
    assert lazy.any_of("ListingKey", ["A", "B"]) == "ListingKey eq 'A' or ListingKey eq 'B'"
    lazy.any_of("ListingKey", ["C"])
    assert asked == [1]


def test_literals_are_typed_from_metadata() -> None:
    d = odata.Dialect({"ListingKeyNumeric": FieldType("Edm.Int64"), "ListPrice": FieldType("Edm.Decimal"),
                       "Open": FieldType("Edm.Boolean"), "ListingContractDate": FieldType("Edm.Date"),
                       "Id": FieldType("Edm.Guid"), "Features": FieldType("Collection(Edm.String)")})
    # an Edm.Int64 key is bare: a type-checking server answers 400 to '12415'
    assert d.compare("ListingKeyNumeric", "gt", "12415") == "ListingKeyNumeric gt 12415"
    assert d.any_of("ListingKeyNumeric", [12415, "7"]) == "ListingKeyNumeric in (12415,7)"
    assert d.literal("ListPrice", 250000.5) == "250000.5" and d.literal("ListPrice", "1e3") == "1e3"
    assert d.literal("Open", True) == "true" and d.literal("ListingContractDate", "2024-01-31") == "2024-01-31"
    assert d.literal("Id", "0f8fad5b-d9cb-469f-a165-70867728950e") == "0f8fad5b-d9cb-469f-a165-70867728950e"
    for field, bad in (("ListingKeyNumeric", "12a"), ("ListingKeyNumeric", HOSTILE), ("ListingKeyNumeric", True),
                       ("ListPrice", "1 or 1 eq 1"), ("Open", "yes"), ("ListingContractDate", "2024-01-31') or ("),
                       ("Id", "x"), ("Features", "a")):
        with pytest.raises(QueryError, match=field):
            d.literal(field, bad)
    # a field the document does not type: the value's own type decides
    assert d.literal("Unknown", 5) == "5" and d.literal("Unknown", "5") == "'5'"
    assert d.literal("Unknown", False) == "false"
    assert d.literal("Unknown", "2024-01-15T12:30:00.5Z") == "2024-01-15T12:30:00.5Z"  # a server's timestamp


def test_timestamps_at_the_declared_precision_only_widen_the_range() -> None:
    moment = datetime(2024, 1, 15, 12, 30, 0, 123456, tzinfo=UTC)
    seconds = odata.Dialect({"M": FieldType("Edm.DateTimeOffset")})  # no Precision: whole seconds (CSDL)
    millis = odata.Dialect({"M": FieldType("Edm.DateTimeOffset", 3)})
    assert seconds.compare("M", "ge", moment) == "M ge 2024-01-15T12:30:00Z"
    assert seconds.compare("M", "lt", moment, up=True) == "M lt 2024-01-15T12:30:01Z"
    assert millis.compare("M", "ge", moment) == "M ge 2024-01-15T12:30:00.123Z"
    assert millis.compare("M", "lt", moment, up=True) == "M lt 2024-01-15T12:30:00.124Z"
    assert millis.compare("M", "lt", moment.replace(microsecond=0), up=True) == "M lt 2024-01-15T12:30:00Z"
    # a server's own literal is kept to its last digit
    assert seconds.literal("M", "2024-01-15T12:30:00.1234567Z") == "2024-01-15T12:30:00.1234567Z"
    assert odata.criteria_filter(SearchCriteria(modified_since=moment), ROLES, DIALECT) == \
        "ModificationTimestamp ge 2024-01-15T12:30:00.123Z"


STATUS_ENUM = Enum("Vendor.Data.StandardStatus", (
    EnumMember("Active", "Active"), EnumMember("Active_Under_Contract", "Active Under Contract"),
    EnumMember("b__436f6d696e6720536f6f6e", "Coming Soon"), EnumMember("Pend", "Pending", "Pending")))


def test_enum_members_are_the_declared_ones_whatever_the_spelling() -> None:
    d = odata.Dialect({"StandardStatus": FieldType(STATUS_ENUM.qualified, enum=STATUS_ENUM)})
    assert d.literal("StandardStatus", "ActiveUnderContract") == "Vendor.Data.StandardStatus'Active_Under_Contract'"
    assert d.literal("StandardStatus", "ComingSoon") == "Vendor.Data.StandardStatus'b__436f6d696e6720536f6f6e'"
    assert d.literal("StandardStatus", "Pending") == "Vendor.Data.StandardStatus'Pend'"
    assert d.literal("StandardStatus", "Active_Under_Contract") == "Vendor.Data.StandardStatus'Active_Under_Contract'"
    with pytest.raises(QueryError, match="no member for 'Closed'"):
        d.literal("StandardStatus", "Closed")
    # full_sync_statuses [Active, ActiveUnderContract, ComingSoon, Pending, Closed]: Closed is not
    # this vendor's, so it cannot match a record and is left out (said in the log)
    assert d.any_of("StandardStatus", ["Active", "ActiveUnderContract", "Closed"]) == (
        "StandardStatus in (Vendor.Data.StandardStatus'Active',Vendor.Data.StandardStatus'Active_Under_Contract')")
    with pytest.raises(QueryError, match="no member for any"):
        d.any_of("StandardStatus", ["Closed"])
    # records read back as what the members mean
    recs = [{"StandardStatus": "Active_Under_Contract"}, {"StandardStatus": "b__436f6d696e6720536f6f6e"},
            {"StandardStatus": "Active"}, {"StandardStatus": None}]
    d.decode(recs)
    assert [r["StandardStatus"] for r in recs] == ["Active Under Contract", "Coming Soon", "Active", None]


def test_cursor_validation() -> None:
    assert odata.check_cursor(None, "keyset") is None
    with pytest.raises(QueryError):
        odata.check_cursor({"v": 1, "mode": "nextlink"}, "keyset")
    with pytest.raises(QueryError):
        odata.check_cursor({"offset": 5}, "keyset")
