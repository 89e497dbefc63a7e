"""OData v4 query text: typed literals, `$filter` clauses, the keyset condition and paging cursors.

Everything that turns a value into query text lives here, so one place decides escaping and
typing. Values can come from a DAG run's conf (listing keys, postal codes, cities) or from a
checkpointed cursor; none of them may change the meaning of the query, so strings are quoted with
single quotes doubled, numbers, dates and timestamps are re-validated against their grammar,
field names against the identifier grammar, and control characters are refused outright.

A literal's form follows the field's type in the server's `$metadata` (`Dialect`): an
`Edm.Int64` key is written bare (`ListingKeyNumeric gt 12415`; a type-checking server answers
400 to `'12415'`), a string quoted, a DateTimeOffset unquoted at the precision the server
declares, an enum member as `Namespace.Type'Member'` with the member the server declares for it.
Value lists are OData 4.01 `in (...)`, or `or` chains cut to a bounded length for 4.0 servers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from mls_sync.sources.base import QueryError, SearchCriteria, SourceFields
from mls_sync.sources.reso.metadata import Enum, EnumMember, FieldType

log = logging.getLogger(__name__)

# Properties, possibly qualified by a navigation path (Media/Order): letters, digits, underscore.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}(/[A-Za-z_][A-Za-z0-9_]{0,127})*$")
# OData DateTimeOffset literal as servers send it (seconds and fraction optional, zone required).
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,12})?)?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INTEGER = re.compile(r"^[+-]?\d{1,19}$")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")

INTEGER_TYPES = frozenset({"Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64"})
DECIMAL_TYPES = frozenset({"Edm.Decimal", "Edm.Double", "Edm.Single"})
# what reso.field_types in the provider YAML may say a field is
LITERAL_TYPES = ("Edm.String", "Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.SByte",
                 "Edm.Decimal", "Edm.Double", "Edm.Single", "Edm.Boolean", "Edm.Date",
                 "Edm.DateTimeOffset", "Edm.Guid")

# Listing keys per `in (...)` clause: ~100 keys keeps a URL near 3 KB, well under proxy limits.
KEY_CHUNK = 100
# An `or` chain's $filter text at most this long (before URL encoding), so a 4.0 server's URL stays
# under the 4-8 KB that proxies and servers accept; longer lists take several requests.
OR_CHAIN_CHARS = 1800
CURSOR_VERSION = 1


def ident(name: str) -> str:
    """A property name, checked so it cannot carry operators or quotes into the query."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise QueryError(f"not a valid OData property name: {name!r}")
    return name


def string(value: object) -> str:
    """A single-quoted OData string literal (quotes doubled; control characters refused)."""
    text = str(value)
    if _CONTROL.search(text):
        raise QueryError(f"control character in a query value: {text!r}")
    return "'" + text.replace("'", "''") + "'"


def timestamp(value: datetime | str, precision: int | None = 6, *, up: bool = False) -> str:
    """A DateTimeOffset literal: aware datetimes in UTC, or a server-sent literal re-validated.

    Server literals are kept verbatim (not re-formatted) so a keyset `eq` matches the stored
    value to its last digit even when the server keeps more precision than Python (7 digits).
    Naive datetimes are taken as UTC, which is what SearchCriteria promises. Our own datetimes
    are cut to `precision` fractional digits (the server's declared Precision; none declared
    means whole seconds, as CSDL says): down for a lower bound, `up` for an upper one, so the
    cut only ever widens the range.
    """
    if isinstance(value, datetime):
        dt = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        digits = min(6, max(0, precision or 0))
        unit = 10 ** (6 - digits)
        cut = dt.replace(microsecond=dt.microsecond - dt.microsecond % unit)
        if up and cut != dt:
            cut += timedelta(microseconds=unit)
        text = cut.strftime("%Y-%m-%dT%H:%M:%S")
        if cut.microsecond:
            text += f".{cut.microsecond:06d}"[:digits + 1].rstrip("0")
        return text + "Z"
    if isinstance(value, str) and _DATETIME.match(value):
        return value
    raise QueryError(f"not a DateTimeOffset value: {value!r}")


def parse_timestamp(value: object) -> datetime | None:
    """Server DateTimeOffset text -> aware datetime (fraction cut to microseconds); None if absent."""
    if not isinstance(value, str) or not _DATETIME.match(value):
        return None
    text = value.replace("Z", "+00:00")
    head, _, rest = text.partition(".")
    if rest:  # Python takes at most 6 fraction digits
        digits = re.match(r"\d+", rest)
        frac = digits.group(0) if digits else ""
        text = f"{head}.{frac[:6].ljust(6, '0')}{rest[len(frac):]}"
    return datetime.fromisoformat(text).astimezone(UTC)


def canonical(text: str) -> str:
    """`Active Under Contract`, `Active_Under_Contract`, `ActiveUnderContract` -> one spelling."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def enum_member(enum: Enum, value: object) -> EnumMember | None:
    """The member a value means: by name, else by what it stands for (annotation, decoded name)."""
    text = str(value)
    for m in enum.members:
        if m.name == text:
            return m
    want = canonical(text)
    for m in enum.members:
        if want and want in (canonical(m.meaning), canonical(m.legacy or ""), canonical(m.name)):
            return m
    return None


class Dialect:
    """How one server wants query text for one entity type.

    Literals are typed from the server's `$metadata` (with the provider YAML's `reso.field_types`
    over it); a field the document does not type is written by its value's own type (a number bare,
    text quoted). Value lists are `in (...)` where the server takes OData 4.01, else `or` chains.
    """

    def __init__(self, fields: Mapping[str, FieldType], *, use_in: bool | Callable[[], bool] = True) -> None:
        self.fields = dict(fields)
        self._use_in = use_in  # or what decides it, asked the first time a list is written
        # enum fields whose member names differ from what they mean: name -> meaning
        self.decoders = {name: table for name, ft in self.fields.items() if ft.enum is not None
                         for table in [{m.name: m.meaning for m in ft.enum.members if m.name != m.meaning}]
                         if table}

    @property
    def use_in(self) -> bool:
        if callable(self._use_in):
            self._use_in = bool(self._use_in())
        return self._use_in

    def decode(self, records: list[dict[str, Any]]) -> None:
        """Enum values in records as what they mean (`Active_Under_Contract` -> `Active Under
        Contract`, `b__416374697665` -> `Active`), so mapping and deletion checks read one spelling."""
        for rec in records:
            for name, table in self.decoders.items():
                v = rec.get(name)
                if isinstance(v, str):
                    rec[name] = ",".join(table.get(p, p) for p in v.split(",")) if "," in v else table.get(v, v)
                elif isinstance(v, list):
                    rec[name] = [table.get(p, p) if isinstance(p, str) else p for p in v]

    def type_of(self, field: str) -> FieldType:
        return self.fields.get(field) or FieldType("")

    def literal(self, field: str, value: Any, *, up: bool = False) -> str:
        """`value` as a literal of `field`'s type; QueryError when it is not a value of that type."""
        ft = self.type_of(field)
        edm = ft.edm
        if ft.enum is not None:
            member = enum_member(ft.enum, value)
            if member is None:
                raise QueryError(f"{field} is the enum {ft.enum.qualified}, which has no member for "
                                 f"{value!r} (members: {', '.join(m.name for m in ft.enum.members)})")
            return f"{ft.enum.qualified}{string(member.name)}"
        if not edm:
            return self._untyped(value, up=up)
        if edm in INTEGER_TYPES:
            text = str(value).strip() if not isinstance(value, bool) else ""
            if isinstance(value, float) and value.is_integer():
                text = str(int(value))
            if not _INTEGER.match(text):
                raise QueryError(f"{field} is {edm}: {value!r} is not an integer")
            return str(int(text))
        if edm in DECIMAL_TYPES:
            text = repr(value) if isinstance(value, float) else str(value).strip()
            if isinstance(value, bool) or not _NUMBER.match(text):
                raise QueryError(f"{field} is {edm}: {value!r} is not a number")
            return text
        if edm == "Edm.String":
            return string(value)
        if edm == "Edm.DateTimeOffset":
            return timestamp(value, ft.precision, up=up)
        if edm == "Edm.Date":
            text = value.isoformat()[:10] if isinstance(value, date) else str(value)
            if not _DATE.match(text):
                raise QueryError(f"{field} is Edm.Date: {value!r} is not a date")
            return text
        if edm == "Edm.Boolean":
            text = str(value).lower()
            if text not in ("true", "false"):
                raise QueryError(f"{field} is Edm.Boolean: {value!r} is not true or false")
            return text
        if edm == "Edm.Guid" and _GUID.match(str(value)):
            return str(value)
        raise QueryError(f"cannot compare {field} ({edm}) with {value!r} in a $filter")

    @staticmethod
    def _untyped(value: Any, *, up: bool) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, Decimal)) or (isinstance(value, float) and value == value):
            return str(value)
        if isinstance(value, datetime) or (isinstance(value, str) and _DATETIME.match(value)):
            return timestamp(value, up=up)  # a server's own timestamp (a cursor, a cut) stays one
        return string(value)

    def compare(self, field: str, op: str, value: Any, *, up: bool = False) -> str:
        return f"{ident(field)} {op} {self.literal(field, value, up=up)}"

    def _matchable(self, field: str, values: Iterable[object]) -> list[object]:
        """Unique values; for an enum field only those it has a member for (the others can match
        nothing on this server, e.g. a StandardStatus the vendor does not use), said once."""
        vals = list(dict.fromkeys(values))
        enum = self.type_of(field).enum
        if enum is None:
            return vals
        kept = [v for v in vals if enum_member(enum, v) is not None]
        if len(kept) < len(vals):
            dropped = [v for v in vals if v not in kept]
            if not kept:
                raise QueryError(f"{field} is the enum {enum.qualified}, which has no member for any of "
                                 f"{dropped} (members: {', '.join(m.name for m in enum.members)})")
            log.warning("%s: the server's enum %s has no member for %s; left out of the filter",
                        field, enum.qualified, dropped)
        return kept

    def any_of(self, field: str, values: Iterable[object]) -> str:
        """`F in (a,b)` (OData 4.01) or `F eq a or F eq b` (4.0)."""
        vals = self._matchable(field, values)
        if not vals:
            raise QueryError(f"empty value list for {field}")
        lits = [self.literal(field, v) for v in vals]
        if self.use_in:
            return f"{ident(field)} in ({','.join(lits)})"
        return " or ".join(f"{ident(field)} eq {lit}" for lit in lits)

    def chunks(self, field: str, values: Sequence[object]) -> list[tuple[Any, ...]]:
        """Unique values in a stable order, cut into lists whose clause stays short enough for a
        URL: KEY_CHUNK values per `in`, or `or` chains of at most OR_CHAIN_CHARS characters."""
        uniq = sorted(dict.fromkeys(values), key=str)
        if self.use_in:
            return [tuple(uniq[i:i + KEY_CHUNK]) for i in range(0, len(uniq), KEY_CHUNK)]
        out: list[tuple[Any, ...]] = []
        current: list[Any] = []
        size = 0
        for v in uniq:
            part = len(ident(field)) + 8 + len(self.literal(field, v))  # "F eq L or "
            if current and size + part > OR_CHAIN_CHARS:
                out.append(tuple(current))
                current, size = [], 0
            current.append(v)
            size += part
        if current:
            out.append(tuple(current))
        return out


@dataclass(frozen=True)
class Walk:
    """One collection query, paged by keyset on `order` fields or by following nextLink."""

    path: str
    filter: str | None
    order: tuple[str, ...]  # fields in $orderby order (keyset position fields)
    dialect: Dialect
    select: str | None = None
    expand: str | None = None
    page_size: int | None = None  # None: the source's reso.page_size


def and_all(clauses: Iterable[str | None]) -> str | None:
    """AND the clauses, each in parentheses so an `or` inside one cannot leak into the others."""
    parts = [c for c in clauses if c]
    if len(parts) == 1:
        return parts[0]
    return " and ".join(f"({c})" for c in parts) or None


def criteria_filter(criteria: SearchCriteria, roles: SourceFields, dialect: Dialect,
                    keys: Sequence[Any] = ()) -> str | None:
    """The `$filter` for a SearchCriteria (without listing keys, which are passed chunked)."""
    clauses: list[str | None] = []
    if criteria.modified_since is not None:
        clauses.append(dialect.compare(roles.modified, "ge", criteria.modified_since))
    if criteria.modified_until is not None:
        clauses.append(dialect.compare(roles.modified, "lt", criteria.modified_until, up=True))
    if keys:
        clauses.append(dialect.any_of(roles.key, keys))
    for values, role, name in ((criteria.postal_codes, roles.postal_code, "postal_code"),
                               (criteria.cities, roles.city, "city"),
                               (criteria.statuses, roles.status, "status")):
        if values:
            if not role:
                raise QueryError(f"filtering by {name} needs source_fields.{name} in the provider YAML")
            clauses.append(dialect.any_of(role, values))
    if criteria.raw_query:
        if _CONTROL.search(criteria.raw_query):
            raise QueryError("control character in raw_query")
        clauses.append(criteria.raw_query)
    return and_all(clauses)


def after_filter(order: Sequence[tuple[str, str]]) -> str:
    """Rows strictly after a position in a multi-field order, given (field, literal) pairs.

    For (ModificationTimestamp, ListingKey): `M gt T or (M eq T and K gt 'K')`. Timestamp alone
    is not enough: MLSs bulk-update thousands of listings with one timestamp, more than a page,
    and `gt T` would skip the rest of such a cluster.
    """
    (name, lit), rest = order[0], order[1:]
    clause = f"{ident(name)} gt {lit}"
    if rest:
        inner = after_filter(rest) if len(rest) == 1 else f"({after_filter(rest)})"
        clause += f" or ({ident(name)} eq {lit} and {inner})"
    return clause


def select_list(fields: Iterable[str], required: Iterable[str | None]) -> str | None:
    """`$select` text with the fields paging and deletion detection need added; None = all."""
    wanted = list(fields)
    if not wanted:
        return None
    out = list(dict.fromkeys([*wanted, *(r for r in required if r)]))
    return ",".join(ident(f) for f in out)


def check_cursor(cursor: dict[str, Any] | None, mode: str) -> dict[str, Any] | None:
    """Validate a `resume_from` cursor (it round-trips through a checkpoint table)."""
    if cursor is None:
        return None
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        raise QueryError(f"not a RESO cursor (version {CURSOR_VERSION}): {cursor!r}")
    if cursor.get("mode") != mode:
        raise QueryError(f"cursor was made by {cursor.get('mode')!r} paging, provider now pages by {mode!r}")
    return cursor
