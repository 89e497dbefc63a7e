"""`$metadata` (OData CSDL XML) -> the service model: types of fields, enums, sets, OData version.

Production documents are seldom textbook: EDM elements in no XML namespace, a misspelt
`edmx:DataServices`, an entity set named differently from its type (`Properties` of type
`PropertyResi`, annotated as Property), types referenced but never defined, key fields that are
not declared properties. The parser reads elements by local name wherever they are, records one
warning per oddity (logged once, and listed by `mls-sync metadata`), and refuses only a document
that has no entity type at all, saying what it found instead. That refusal is a MetadataError: a
configuration/data problem (the CLI's exit 2), never a "server or network" one.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from mls_sync.sources.base import QueryError

log = logging.getLogger(__name__)

EDM_NS = "http://docs.oasis-open.org/odata/ns/edm"
EDMX_NS = "http://docs.oasis-open.org/odata/ns/edmx"
STANDARD_NAME_TERMS = ("RESO.OData.Metadata.StandardName", "StandardName")
LEGACY_VALUE_TERMS = ("RESO.OData.Metadata.LegacyODataValue", "LegacyODataValue")
PRIMITIVES = frozenset({
    "Edm.String", "Edm.Boolean", "Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64",
    "Edm.Decimal", "Edm.Double", "Edm.Single", "Edm.Date", "Edm.DateTimeOffset", "Edm.TimeOfDay",
    "Edm.Duration", "Edm.Guid", "Edm.Binary", "Edm.Stream", "Edm.GeographyPoint", "Edm.GeometryPoint",
})
MODEL_VERSION = 1
_HEX_MEMBER = re.compile(r"^b__((?:[0-9A-Fa-f]{2})+)$")


class MetadataError(QueryError):
    """`$metadata` cannot be used (not CSDL, no entity types, no such resource): the provider's
    configuration or the server's document must change. Never retried."""

    category = "config"


@dataclass(frozen=True)
class EnumMember:
    name: str
    meaning: str  # what it stands for: its StandardName annotation, a decoded `b__<hex>`, or the name
    legacy: str | None = None  # RESO LegacyODataValue annotation


@dataclass(frozen=True)
class Enum:
    qualified: str
    members: tuple[EnumMember, ...]
    flags: bool = False


@dataclass(frozen=True)
class FieldType:
    """What a property is, as far as query text is concerned."""

    edm: str  # Edm.* primitive, an enum's qualified name, Collection(...), or "" (unknown)
    precision: int | None = None  # Edm.DateTimeOffset fractional-second digits
    enum: Enum | None = None


@dataclass(frozen=True)
class EntityType:
    qualified: str
    name: str
    key: tuple[str, ...]
    fields: dict[str, FieldType]
    navigation: dict[str, str]
    standard_name: str | None = None
    facets: dict[str, dict[str, Any]] = field(default_factory=dict)  # nullable, max_length (for display)


@dataclass(frozen=True)
class Resource:
    """An entity set as the client queries it: its URL segment and its type."""

    wanted: str  # the name the YAML asked for (Property, Media)
    path: str  # entity set name to put in the URL
    type: EntityType


@dataclass
class ServiceModel:
    """Everything the client takes from `$metadata`; JSON-serialisable for the metadata cache."""

    version: str  # "4.0" or "4.01"
    types: dict[str, EntityType]
    enums: dict[str, Enum]
    sets: dict[str, str]  # entity set -> qualified entity type
    warnings: list[str] = field(default_factory=list)

    # ---- lookups -----------------------------------------------------------------------------
    def resource(self, name: str) -> Resource:
        """The entity set serving `name`: a set of that name, else the set of a type of that name,
        else of a type annotated with that StandardName (a set `Properties` of type `PropertyResi`).
        """
        if name in self.sets and self.sets[name] in self.types:
            return Resource(name, name, self.types[self.sets[name]])
        lowered = {s.lower(): s for s in self.sets}
        if name.lower() in lowered and self.sets[lowered[name.lower()]] in self.types:
            real = lowered[name.lower()]
            return Resource(name, real, self.types[self.sets[real]])
        for match in (lambda t: t.name == name, lambda t: t.standard_name == name):
            for t in self.types.values():
                if not match(t):
                    continue
                sets = sorted(s for s, q in self.sets.items() if q == t.qualified)
                if sets:
                    return Resource(name, sets[0], t)
                return Resource(name, t.name, t)  # a type without a set: its own name is the best guess
        raise MetadataError(
            f"$metadata has no entity set for resource {name!r}: entity sets "
            f"{', '.join(sorted(self.sets)) or 'none'}; entity types "
            f"{', '.join(sorted(t.name for t in self.types.values())) or 'none'} "
            "(set reso.resource in the provider YAML to one of the sets)")

    def resolution_note(self, res: Resource) -> str | None:
        """A warning when the resource was found under another name than asked for."""
        if res.path == res.wanted:
            return None
        if res.path not in self.sets:
            return (f"no entity set serves type {res.type.name}; querying /{res.path} for resource {res.wanted!r}")
        how = "annotated as" if res.type.standard_name == res.wanted and res.type.name != res.wanted else "for"
        return f"resource {res.wanted!r} is entity set {res.path!r} (type {res.type.name}, {how} {res.wanted})"

    # ---- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def ftype(f: FieldType) -> list[Any]:
            return [f.edm, f.precision]

        return {
            "v": MODEL_VERSION, "version": self.version, "warnings": self.warnings, "sets": self.sets,
            "enums": {q: {"flags": e.flags, "members": [[m.name, m.meaning, m.legacy] for m in e.members]}
                      for q, e in self.enums.items()},
            "types": {q: {"name": t.name, "key": list(t.key), "standard_name": t.standard_name,
                          "fields": {n: ftype(f) for n, f in t.fields.items()}, "navigation": t.navigation,
                          "facets": t.facets}
                      for q, t in self.types.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceModel | None:
        """The cached model, or None when it was written by another version of this code."""
        if not isinstance(data, dict) or data.get("v") != MODEL_VERSION:
            return None
        try:
            enums = {q: Enum(q, tuple(EnumMember(*m) for m in e["members"]), e["flags"])
                     for q, e in data["enums"].items()}
            types = {}
            for q, t in data["types"].items():
                fields = {n: FieldType(edm, precision, enums.get(edm)) for n, (edm, precision) in t["fields"].items()}
                types[q] = EntityType(q, t["name"], tuple(t["key"]), fields, t["navigation"], t["standard_name"],
                                      t.get("facets") or {})
            return cls(data["version"], types, enums, data["sets"], list(data.get("warnings") or []))
        except (KeyError, TypeError, ValueError, AttributeError):  # a damaged entry: read the server's again
            return None

    def describe(self, resource: str) -> dict[str, Any]:
        """What `mls-sync metadata` prints: types, sets, enums with their meanings, oddities."""
        res = self.resource(resource)  # MetadataError (exit 2) when the document has no such resource
        note = self.resolution_note(res)
        out: dict[str, Any] = {"protocol": "reso", "odata_version": self.version,
                               "warnings": [*self.warnings, *([note] if note else [])]}
        out["resource"] = {"name": resource, "entity_set": res.path, "entity_type": res.type.qualified,
                           "key": list(res.type.key),
                           "key_types": {k: res.type.fields.get(k, FieldType("")).edm or "unknown"
                                         for k in res.type.key}}
        out["entity_types"] = [{
            "name": t.name, "namespace": q.rpartition(".")[0], "key": list(t.key), "standard_name": t.standard_name,
            "properties": [{"name": n, "type": f.edm or "unknown", **t.facets.get(n, {}),
                            **({"precision": f.precision} if f.precision is not None else {})}
                           for n, f in t.fields.items()],
            "navigation": [{"name": n, "type": ty} for n, ty in t.navigation.items()],
        } for q, t in self.types.items()]
        out["entity_sets"] = [{"name": s, "type": q} for s, q in self.sets.items()]
        out["enums"] = {q: {m.name: m.meaning for m in e.members} for q, e in self.enums.items()}
        return out


# ---- parsing ------------------------------------------------------------------------------------
def _local(el: etree._Element) -> str:
    tag = el.tag
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _ns(el: etree._Element) -> str | None:
    tag = el.tag
    return etree.QName(tag).namespace if isinstance(tag, str) else None


def _shown(el: etree._Element) -> str:
    """An element's name as the document spells it (`edmx:DataService`)."""
    return f"{el.prefix}:{_local(el)}" if el.prefix else _local(el)


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if _local(c) == name]


def _annotation(el: etree._Element, terms: tuple[str, ...]) -> str | None:
    """An inline annotation's string value: `String="..."` or a `<String>` child."""
    for a in _children(el, "Annotation"):
        term = a.get("Term") or ""
        if term in terms or term.rpartition(".")[2] == terms[-1]:  # any vocabulary's StandardName
            value = a.get("String")
            if value is None:
                strings = _children(a, "String")
                value = strings[0].text if strings else None
            if value is not None:
                return value.strip()
    return None


def _member_meaning(name: str, annotated: str | None) -> tuple[str, bool]:
    """(meaning, decoded?) of an enum member: its annotation, else `b__<hex>` decoded, else its name."""
    if annotated:
        return annotated, False
    m = _HEX_MEMBER.match(name)
    if m:
        try:
            return binascii.unhexlify(m.group(1)).decode("utf-8"), True
        except (UnicodeDecodeError, binascii.Error):
            return name, False
    return name, False


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _read_xml(xml: bytes, warnings: list[str]) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    try:
        return etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        first = exc
    recovering = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, recover=True)
    root = None
    with contextlib.suppress(etree.XMLSyntaxError):
        root = etree.fromstring(xml, recovering)
    head = xml[:120].decode("utf-8", "replace").strip().replace("\n", " ")
    if root is None:
        raise MetadataError(f"$metadata is not XML ({first}); it begins {head!r}") from None
    warnings.append(f"not well-formed XML ({first}); read what the parser could recover")
    return root


def parse_csdl(xml: bytes) -> ServiceModel:
    """Read a CSDL document as tolerantly as it can be read; see the module docstring.

    The parser resolves no entities and fetches nothing: the document comes from outside.
    """
    warnings: list[str] = []
    root = _read_xml(xml, warnings)
    root_name = _local(root)
    if root_name != "Edmx":
        warnings.append(f"root element is <{root_name}>, not <edmx:Edmx>")
    version = (root.get("Version") or "").strip()
    if version not in ("4.0", "4.01"):
        warnings.append(f"Edmx Version is {version or 'missing'!r}; taken as OData 4.0")
        version = "4.0"
    schemas = [el for el in root.iter() if _local(el) == "Schema"]
    if schemas and not any(_local(s.getparent()) == "DataServices" for s in schemas if s.getparent() is not None):
        parents = sorted({_shown(s.getparent()) for s in schemas if s.getparent() is not None})
        warnings.append(f"Schema elements are not inside edmx:DataServices (found {', '.join(parents)})")
    odd_ns = sorted({str(_ns(el)) for s in schemas for el in [s, *s] if isinstance(el.tag, str) and _ns(el) != EDM_NS})
    if odd_ns:
        warnings.append("EDM elements in " + ", ".join("no XML namespace" if n == "None" else f"namespace {n}"
                                                       for n in odd_ns) + f" (expected {EDM_NS})")

    aliases: dict[str, str] = {}
    for s in schemas:
        ns = s.get("Namespace") or ""
        if not ns:
            warnings.append("a Schema has no Namespace; its types are referenced by bare name")
        if s.get("Alias"):
            aliases[s.get("Alias") or ""] = ns

    def qualify(ns: str, name: str) -> str:
        return f"{ns}.{name}" if ns else name

    def resolve(ref: str | None) -> str:
        ref = (ref or "").strip()
        if ref.startswith("Collection(") and ref.endswith(")"):
            return f"Collection({resolve(ref[11:-1])})"
        head, _, tail = ref.rpartition(".")
        return f"{aliases[head]}.{tail}" if head in aliases else ref

    enums: dict[str, Enum] = {}
    definitions: dict[str, str] = {}  # TypeDefinition -> underlying type
    complex_types: set[str] = set()
    raw_types: list[tuple[str, str, etree._Element]] = []
    for s in schemas:
        ns = s.get("Namespace") or ""
        for el in s:
            kind, name = _local(el), el.get("Name") or ""
            if kind == "EnumType":
                members = []
                decoded = 0
                for m in _children(el, "Member"):
                    meaning, was_hex = _member_meaning(m.get("Name") or "", _annotation(m, STANDARD_NAME_TERMS))
                    decoded += was_hex
                    members.append(EnumMember(m.get("Name") or "", meaning, _annotation(m, LEGACY_VALUE_TERMS)))
                if decoded:
                    warnings.append(f"enum {qualify(ns, name)}: {decoded} member(s) named b__<hex> without a "
                                    "StandardName annotation; read their meaning from the hex")
                enums[qualify(ns, name)] = Enum(qualify(ns, name), tuple(members),
                                                (el.get("IsFlags") or "").lower() == "true")
            elif kind == "TypeDefinition":
                definitions[qualify(ns, name)] = resolve(el.get("UnderlyingType"))
            elif kind == "ComplexType":
                complex_types.add(qualify(ns, name))
            elif kind == "EntityType":
                raw_types.append((ns, name, el))

    undefined: dict[str, list[str]] = {}

    def field_type(owner: str, prop: etree._Element) -> FieldType:
        ref = resolve(prop.get("Type"))
        inner = ref[11:-1] if ref.startswith("Collection(") else ref
        inner = definitions.get(inner, inner)
        edm = f"Collection({inner})" if ref.startswith("Collection(") else inner
        if inner in enums:
            return FieldType(edm, None, enums[inner] if edm == inner else None)
        if inner not in PRIMITIVES and inner not in complex_types:
            undefined.setdefault(inner or "(no Type)", []).append(f"{owner}.{prop.get('Name')}")
            return FieldType("")
        return FieldType(edm, _int(prop.get("Precision")) if inner == "Edm.DateTimeOffset" else None)

    types: dict[str, EntityType] = {}
    bases: dict[str, str] = {}
    for ns, name, el in raw_types:
        q = qualify(ns, name)
        fields, facets = {}, {}
        for p in _children(el, "Property"):
            pname = p.get("Name") or ""
            fields[pname] = field_type(name, p)
            facets[pname] = {"nullable": (p.get("Nullable") or "true").lower() != "false",
                             "max_length": _int(p.get("MaxLength"))}
        key = tuple(r.get("Name") or "" for k in _children(el, "Key") for r in _children(k, "PropertyRef"))
        navigation = {n.get("Name") or "": resolve(n.get("Type")) for n in _children(el, "NavigationProperty")}
        if el.get("BaseType"):
            bases[q] = resolve(el.get("BaseType"))
        types[q] = EntityType(q, name, key, fields, navigation, _annotation(el, STANDARD_NAME_TERMS), facets)
    for q, base in bases.items():  # inherited properties and key (one level is what vendors use)
        parent = types.get(base)
        if parent is None:
            warnings.append(f"entity type {q} derives from {base}, which the document never defines")
            continue
        t = types[q]
        types[q] = EntityType(q, t.name, t.key or parent.key, {**parent.fields, **t.fields},
                              {**parent.navigation, **t.navigation}, t.standard_name, {**parent.facets, **t.facets})
    for ref, where in sorted(undefined.items()):
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        warnings.append(f"type {ref} is used by {shown} but never defined; those fields' literals "
                        "are typed from their values (reso.field_types can say what they are)")
    sets: dict[str, str] = {}
    for el in root.iter():
        if _local(el) == "EntitySet":
            target = resolve(el.get("EntityType"))
            sets[el.get("Name") or ""] = target
            if target not in types:
                warnings.append(f"entity set {el.get('Name')} is of type {target}, which the document never defines")
    for t in types.values():
        missing = [k for k in t.key if k not in t.fields]
        if missing:
            warnings.append(f"entity type {t.name}: key field(s) {', '.join(missing)} not declared as properties")
        if not t.key and t.qualified in sets.values():  # a base type may leave the key to its heirs
            warnings.append(f"entity type {t.name} declares no key")

    if not types:
        found = sorted({_local(el) for el in root.iter() if _local(el)})[:12]
        raise MetadataError(f"$metadata declares no entity types (root <{root_name}>, elements found: "
                            f"{', '.join(found) or 'none'})")
    model = ServiceModel(version, types, enums, sets, warnings)
    for w in warnings:
        log.warning("$metadata: %s", w)
    return model
