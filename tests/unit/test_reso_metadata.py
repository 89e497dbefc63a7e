"""`$metadata` documents as production servers send them: read tolerantly, one warning per oddity,
and a clear refusal (a configuration error, never a network one) for what cannot be read."""

from __future__ import annotations

import logging

import pytest
from mls_sync.sources.reso.metadata import MetadataError, ServiceModel, parse_csdl

# Everything at once: EDM elements in no namespace, `edmx:DataService` misspelt, an alias, a
# TypeDefinition, a set `Properties` of type `PropertyResi` annotated as Property, a type never
# defined, a key field never declared, enum members spelt two vendor ways, a base type.
VENDOR = b"""<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
 <edmx:DataService>
  <Schema Namespace="Vendor.Data" Alias="VD">
   <TypeDefinition Name="Key" UnderlyingType="Edm.Int64"/>
   <EntityType Name="Base">
    <Property Name="ModificationTimestamp" Type="Edm.DateTimeOffset" Precision="3"/>
   </EntityType>
   <EntityType Name="PropertyResi" BaseType="VD.Base">
    <Annotation Term="RESO.OData.Metadata.StandardName" String="Property"/>
    <Key><PropertyRef Name="ListingKeyNumeric"/></Key>
    <Property Name="ListingKeyNumeric" Type="VD.Key" Nullable="false"/>
    <Property Name="ListingKey" Type="Edm.String" MaxLength="20"/>
    <Property Name="StandardStatus" Type="VD.StandardStatus"/>
    <Property Name="Features" Type="Collection(VD.StandardStatus)"/>
    <Property Name="OriginatingSystemID" Type="Vendor.Data.SystemIdentifier"/>
   </EntityType>
   <EntityType Name="Media"><Key><PropertyRef Name="MediaObjectID"/></Key>
    <Property Name="MediaKey" Type="Edm.String"/>
   </EntityType>
   <EnumType Name="StandardStatus">
    <Member Name="Active" Value="0"/>
    <Member Name="Active_Under_Contract" Value="1">
     <Annotation Term="RESO.OData.Metadata.StandardName"><String>Active Under Contract</String></Annotation>
    </Member>
    <Member Name="b__436f6d696e6720536f6f6e" Value="2"/>
   </EnumType>
   <EntityContainer Name="Container">
    <EntitySet Name="Properties" EntityType="VD.PropertyResi"/>
    <EntitySet Name="Media" EntityType="Vendor.Data.Media"/>
   </EntityContainer>
  </Schema>
 </edmx:DataService>
</edmx:Edmx>"""


def test_a_vendor_document_is_read_with_one_warning_per_oddity(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    model = parse_csdl(VENDOR)
    assert model.version == "4.0"
    res = model.resource("Property")
    assert (res.path, res.type.name) == ("Properties", "PropertyResi")
    assert model.resolution_note(res) == ("resource 'Property' is entity set 'Properties' "
                                          "(type PropertyResi, annotated as Property)")
    f = res.type.fields
    assert f["ListingKeyNumeric"].edm == "Edm.Int64"  # through the alias and the TypeDefinition
    assert f["ModificationTimestamp"].edm == "Edm.DateTimeOffset" and f["ModificationTimestamp"].precision == 3
    assert f["StandardStatus"].enum is not None and f["Features"].enum is None
    assert f["OriginatingSystemID"].edm == ""  # unknown: literals typed by their values
    assert [(m.name, m.meaning) for m in f["StandardStatus"].enum.members] == [
        ("Active", "Active"), ("Active_Under_Contract", "Active Under Contract"),
        ("b__436f6d696e6720536f6f6e", "Coming Soon")]
    warnings = model.warnings
    assert len(warnings) == 5, warnings
    assert "not inside edmx:DataServices" in warnings[0] and "DataService" in warnings[0]
    assert "no XML namespace" in warnings[1]
    assert "b__<hex>" in warnings[2]
    assert "Vendor.Data.SystemIdentifier is used by PropertyResi.OriginatingSystemID but never defined" in warnings[3]
    assert "entity type Media: key field(s) MediaObjectID not declared" in warnings[4]
    assert [r.message for r in caplog.records] == [f"$metadata: {w}" for w in warnings]
    assert model.resource("Media").path == "Media"


def test_the_model_survives_the_metadata_cache() -> None:
    model = parse_csdl(VENDOR)
    again = ServiceModel.from_json(model.to_json())
    assert again is not None
    assert again.resource("Property").type.fields == model.resource("Property").type.fields
    assert again.version == model.version and again.warnings == model.warnings
    assert ServiceModel.from_json({"v": 0}) is None  # written by another version: read afresh
    assert ServiceModel.from_json({"v": 1, "types": []}) is None  # damaged: read afresh


def test_describe_is_what_mls_sync_metadata_prints() -> None:
    out = parse_csdl(VENDOR).describe("Property")
    assert out["resource"] == {"name": "Property", "entity_set": "Properties",
                               "entity_type": "Vendor.Data.PropertyResi", "key": ["ListingKeyNumeric"],
                               "key_types": {"ListingKeyNumeric": "Edm.Int64"}}
    assert out["enums"]["Vendor.Data.StandardStatus"]["b__436f6d696e6720536f6f6e"] == "Coming Soon"
    assert len(out["warnings"]) == 6 and out["odata_version"] == "4.0"
    assert out["warnings"][-1] == ("resource 'Property' is entity set 'Properties' "
                                   "(type PropertyResi, annotated as Property)")
    with pytest.raises(MetadataError, match="no entity set for resource 'Listing': entity sets Media, Properties"):
        parse_csdl(VENDOR).describe("Listing")


def test_textbook_document_has_no_warnings() -> None:
    text = VENDOR.replace(b"edmx:DataService>", b"edmx:DataServices>").replace(
        b'<Schema Namespace="Vendor.Data" Alias="VD">',
        b'<Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Vendor.Data" Alias="VD">')
    text = text.replace(b'<Property Name="OriginatingSystemID" Type="Vendor.Data.SystemIdentifier"/>', b"")
    text = text.replace(b'PropertyRef Name="MediaObjectID"', b'PropertyRef Name="MediaKey"')
    text = text.replace(b'Name="b__436f6d696e6720536f6f6e" Value="2"/>', b'Name="ComingSoon" Value="2"/>')
    assert parse_csdl(text.replace(b'Version="4.0"', b'Version="4.01"')).warnings == []


@pytest.mark.parametrize(("body", "found"), [
    (b"<html><head><title>Sign in</title></head><body>Please sign in</body></html>",
     r"declares no entity types \(root <html>, elements found: body, head, html, title\)"),
    (b'{"error": {"code": "401", "message": "Unauthorized"}}', r"is not XML .*it begins '\{\"error\""),
    (b"", r"is not XML"),
    (b'<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0"><edmx:DataServices>'
     b'<Schema Namespace="X"/></edmx:DataServices></edmx:Edmx>', r"no entity types \(root <Edmx>"),
])
def test_a_document_that_cannot_be_read_says_what_it_found(body: bytes, found: str) -> None:
    with pytest.raises(MetadataError, match=found) as err:
        parse_csdl(body)
    assert err.value.category == "config"  # mls-sync exits 2, not 4 ("server or network")


def test_broken_xml_is_recovered_where_it_can_be() -> None:
    broken = VENDOR.replace(b"</EnumType>", b"</EnumType><<&BROKEN")
    model = parse_csdl(broken)
    assert model.resource("Property").path == "Properties"
    assert model.warnings[0].startswith("not well-formed XML")
