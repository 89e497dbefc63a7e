"""OData v4 query text: literals, `$filter` clauses, the keyset condition and paging cursors.

Everything that turns a value into query text lives here, so one place decides escaping. Values
can come from a DAG run's conf (listing keys, postal codes, cities) or from a checkpointed cursor;
none of them may change the meaning of the query, so strings are quoted with single quotes
doubled, timestamps are re-validated against the DateTimeOffset grammar, field names against the
identifier grammar, and control characters are refused outright.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mls_sync.sources.base import QueryError, SearchCriteria, SourceFields

# Properties, possibly qualified by a navigation path (Media/Order): letters, digits, underscore.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}(/[A-Za-z_][A-Za-z0-9_]{0,127})*$")
# OData DateTimeOffset literal as servers send it (seconds and fraction optional, zone required).
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,12})?)?(Z|[+-]\d{2}:\d{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")

# Listing keys per `in (...)` clause: ~100 keys keeps a URL near 3 KB, well under proxy limits.
KEY_CHUNK = 100
CURSOR_VERSION = 1


@dataclass(frozen=True)
class Walk:
    """One collection query, paged by keyset on `order` fields or by following nextLink."""

    path: str
    filter: str | None
    order: tuple[tuple[str, str], ...]  # (field, "ts" | "str") in $orderby order
    select: str | None = None
    expand: str | None = None


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


def timestamp(value: datetime | str) -> str:
    """A DateTimeOffset literal: aware datetimes in UTC, or a server-sent literal re-validated.

    Server literals are kept verbatim (not re-formatted) so a keyset `eq` matches the stored
    value to its last digit even when the server keeps more precision than Python (7 digits).
    Naive datetimes are taken as UTC, which is what SearchCriteria promises.
    """
    if isinstance(value, datetime):
        dt = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        text = dt.strftime("%Y-%m-%dT%H:%M:%S")
        if dt.microsecond:
            text += f".{dt.microsecond:06d}".rstrip("0")
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


def in_clause(field: str, values: Iterable[object]) -> str:
    """`Field in ('a','b')`: OData 4.01 `in`, which every current RESO server accepts."""
    vals = list(dict.fromkeys(values))
    if not vals:
        raise QueryError(f"empty value list for {field}")
    return f"{ident(field)} in ({','.join(string(v) for v in vals)})"


def and_all(clauses: Iterable[str | None]) -> str | None:
    """AND the clauses, each in parentheses so an `or` inside one cannot leak into the others."""
    parts = [c for c in clauses if c]
    if len(parts) == 1:
        return parts[0]
    return " and ".join(f"({c})" for c in parts) or None


def key_chunks(keys: Sequence[str], size: int = KEY_CHUNK) -> list[tuple[str, ...]]:
    """Unique keys in a stable order, cut into `in` lists small enough for a URL."""
    uniq = sorted(dict.fromkeys(keys))
    return [tuple(uniq[i:i + size]) for i in range(0, len(uniq), size)]


def criteria_filter(criteria: SearchCriteria, roles: SourceFields, keys: Sequence[str] = ()) -> str | None:
    """The `$filter` for a SearchCriteria (without listing keys, which are passed chunked)."""
    clauses: list[str | None] = []
    if criteria.modified_since is not None:
        clauses.append(f"{ident(roles.modified)} ge {timestamp(criteria.modified_since)}")
    if criteria.modified_until is not None:
        clauses.append(f"{ident(roles.modified)} lt {timestamp(criteria.modified_until)}")
    if keys:
        clauses.append(in_clause(roles.key, keys))
    for values, role, name in ((criteria.postal_codes, roles.postal_code, "postal_code"),
                               (criteria.cities, roles.city, "city"),
                               (criteria.statuses, roles.status, "status")):
        if values:
            if not role:
                raise QueryError(f"filtering by {name} needs source_fields.{name} in the provider YAML")
            clauses.append(in_clause(role, values))
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
