"""MLS record -> `properties` row, driven by the provider YAML's field map and normalizers.

A record whose required fields are missing or unreadable is rejected with a reason (and lands in
mls_sync_errors with its payload); an optional field that cannot be read is stored as NULL and
reported as a warning on the record, so nothing is dropped silently and one bad price never
costs a whole listing.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from mls_sync.columns import ACTIVE_STATUSES, STANDARD_STATUSES
from mls_sync.config import FieldTarget, ProviderConfig, RosterField

_TAG = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"(?i)<\s*br\s*/?>|</p\s*>")
_SPACE = re.compile(r"[ \t\r\f\v]+")
_MONEY_JUNK = re.compile(r"[$,\s]")
_TRUE = {"1", "y", "yes", "true", "t"}
_FALSE = {"0", "n", "no", "false", "f"}
_STATUS_BY_LOWER = {s.lower(): s for s in STANDARD_STATUSES}


class ValueProblem(ValueError):
    """One field's value could not be normalized."""


def parse_time_zone(value: str | None) -> tzinfo | None:
    """'-05:00', '+0530', 'UTC' or an IANA name ('America/Chicago') -> tzinfo."""
    if not value:
        return None
    value = value.strip()
    m = re.fullmatch(r"([+-])(\d{1,2}):?(\d{2})?", value)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0)))
    if value.upper() in ("Z", "UTC", "GMT"):
        return UTC
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an offset like -05:00 or an IANA name") from None


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def n_string(v: Any, t: FieldTarget, ctx: Mapper) -> str | None:
    return _text(v)


_MAX_PRICE, _CENT, _MAX_DECIMAL = Decimal("1e12"), Decimal("0.01"), Decimal("1e8")


def n_money(v: Any, t: FieldTarget, ctx: Mapper) -> Decimal | None:
    s = _text(v)
    if s is None:
        return None
    try:
        d = Decimal(_MONEY_JUNK.sub("", s))
    except InvalidOperation:
        raise ValueProblem(f"{s!r} is not a money amount") from None
    if not d.is_finite() or d < 0 or d >= _MAX_PRICE:
        raise ValueProblem(f"{s!r} is out of range for a price")
    return d.quantize(_CENT)


def n_decimal(v: Any, t: FieldTarget, ctx: Mapper) -> Decimal | None:
    # not memoized where values are unique (coordinates): the constant and the checks are lean
    s = (v.strip() or None) if v.__class__ is str else _text(v)
    if s is None:
        return None
    try:
        d = Decimal(s.replace(",", "") if "," in s else s)
    except InvalidOperation:
        raise ValueProblem(f"{s!r} is not a number") from None
    if not d.is_finite() or abs(d) >= _MAX_DECIMAL:
        raise ValueProblem(f"{s!r} is out of range")
    return d


def n_int(v: Any, t: FieldTarget, ctx: Mapper) -> int | None:
    d = n_decimal(v, t, ctx)
    if d is None:
        return None
    if d != d.to_integral_value():
        raise ValueProblem(f"{v!r} is not a whole number")
    i = int(d)
    if abs(i) > 2_147_483_647:
        raise ValueProblem(f"{v!r} is out of range for an integer")
    return i


def n_timestamp(v: Any, t: FieldTarget, ctx: Mapper) -> datetime | None:
    s = _text(v)
    if s is None:
        return None
    try:
        dt = datetime.fromisoformat(s)  # 3.11+: 'Z', a space separator and 7-digit fractions too
    except ValueError:
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            raise ValueProblem(f"{s!r} is not an ISO 8601 timestamp") from None
    try:
        if dt.tzinfo is None:
            # RETS sends server-local time without a zone; the YAML or SYSTEM TimeZoneOffset says
            # which. A fixed offset is a subtraction (a quarter of replace() + astimezone()).
            shift = ctx.utc_shift
            if shift is not None:
                dt -= shift
                return datetime.combine(dt, dt.time(), UTC)
            dt = dt.replace(tzinfo=ctx.time_zone)
        elif dt.tzinfo is UTC:  # fromisoformat gives 'Z' and '+00:00' the UTC singleton
            return dt
        return dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it
        raise ValueProblem(f"{s!r} is out of range once converted to UTC") from None


def n_date(v: Any, t: FieldTarget, ctx: Mapper) -> date | None:
    s = _text(v)
    if s is None:
        return None
    try:
        return date.fromisoformat(s[:10])
    except ValueError:
        raise ValueProblem(f"{s!r} is not a date (YYYY-MM-DD)") from None


def n_bool(v: Any, t: FieldTarget, ctx: Mapper) -> bool | None:
    if isinstance(v, bool) or v is None:
        return v
    s = str(v).strip().lower()
    if not s:
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueProblem(f"{v!r} is not a yes/no value")


def n_lookup(v: Any, t: FieldTarget, ctx: Mapper) -> str | None:
    s = _text(v)
    if s is None or not t.lookup:
        return s
    return t.lookup.get(s, s)


def n_list(v: Any, t: FieldTarget, ctx: Mapper) -> list[str] | None:
    if v is None:
        return None
    items = v if isinstance(v, list) else str(v).split(t.separator)
    out = [str(x).strip() for x in items if str(x).strip()]
    if t.lookup:
        out = [t.lookup.get(x, x) for x in out]
    return out or None


def n_html(v: Any, t: FieldTarget, ctx: Mapper) -> str | None:
    s = _text(v)
    if s is None:
        return None
    if "<" in s:
        s = _TAG.sub(" ", _BREAK.sub("\n", s))
    if "&" in s:
        s = html.unescape(s)
    # _SPACE never spans a newline, so one pass over the text equals one per line. Scanning with
    # it costs more than the rest of this function (5 us for a 130-character remark), and most
    # remarks need at most runs of plain spaces collapsed (a removed tag leaves two): str.replace
    # does that a tenth as dear. Substring checks are memchr-fast.
    if "\t" in s or "\r" in s or "\f" in s or "\v" in s:
        s = _SPACE.sub(" ", s)
    else:
        while "  " in s:
            s = s.replace("  ", " ")
    lines = s.splitlines()
    return "\n".join(stripped for line in lines if (stripped := line.strip())) or None


def n_status(v: Any, t: FieldTarget, ctx: Mapper) -> str | None:
    s = _text(v)
    if s is None:
        return None
    if s in ctx.status_map:
        return ctx.status_map[s]
    std = _STATUS_BY_LOWER.get(s.replace(" ", "").lower())
    if std:
        return std
    raise ValueProblem(f"status {s!r} is neither a StandardStatus nor in the YAML's status_map")


NORMALIZERS: dict[str, Callable[[Any, FieldTarget, Mapper], Any]] = {
    "string": n_string, "money": n_money, "int": n_int, "decimal": n_decimal, "date": n_date,
    "timestamp": n_timestamp, "bool": n_bool, "lookup": n_lookup, "list": n_list, "html": n_html,
    "status": n_status,
}


@dataclass(slots=True)
class Mapped:
    """The result of mapping one record: a row, or the reason it was rejected."""

    row: dict[str, Any] | None
    row_hash: str | None = None
    rejected: str | None = None
    warnings: list[str] = field(default_factory=list)


_HASH_ENCODER = msgspec.json.Encoder(decimal_format="string", order="sorted")
_HASH_ENCODER_AS_IS = msgspec.json.Encoder(decimal_format="string")


def row_hash(row: dict[str, Any]) -> str:
    """Stable content hash of the MLS-side values; equal hash means nothing to write."""
    return hashlib.md5(_HASH_ENCODER.encode(row), usedforsecurity=False).hexdigest()


def _sorted_row_hash(row: dict[str, Any]) -> str:
    """`row_hash` of a row whose keys are already in sorted order (the mapper builds them so):
    the encoder need not sort them again."""
    return hashlib.md5(_HASH_ENCODER_AS_IS.encode(row), usedforsecurity=False).hexdigest()


_MISS = object()
# Types whose values repeat across a feed (bedrooms, baths, years, prices, statuses, feature lists):
# normalizing each distinct raw value once saves most of their cost. Free text and timestamps are
# nearly unique per listing in real feeds, so they are not memoized.
_MEMO_TYPES = frozenset({"int", "decimal", "money", "date", "bool", "lookup", "list", "status"})


def _memo_key(raw: Any) -> Any:
    """A dict key for a typed value (RESO sends numbers and arrays): the type is part of the key
    where Python would equate values (1, 1.0 and True); None for what is not memoized."""
    t = type(raw)
    if t is int:
        return raw
    if t is float:
        return (float, raw)
    if t is list and all(type(x) is str for x in raw):
        return (list, tuple(raw))
    return None


class _Memo:
    """Normalized values by raw value for one field, bounded; switches itself off when it does
    not pay (a field that turns out unique per listing, such as latitude)."""

    LIMIT = 4096

    __slots__ = ("active", "hits", "values")

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}  # by raw text, or by _memo_key of a typed value
        self.hits = 0
        self.active = True

    def remember(self, key: Any, value: Any) -> None:
        self.values[key] = value
        if len(self.values) >= self.LIMIT:
            # full: keep it while it serves more lookups than it stores, else drop it
            self.active = False
            if self.hits < len(self.values):
                self.values = {}


class Mapper:
    """Maps records of one provider; build once per task, it caches the field plan."""

    def __init__(self, provider: ProviderConfig, time_zone: tzinfo | None = None,
                 items: Sequence[tuple[str, FieldTarget | RosterField]] | None = None) -> None:
        """`items`: (MLS field, target) pairs to map instead of the listing fields (a roster resource's)."""
        self.provider = provider
        self.time_zone = parse_time_zone(provider.timestamp_time_zone) or time_zone
        # the zone's one offset from UTC, when it has only one (None for zones with DST rules)
        self.utc_shift: timedelta | None = (self.time_zone.utcoffset(None) if self.time_zone is not None
                                            else timedelta(0))
        self.status_map = dict(provider.status_map)
        # The plan, in YAML order: (field, column, normalizer or None for plain strings, target,
        # required, memo), a memo (see _Memo) for types whose values repeat across listings.
        self._steps = [(name, t.column, None if t.type == "string" else NORMALIZERS[t.type], t, t.required,
                        _Memo() if t.type in _MEMO_TYPES else None)
                       for name, t in (provider.field_items() if items is None else items)]
        # What map() walks: plain string fields, most of a feed's, in a short loop of their own (a
        # text value only needs stripping, and n_string never fails); the typed ones in the general
        # loop, which drops a memo that does not pay (`_drop_memo`).
        self._plain = [(name, column) for name, column, fn, _, _, _ in self._steps if fn is None]
        self._required_plain = [(name, column) for name, column, fn, _, required, _ in self._steps
                                if fn is None and required]
        self._typed = [step for step in self._steps if step[2] is not None]
        # Rows start as a copy of this template, every column of the plan in sorted order, so
        # the row hash (of sorted keys) is taken without sorting; `status` is derived from
        # `mls_status` through the YAML's status_map when no field maps it.
        columns = {column for _, column, *_ in self._steps}
        self._derive_status = "status" not in columns and "mls_status" in columns
        self._template = dict.fromkeys(sorted(columns | ({"status"} if self._derive_status else set())))

    def map(self, record: dict[str, Any]) -> Mapped:
        """One record's row, or why it was rejected. A record missing several required fields is
        rejected for a missing plain-text one before one whose value cannot be read."""
        row = self._template.copy()
        warnings: list[str] = []
        get = record.get
        for name, column in self._plain:
            raw = get(name)
            row[column] = (raw.strip() or None) if raw.__class__ is str else _text(raw)
        for name, column in self._required_plain:
            if row[column] is None:
                return Mapped(None, rejected=f"required field {name} ({column}) is missing or empty")
        for name, column, fn, target, required, memo in self._typed:
            raw = get(name)
            if raw is None or raw == "":  # every normalizer maps these to NULL
                value = None
            elif memo is not None and (key := raw if type(raw) is str else _memo_key(raw)) is not None \
                    and (value := memo.values.get(key, _MISS)) is not _MISS:
                memo.hits += 1
                if type(value) is list:  # rows are the caller's to change: never share a list
                    value = list(value)
            else:
                try:
                    value = fn(raw, target, self)
                except ValueProblem as exc:
                    if required:
                        return Mapped(None, rejected=f"required field {name} ({column}): {exc}")
                    warnings.append(f"field {name} ({column}): {exc}; stored as NULL")
                    value = None
                else:
                    if memo is not None and memo.active and key is not None:
                        memo.remember(key, list(value) if type(value) is list else value)
                        if not memo.active and not memo.values:
                            self._drop_memo(memo)
            if value is None and required:
                return Mapped(None, rejected=f"required field {name} ({column}) is missing or empty")
            row[column] = value
        if self._derive_status:
            row["status"] = self.status_map.get(row["mls_status"] or "")
        return Mapped(row, _sorted_row_hash(row), warnings=warnings)

    def _drop_memo(self, memo: _Memo) -> None:
        """A memo that did not pay is taken out of the plan: its field is then mapped as if it
        had none, without building a key and missing a lookup for every record."""
        self._typed = [(*step[:5], None) if step[5] is memo else step for step in self._typed]

    def map_columns(self, record: dict[str, Any], columns: set[str]) -> dict[str, Any]:
        """Best-effort values for a few columns (the status poll's narrow records); bad values -> None."""
        out: dict[str, Any] = {}
        for name, column, fn, target, _, _ in self._steps:
            if column in columns and name in record:
                try:
                    out[column] = (fn or n_string)(record[name], target, self)
                except ValueProblem:
                    out[column] = None
        if "status" not in out and out.get("mls_status"):
            out["status"] = self.status_map.get(out["mls_status"])
        return out

    def column_reader(self, column: str) -> Callable[[dict[str, Any]], Any]:
        """One column's value from a record, as map_columns gives it (bad value -> None), without
        walking every field's step per record: the key walk reads only the modification time."""
        step = next((st for st in self._steps if st[1] == column), None)
        if step is None:
            return lambda record: None
        name, convert, target = step[0], step[2] or n_string, step[3]

        def read(record: dict[str, Any]) -> Any:
            value = record.get(name)
            if value is None:
                return None
            try:
                return convert(value, target, self)
            except ValueProblem:
                return None

        return read

    @staticmethod
    def is_active(row: dict[str, Any]) -> bool:
        return row.get("status") in ACTIVE_STATUSES
