"""Field map + normalizers: MLS values in, typed column values out, bad values never silent."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from mls_sync.config import find_provider
from mls_sync.mapping import Mapper, n_html, n_timestamp, parse_time_zone, row_hash

MAPPINGS = Path(__file__).resolve().parents[2] / "include" / "mappings"


@pytest.fixture
def rets_mapper() -> Mapper:
    return Mapper(find_provider("demo_rets", MAPPINGS), time_zone=parse_time_zone("-05:00"))


def _record(**over: str) -> dict[str, str]:
    rec = {
        "LIST_1": "20240101000000000001", "LIST_105": "MLS1000001", "LIST_22": "$1,250,000.5",
        "LIST_15": "Active Under Contract", "LIST_30": " 12 Oak St, Austin, TX 78701 ", "LIST_39": "Austin",
        "LIST_43": "78701-1234", "LIST_66": "4", "LIST_67": "2.0", "LIST_48": "2,150", "LIST_53": "1999",
        "LIST_132": "2024-01-05", "LIST_87": "2024-03-01T10:30:00", "LIST_88": "2024-03-01T10:00:00.250",
        "GF20": "Granite Counters, Fireplace,,", "REMARKS": "<p>Sunny &amp; bright<br/>home</p><b>Wow</b>",
        "LIST_46": "30.2672", "LIST_47": "-97.7431",
    }
    rec.update(over)
    return rec


def test_normalizes_every_kind(rets_mapper: Mapper) -> None:
    m = rets_mapper.map(_record())
    assert m.rejected is None and not m.warnings
    row = m.row
    assert row["price"] == Decimal("1250000.50")
    assert row["status"] == "ActiveUnderContract" and row["mls_status"] == "Active Under Contract"
    assert row["address"] == "12 Oak St, Austin, TX 78701"
    assert row["bedrooms"] == 4 and row["bathrooms"] == Decimal("2.0") and row["square_feet"] == 2150
    assert row["listed_date"] == date(2024, 1, 5)
    # naive RETS local time (-05:00) -> UTC
    assert row["mls_modified_at"] == datetime(2024, 3, 1, 15, 30, tzinfo=UTC)
    assert row["status_changed_at"] == datetime(2024, 3, 1, 15, 0, 0, 250000, tzinfo=UTC)
    assert row["interior_features"] == ["Granite Counters", "Fireplace"]
    assert row["public_remarks"] == "Sunny & bright\nhome\nWow"
    assert row["latitude"] == Decimal("30.2672")


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Plain remarks, nothing to clean.  ", "Plain remarks, nothing to clean."),
    ("Two  spaces\tand a tab", "Two spaces and a tab"),
    ("line one\r\n\n  line two ", "line one\nline two"),
    ("form\x0cfeed and\u2028separator", "form feed and\nseparator"),
    ("group\x1dsep", "group\nsep"),
    ("<p>Sunny &amp; bright<br/>home</p>", "Sunny & bright\nhome"),
    ("Price &lt; $500k", "Price < $500k"),
    ("a" + " " * 7 + "b  c   d", "a b c d"),
    ("this <b>stunning</b> home", "this stunning home"),
    ("tab\t  and   spaces  \r\n next", "tab and spaces\nnext"),
    ("   ", None),
])
def test_html_remarks_clean_only_what_needs_it(raw: str, expected: str | None) -> None:
    assert n_html(raw, None, None) == expected


def test_missing_required_field_rejects_with_reason(rets_mapper: Mapper) -> None:
    m = rets_mapper.map(_record(LIST_105=""))
    assert m.row is None
    assert "LIST_105" in m.rejected and "mls_listing_id" in m.rejected


def test_unreadable_optional_value_is_null_with_warning(rets_mapper: Mapper) -> None:
    m = rets_mapper.map(_record(LIST_22="call agent", LIST_66="3.5"))
    assert m.row is not None
    assert m.row["price"] is None and m.row["bedrooms"] is None
    assert any("LIST_22" in w and "money" in w for w in m.warnings)
    assert any("LIST_66" in w and "whole number" in w for w in m.warnings)


def test_unknown_status_is_a_warning_not_a_crash(rets_mapper: Mapper) -> None:
    m = rets_mapper.map(_record(LIST_15="Sold-ish"))
    assert m.row["status"] is None
    assert any("Sold-ish" in w for w in m.warnings)


def test_bad_required_timestamp_rejects(rets_mapper: Mapper) -> None:
    m = rets_mapper.map(_record(LIST_87="yesterday"))
    assert m.row is None and "ISO 8601" in m.rejected


def test_row_hash_changes_only_with_content(rets_mapper: Mapper) -> None:
    a = rets_mapper.map(_record()).row_hash
    assert a == rets_mapper.map(_record()).row_hash
    assert a != rets_mapper.map(_record(LIST_22="1250001")).row_hash
    assert row_hash({"a": 1, "b": 2}) == row_hash({"b": 2, "a": 1})


@pytest.mark.parametrize("provider", ["demo_rets", "demo_reso"])
def test_mapped_hash_is_the_row_hash_stored_rows_carry(provider: str) -> None:
    """The mapper hashes rows it builds in sorted column order without sorting again: the hash
    must stay `row_hash` of the row, or every stored listing would look changed."""
    mapper = Mapper(find_provider(provider, MAPPINGS), time_zone=parse_time_zone("-05:00"))
    rets = {"LIST_1": "K1", "LIST_105": "MLS1", "LIST_15": "Active", "LIST_87": "2024-03-01T10:30:00",
            "LIST_22": "$1,250,000", "LIST_66": "3", "GF20": "Fireplace,Granite", "REMARKS": "<p>Nice</p>"}
    reso = {"ListingKey": "K1", "ListingId": "MLS1", "StandardStatus": "Active", "ListPrice": 1250000,
            "ModificationTimestamp": "2024-03-01T10:30:00Z", "Appliances": ["Range"], "BedroomsTotal": 3}
    m = mapper.map(rets if provider == "demo_rets" else reso)
    assert m.row is not None and m.row_hash == row_hash(m.row) and list(m.row) == sorted(m.row)
    assert m.row["status"] == "Active" and m.row["listing_key"] == "K1"


def test_repeated_values_map_the_same_every_time(rets_mapper: Mapper) -> None:
    """Repeating fields are normalized once per distinct value; rows must not notice."""
    first = [rets_mapper.map(_record(LIST_1=f"K{i}", LIST_66=str(i % 3))) for i in range(6)]
    # records 3-5 take every repeating value from the memo that records 0-2 filled
    for i in range(3):
        assert first[i + 3].row == {**first[i].row, "listing_key": f"K{i + 3}"}
    assert first[3].row["bedrooms"] == 0 and first[4].row["price"] == Decimal("1250000.50")
    # a list is the row's own, whether it was just normalized (record 0) or remembered (3):
    # changing it changes no other row
    first[0].row["interior_features"].append("Pool")
    first[3].row["interior_features"].append("Spa")
    assert rets_mapper.map(_record()).row["interior_features"] == ["Granite Counters", "Fireplace"]
    assert first[4].row["interior_features"] == ["Granite Counters", "Fireplace"]
    # a bad value is not remembered: it warns on every record that carries it
    for _ in range(3):
        m = rets_mapper.map(_record(LIST_66="3.5"))
        assert m.row["bedrooms"] is None and any("whole number" in w for w in m.warnings)


def test_memo_switches_off_for_fields_unique_per_listing(rets_mapper: Mapper) -> None:
    memo = {col: memo for _, col, _, _, _, memo in rets_mapper._steps}
    limit = type(memo["latitude"]).LIMIT
    for i in range(limit + 10):
        rets_mapper.map(_record(LIST_46=f"30.{i:06d}", LIST_66="3"))
    # latitude never repeated: the memo gave up and holds nothing; bedrooms keeps serving
    assert not memo["latitude"].active and memo["latitude"].values == {}
    assert memo["bedrooms"].active and memo["bedrooms"].values == {"3": 3}
    assert memo["public_remarks"] is None  # free text is never memoized
    # and the field is mapped without one from then on
    working = {col: m for _, col, _, _, _, m in rets_mapper._typed}
    assert working["latitude"] is None and working["bedrooms"] is memo["bedrooms"]
    assert rets_mapper.map(_record(LIST_46="30.5")).row["latitude"] == Decimal("30.5")


def test_reso_values_arrive_typed() -> None:
    mapper = Mapper(find_provider("demo_reso", MAPPINGS))
    rec = {"ListingKey": "K1", "ListingId": "MLS1", "StandardStatus": "Closed", "ListPrice": 350000,
           "ModificationTimestamp": "2024-03-01T10:30:00.000Z", "Appliances": ["Dishwasher", "Range"],
           "BedroomsTotal": 3}
    m = mapper.map(rec)
    assert m.row["status"] == "Closed" and m.row["price"] == Decimal("350000.00")
    assert m.row["appliances"] == ["Dishwasher", "Range"] and m.row["bedrooms"] == 3
    assert m.row["mls_modified_at"] == datetime(2024, 3, 1, 10, 30, tzinfo=UTC)
    assert not Mapper.is_active(m.row)


def test_typed_values_are_remembered_by_type_and_value() -> None:
    """RESO sends numbers and arrays: 2 and 2.0 are equal to Python but not the same text in the
    row hash, so each keeps what a fresh mapping gives."""
    mapper = Mapper(find_provider("demo_reso", MAPPINGS))
    base = {"ListingKey": "K1", "ListingId": "MLS1", "StandardStatus": "Active",
            "ModificationTimestamp": "2024-03-01T10:30:00Z"}
    seen = [mapper.map({**base, "BathroomsTotalInteger": v, "Appliances": ["Range"]}).row for v in (2, 2.0, 2, True)]
    assert [str(r["bathrooms"]) for r in seen[:3]] == ["2", "2.0", "2"]
    assert seen[3]["bathrooms"] is None  # a yes/no where a number belongs: not taken for 1
    assert all(r["appliances"] == ["Range"] for r in seen)
    memo = {col: memo for _, col, _, _, _, memo in mapper._steps}
    assert memo["bathrooms"].hits == 1 and memo["appliances"].hits == 3


@pytest.mark.parametrize("value,expected", [("-05:00", -300), ("+0530", 330), ("UTC", 0)])
def test_time_zones(value: str, expected: int) -> None:
    tz = parse_time_zone(value)
    assert tz.utcoffset(None).total_seconds() / 60 == expected


@pytest.mark.parametrize(("zone", "raw", "expected"), [
    ("-05:00", "2024-03-01T10:30:00.25", datetime(2024, 3, 1, 15, 30, 0, 250000, tzinfo=UTC)),
    ("+0530", "2024-03-01 00:10:00", datetime(2024, 2, 29, 18, 40, tzinfo=UTC)),
    ("America/Chicago", "2024-07-15T12:00:00", datetime(2024, 7, 15, 17, tzinfo=UTC)),  # daylight time
    ("America/Chicago", "2024-01-15T12:00:00", datetime(2024, 1, 15, 18, tzinfo=UTC)),
    ("-05:00", "2024-03-01T10:30:00Z", datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),  # a zone of its own wins
    ("-05:00", "2024-03-01T10:30:00+01:00", datetime(2024, 3, 1, 9, 30, tzinfo=UTC)),
])
def test_timestamps_end_in_utc(zone: str, raw: str, expected: datetime) -> None:
    mapper = Mapper(find_provider("demo_rets", MAPPINGS), time_zone=parse_time_zone(zone))
    got = n_timestamp(raw, None, mapper)
    assert got == expected and got.tzinfo is UTC


def test_timestamp_out_of_range_in_utc_is_a_warning_not_a_crash() -> None:
    mapper = Mapper(find_provider("demo_rets", MAPPINGS), time_zone=parse_time_zone("+05:00"))
    rec = {"LIST_1": "K1", "LIST_105": "MLS1", "LIST_15": "Active", "LIST_87": "2024-03-01T10:30:00",
           "LIST_88": "0001-01-01T00:00:00"}
    m = mapper.map(rec)
    assert m.row is not None and m.row["status_changed_at"] is None
    assert m.warnings == ["field LIST_88 (status_changed_at): '0001-01-01T00:00:00' is out of range once "
                          "converted to UTC; stored as NULL"]


def test_iana_zone_and_bad_zone() -> None:
    chicago = parse_time_zone("America/Chicago")
    assert datetime(2024, 1, 15, 12, tzinfo=chicago).utcoffset() == timedelta(hours=-6)
    assert datetime(2024, 7, 15, 12, tzinfo=chicago).utcoffset() == timedelta(hours=-5)  # daylight time
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_time_zone("Mars/Olympus")


def test_column_reader_reads_what_map_columns_maps() -> None:
    """The key walk's fast reader of one column gives exactly map_columns' value, bad values None."""
    mapper = Mapper(find_provider("demo_rets", MAPPINGS), time_zone=parse_time_zone("-05:00"))
    read = mapper.column_reader("mls_modified_at")
    for value in ("2025-09-25T12:00:00", "2025-09-25T12:00:00.123", "not a time", "", None):
        rec = {"LIST_87": value}
        assert read(rec) == mapper.map_columns(rec, {"mls_modified_at"}).get("mls_modified_at"), value
    assert read({"LIST_87": "2025-09-25T12:00:00"}).isoformat() == "2025-09-25T17:00:00+00:00"
    assert mapper.column_reader("no_such_column")({"LIST_87": "x"}) is None


def test_roster_records_map_through_their_own_fields() -> None:
    """A RETS open house: server-local times to UTC, its remarks cleaned like listings', keyed and hashed."""
    cfg = find_provider("demo_rets", MAPPINGS)
    res = cfg.resources["open_house"]
    mapper = Mapper(cfg, time_zone=parse_time_zone("-05:00"), items=res.field_items())
    rec = {"OH_KEY": "OH0000001", "OH_LIST_KEY": "L1", "OH_DATE": "2025-10-09", "OH_START": "2025-10-09T10:00:00",
           "OH_END": "2025-10-09T12:00:00", "OH_REMARKS": "Park <b>on the street</b> &amp; ring",
           "OH_MODIFIED": "2025-09-01T08:30:00", "LIST_22": "999"}
    m = mapper.map(rec)
    assert m.row is not None and m.row["open_house_key"] == "OH0000001"
    assert m.row["start_at"] == datetime(2025, 10, 9, 15, 0, tzinfo=UTC)
    assert m.row["date"] == date(2025, 10, 9) and m.row["remarks"] == "Park on the street & ring"
    assert "price" not in m.row  # only the resource's own columns
    assert mapper.map({**rec, "OH_TYPE": None}).row_hash == m.row_hash
    assert mapper.map({**rec, "OH_REMARKS": "changed"}).row_hash != m.row_hash
    missing = mapper.map({k: v for k, v in rec.items() if k != "OH_LIST_KEY"})
    assert missing.row is None and "OH_LIST_KEY" in (missing.rejected or "")
