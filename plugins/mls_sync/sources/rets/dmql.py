"""DMQL2 query building from SearchCriteria, with values that cannot change a query's meaning.

Values reach us from a DAG run's conf (listing keys, postal codes, cities), so each one is
checked against DMQL syntax: a value containing `)`, `|`, `,`, `*` or friends is rejected with
a QueryError rather than escaped, because DMQL2 has no escape that every server honours.
Values with spaces or dashes are sent quoted, which 1.7.2 servers read as one literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mls_sync.sources.base import QueryError

KEYS_PER_QUERY = 100
_FORBIDDEN = re.compile(r"""[()|,=~*?"\\!+\x00-\x1f\x7f]""")
_PLAIN = re.compile(r"[A-Za-z0-9_]+")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")
TS_FORMAT = "%Y-%m-%dT%H:%M:%S"


def check_field(name: str) -> str:
    if not _FIELD.fullmatch(name or ""):
        raise QueryError(f"invalid field name {name!r} for a DMQL query")
    return name


def literal(value: str) -> str:
    """One DMQL value: plain tokens as they are, anything else quoted; syntax is refused."""
    value = str(value).strip()
    if not value:
        raise QueryError("empty value in search criteria")
    if _FORBIDDEN.search(value) or (value.startswith(".") and value.endswith(".")):
        raise QueryError(f"value {value!r} contains DMQL syntax characters; refusing to build the query")
    return value if _PLAIN.fullmatch(value) else f'"{value}"'


def clause_in(field: str, values: Iterable[str]) -> str:
    """(F=a,b,c): any of these character values."""
    return f"({check_field(field)}={','.join(literal(v) for v in values)})"


def clause_lookup(field: str, codes: Iterable[str]) -> str:
    """(F=|A,B): any of these lookup codes."""
    return f"({check_field(field)}=|{','.join(literal(c) for c in codes)})"


def clause_range(field: str, low: str | None, high: str | None) -> str:
    """(F=a-b), (F=a+), (F=b-): inclusive bounds, already formatted for the server."""
    check_field(field)
    if low and high:
        return f"({field}={low}-{high})"
    if low:
        return f"({field}={low}+)"
    if high:
        return f"({field}={high}-)"
    raise QueryError("a range needs at least one bound")


def and_all(clauses: Sequence[str]) -> str:
    return ",".join(c for c in clauses if c)


def chunks(values: Sequence[str], size: int = KEYS_PER_QUERY) -> list[tuple[str, ...]]:
    return [tuple(values[i:i + size]) for i in range(0, len(values), size)]


def parse_zone(value: str | None) -> tzinfo | None:
    """'-05:00' / '+0530' (RETS TimeZoneOffset) or an IANA name ('America/Chicago')."""
    if not value:
        return None
    value = value.strip()
    if value.upper() in ("Z", "UTC", "GMT", "+00:00", "-00:00"):
        return UTC
    m = _OFFSET.match(value)
    if m:
        delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return timezone(-delta if m.group(1) == "-" else delta)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(f"unknown time zone {value!r}; use an offset like -05:00 or an IANA name") from None


def to_server(dt: datetime, zone: tzinfo | None) -> datetime:
    """A UTC-aware instant -> the naive local time the server stores (RETS has no zone in values)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(zone or UTC).replace(tzinfo=None)


def format_ts(dt: datetime) -> str:
    """Naive server time for DMQL: seconds, plus milliseconds when they are not zero."""
    text = dt.strftime(TS_FORMAT)
    ms = dt.microsecond // 1000
    return f"{text}.{ms:03d}" if ms else text


def parse_ts(text: str) -> datetime:
    """A cursor/window timestamp string back to a naive datetime."""
    return datetime.fromisoformat(text)
