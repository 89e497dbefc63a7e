"""GetMetadata replies: COMPACT and STANDARD-XML, SYSTEM TimeZoneOffset, lookups, decoding."""

from __future__ import annotations

import pytest
from mls_sync.sources.rets.metadata import Lookups, parse_metadata, table_summary, time_zone_offset

from tests.unit.test_rets_fixtures import FLEX, FLEX_GET, LIBRETS, flex

META = "get/retsgw.flexmls.com/rets2_1_GetMetadata/"


def test_compact_system_and_classes() -> None:
    reply, items = parse_metadata((LIBRETS / "metadata-response.xml").read_bytes())
    assert reply.code == 0
    assert items["SYSTEM"][0]["SystemID"] == "CRT_RETS"
    assert [c["ClassName"] for c in items["CLASS"]] == ["CON", "RES"]
    assert items["CLASS"][0]["@Resource"] == "Property"


def test_blank_data_extended_chars_and_empty_comments() -> None:
    _, items = parse_metadata((LIBRETS / "metadata-blank-data.xml").read_bytes())
    assert [c["ClassName"] for c in items["CLASS"]] == ["", "CON"]
    _, items = parse_metadata((LIBRETS / "metadata-extended-char.xml").read_bytes())
    assert items["CLASS"][0]["Description"].startswith("N") and items["CLASS"][0]["StandardName"]
    _, items = parse_metadata((LIBRETS / "metadata-system-empty-comments.xml").read_bytes())
    assert items["SYSTEM"][0]["SystemID"] == "RMLS-RETS"
    assert time_zone_offset(items["SYSTEM"]) is None


def test_raw_metadata_every_type() -> None:
    _, items = parse_metadata((LIBRETS / "raw-metadata").read_bytes())
    assert {"SYSTEM", "RESOURCE", "CLASS", "TABLE", "LOOKUP", "LOOKUP_TYPE", "OBJECT"} <= set(items)
    lk = Lookups()
    lk.add_table(items["TABLE"])
    lk.add_lookup_types(items["LOOKUP_TYPE"])
    assert "AR" in lk.values and lk.field_lookup
    assert table_summary(items["TABLE"])[0]["SystemName"] == "FIRST_NAME" or table_summary(items["TABLE"])


@pytest.mark.parametrize("path", ["post/retsgw.flexmls.com/rets2_1_GetMetadata/026512d08d8a650c3fe99a4df7d34add.txt",
                                  META + "3f61a38b92bfdb51eaf133bf516b2483.txt"])
def test_standard_xml_system_time_zone(path: str) -> None:
    _, _headers, body = flex(path)
    _, items = parse_metadata(body)
    assert items["SYSTEM"][0]["SystemID"] == "demomls"
    assert time_zone_offset(items["SYSTEM"]) == "-05:00"


def test_standard_xml_system_element_form() -> None:
    _, _, body = flex(META + "940a2bcb4240708a30ed3e4abd2a3056.txt")
    _, items = parse_metadata(body)
    assert items["SYSTEM"][0]["SystemID"] == "demomls"


@pytest.mark.parametrize("name", ["641d8d7917275a5ad955e16077733535.txt", "785c884c29c4c4d17deb0fcd89cd5282.txt"])
def test_lookup_and_lookup_type_element_names(name: str) -> None:
    _, _, body = flex(META + name)
    _, items = parse_metadata(body)
    values = {i["Value"]: i["LongValue"] for i in items["LOOKUP_TYPE"]}
    assert values["5PSUX49PM1Q"] == "Lake/Other" and len(values) >= 6
    assert items["LOOKUP_TYPE"][0]["@Lookup"] == "20000426151013376279000000"


def test_big_standard_xml_table_and_class_resource_object() -> None:
    _, _, body = flex(META + "bbe857812f04d9e40c3508c212ab0ebe.txt")  # 248 KB
    _, items = parse_metadata(body)
    fields = table_summary(items["TABLE"])
    assert len(fields) > 100 and fields[0]["SystemName"] == "LIST_0"
    assert any(f["SystemName"] == "LIST_15" and f["LookupName"] for f in fields)
    _, _, body = flex(META + "9ed93625ec4cad577e42158701ae7b44.txt")
    assert parse_metadata(body)[1]["CLASS"][0]["ClassName"] == "A"
    _, _, body = flex(META + "b3a4345b713492d24315d1f92665d7a6.txt")
    assert parse_metadata(body)[1]["RESOURCE"][0]["KeyField"] == "MEMBER_0"
    _, _, body = flex(META + "9d194ccfcc9edb5a93dea267d1f9c91d.txt")
    assert parse_metadata(body)[1]["OBJECT"][0]["ObjectType"] == "Photo"


def test_empty_metadata_and_unknown_type() -> None:
    _, _, body = flex(META + "0c110d39a7815a91b58a68006aa42dbf.txt")
    reply, items = parse_metadata(body)
    assert reply.code == 0 and items == {}
    _, items = parse_metadata((LIBRETS / "metadata-unknown.xml").read_bytes())
    assert len(items["UNKNOWN"]) == 2
    assert all(p.exists() for p in (FLEX_GET, FLEX))


def test_lookup_decode_and_encode() -> None:
    lk = Lookups()
    lk.add_table([{"SystemName": "LIST_15", "LookupName": "ListingStatus", "Interpretation": "Lookup"},
                  {"SystemName": "GF20", "LookupName": "Feat", "Interpretation": "LookupMulti"}])
    lk.add_lookup_types([{"@Lookup": "ListingStatus", "Value": "ACT", "LongValue": "Active"},
                         {"@Lookup": "Feat", "Value": "FP", "LongValue": "Fireplace"},
                         {"@Lookup": "Feat", "Value": "PN", "LongValue": "Pantry"}])
    rec = lk.decode({"LIST_15": "ACT", "GF20": "FP,PN", "X": "ACT"})
    assert rec == {"LIST_15": "Active", "GF20": "Fireplace,Pantry", "X": "ACT"}
    assert lk.encode("LIST_15", "Active") == "ACT" and lk.encode("LIST_15", "ACT") == "ACT"
