"""`$metadata` (OData CSDL XML) -> entity types, properties and enums for `mls-sync metadata`."""

from __future__ import annotations

from typing import Any

from lxml import etree

from mls_sync.sources.base import ServerError

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def parse_csdl(xml: bytes) -> dict[str, Any]:
    """Entity types with their key and properties (name, type, nullable), entity sets and enums.

    The parser resolves no entities and fetches nothing: the document comes from outside.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise ServerError(f"$metadata is not valid XML: {exc}") from None
    entity_types: list[dict[str, Any]] = []
    enums: dict[str, list[str]] = {}
    sets: list[dict[str, str]] = []
    for schema in root.iter(f"{EDM}Schema"):
        ns = schema.get("Namespace", "")
        for et in schema.findall(f"{EDM}EntityType"):
            entity_types.append({
                "name": et.get("Name"),
                "namespace": ns,
                "key": [r.get("Name") for r in et.findall(f"{EDM}Key/{EDM}PropertyRef")],
                "properties": [
                    {"name": p.get("Name"), "type": p.get("Type"),
                     "nullable": p.get("Nullable", "true").lower() != "false",
                     "max_length": int(p.get("MaxLength")) if (p.get("MaxLength") or "").isdigit() else None}
                    for p in et.findall(f"{EDM}Property")
                ],
                "navigation": [{"name": n.get("Name"), "type": n.get("Type")}
                               for n in et.findall(f"{EDM}NavigationProperty")],
            })
        for en in schema.findall(f"{EDM}EnumType"):
            enums[f"{ns}.{en.get('Name')}"] = [m.get("Name") for m in en.findall(f"{EDM}Member")]
        for es in schema.iter(f"{EDM}EntitySet"):
            sets.append({"name": es.get("Name"), "type": es.get("EntityType")})
    if not entity_types:
        raise ServerError("$metadata lists no entity types")
    return {"protocol": "reso", "entity_types": entity_types, "entity_sets": sets, "enums": enums}
