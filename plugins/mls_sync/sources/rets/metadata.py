"""GetMetadata replies (COMPACT or STANDARD-XML) -> plain dicts, and lookup decoding.

Metadata tells us the server's time zone (SYSTEM TimeZoneOffset), which fields are lookups and
what their codes mean. With it, a COMPACT search can be decoded to long values so records look
the same whichever format the provider's YAML asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mls_sync.sources.rets.compact import Reply, Row, parse_bytes

# STANDARD-XML item element names per metadata type (LOOKUP_TYPE items are <Lookup> on some
# servers and <LookupType> on others; both are accepted since we take any child element).
TABLE_KEYS = ("SystemName", "StandardName", "LongName", "ShortName", "DataType", "Interpretation",
              "LookupName", "MaximumLength", "Precision", "Searchable", "Units")


def parse_metadata(data: bytes, charset: str | None = None) -> tuple[Reply, dict[str, list[dict[str, Any]]]]:
    """Every item of a GetMetadata reply, grouped by metadata type (`TABLE`, `LOOKUP_TYPE` ...).

    Each item carries its container's attributes prefixed with `@` (e.g. `@Resource`,
    `@Class`, `@Lookup`) so lookups from several containers stay apart.
    """
    reply, rows = parse_bytes(data, charset, keep_elements=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(_kind(row), []).append(_item(row))
    for _tag, item in reply.elements:
        out.setdefault("SYSTEM", []).append(item)
    return reply, out


def _kind(row: Row) -> str:
    return row.container.removeprefix("METADATA-")


def _item(row: Row) -> dict[str, Any]:
    item: dict[str, Any] = {f"@{k}": v for k, v in row.attrs.items()}
    item.update({k: v for k, v in row.values.items() if k})
    return item


@dataclass
class Lookups:
    """code -> long value per lookup name, plus which fields use which lookup."""

    values: dict[str, dict[str, str]] = field(default_factory=dict)
    field_lookup: dict[str, tuple[str, bool]] = field(default_factory=dict)  # field -> (lookup, multi)

    def add_table(self, table: list[dict[str, Any]]) -> None:
        for f in table:
            name, lookup = f.get("SystemName"), f.get("LookupName")
            if name and lookup:
                multi = (f.get("Interpretation") or "").lower() == "lookupmulti"
                self.field_lookup[name] = (lookup, multi)

    def add_lookup_types(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            name = item.get("@Lookup")
            value = item.get("Value")
            if name and value is not None:
                self.values.setdefault(name, {})[value] = item.get("LongValue") or item.get("ShortValue") or value

    def decode(self, record: dict[str, str]) -> dict[str, str]:
        """Replace lookup codes by long values in place (COMPACT -> what COMPACT-DECODED shows)."""
        for name, raw in record.items():
            spec = self.field_lookup.get(name)
            if not spec or not raw:
                continue
            table = self.values.get(spec[0], {})
            if spec[1]:
                record[name] = ",".join(table.get(c.strip(), c.strip()) for c in raw.split(",") if c.strip())
            else:
                record[name] = table.get(raw, raw)
        return record

    def encode(self, field_name: str, value: str) -> str:
        """A long or short value -> its code for a query (codes pass through unchanged)."""
        spec = self.field_lookup.get(field_name)
        if not spec:
            return value
        table = self.values.get(spec[0], {})
        if value in table:
            return value
        for code, long_value in table.items():
            if long_value == value:
                return code
        return value


def table_summary(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields of METADATA-TABLE a mapping author needs, in a stable shape."""
    return [{k: f.get(k, "") for k in TABLE_KEYS} for f in table if f.get("SystemName")]


def time_zone_offset(system: list[dict[str, Any]]) -> str | None:
    """SYSTEM TimeZoneOffset (an attribute in 1.7.2 COMPACT, an element in STANDARD-XML)."""
    for item in system:
        value = item.get("TimeZoneOffset")
        if value:
            return str(value).strip()
    return None
