"""DMQL2 -> parameterised SQLite WHERE clause.

Supported: `(F=v)`, `(F=v1,v2)` (OR list), ranges `a-b` / `a+` / `a-`, `*` wildcards,
lookups `|A,B` (any), `+A,B` (all, LookupMulti), `~A,B` (none), `(F=.EMPTY.)` (no value, any
field type), clause joins `,` / `AND`, `|` / `OR`, `~` / `NOT`, parentheses, dates/datetimes in
the server's local time, NOW/TODAY. A range leaves out records whose value is empty, as SQL does.
Values always travel as SQL parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from .fields import Field


class DMQLError(ValueError):
    """Carries the RETS reply code: 20203 unknown field / bad value, 20206 syntax."""

    def __init__(self, message: str, code: int = 20206) -> None:
        super().__init__(message)
        self.code = code


DATE = r"\d{4}-\d{2}-\d{2}"
DATETIME = DATE + r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:\d{2})?"
NUMBER = r"-?\d+(?:\.\d+)?"


def _range(token: str, atom: str) -> tuple[str | None, str | None] | None:
    """`a-b`, `a+`, `a-` -> (low, high) strings, or None when `token` is a plain value."""
    m = re.fullmatch(f"({atom})-({atom})", token)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(f"({atom})([+-])", token)
    if m:
        return (m.group(1), None) if m.group(2) == "+" else (None, m.group(1))
    return None


class Translator:
    """Translates one DMQL2 query for fields resolved by `resolve` (system or standard names)."""

    def __init__(self, resolve: Callable[[str], Field | None], tz: timezone, now: datetime | None = None
                 ) -> None:
        self.resolve = resolve
        self.tz = tz
        self.now = now or datetime.now(UTC)

    def translate(self, query: str) -> tuple[str, list[Any]]:
        self.text = query.strip()
        self.pos = 0
        self.params: list[Any] = []
        if not self.text:
            raise DMQLError("Empty query")
        sql = self._or()
        self._space()
        if self.pos != len(self.text):
            raise DMQLError(f"Unexpected text at position {self.pos}: {self.text[self.pos:self.pos + 20]!r}")
        return sql, self.params

    # --- recursive descent over clauses -------------------------------------------------------
    def _space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _word(self, *words: str) -> bool:
        self._space()
        for w in words:
            if len(w) == 1 and self.text.startswith(w, self.pos):
                self.pos += 1
                return True
            if len(w) > 1 and re.match(rf"{w}\b", self.text[self.pos:], re.IGNORECASE):
                self.pos += len(w)
                return True
        return False

    def _or(self) -> str:
        parts = [self._and()]
        while self._word("|", "OR"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def _and(self) -> str:
        parts = [self._not()]
        while self._word(",", "AND"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def _not(self) -> str:
        if self._word("~", "NOT"):
            return f"NOT ({self._not()})"
        return self._primary()

    def _primary(self) -> str:
        self._space()
        if not self.text.startswith("(", self.pos):
            raise DMQLError(f"Expected '(' at position {self.pos}")
        m = re.compile(r"\(\s*([A-Za-z_][\w.]*)\s*=").match(self.text, self.pos)
        if m:
            end = self._close(m.end())
            self.pos = end + 1
            return self._clause(m.group(1), self.text[m.end():end].strip())
        self.pos += 1
        inner = self._or()
        if not self._word(")"):
            raise DMQLError(f"Missing ')' at position {self.pos}")
        return inner

    def _close(self, start: int) -> int:
        quoted = False
        for i in range(start, len(self.text)):
            ch = self.text[i]
            if ch == '"':
                quoted = not quoted
            elif ch == ")" and not quoted:
                return i
        raise DMQLError("Unterminated field clause")

    # --- one (Field=value) clause --------------------------------------------------------------
    def _clause(self, name: str, value: str) -> str:
        field = self.resolve(name)
        if field is None:
            raise DMQLError(f"Unknown query field {name}", 20203)
        if not value:
            raise DMQLError(f"Empty value for {name}")
        col = f'"{field.reso}"'
        if value.upper() == ".EMPTY.":
            return f"({col} IS NULL OR {col} = '')"
        if field.lookup:
            return self._lookup(field, col, value)
        alternatives = [v.strip().strip('"') for v in value.split(",")]
        sql = [self._value(field, col, v) for v in alternatives]
        return sql[0] if len(sql) == 1 else "(" + " OR ".join(sql) + ")"

    def _lookup(self, field: Field, col: str, value: str) -> str:
        op = value[0] if value[0] in "|+~" else "|"
        codes = [c.strip() for c in value.lstrip("|+~").split(",") if c.strip()]
        if not codes:
            raise DMQLError(f"No lookup values for {field.system}")
        if not field.multi:
            self.params.extend(codes)
            marks = ", ".join("?" * len(codes))
            return f"{col} {'NOT IN' if op == '~' else 'IN'} ({marks})"
        tests = []
        for code in codes:
            self.params.append(code)
            tests.append(f"(',' || {col} || ',') LIKE '%,' || ? || ',%'")
        joined = f" {'AND' if op == '+' else 'OR'} ".join(tests)
        return f"NOT ({joined})" if op == "~" else f"({joined})"

    def _value(self, field: Field, col: str, value: str) -> str:
        kind = field.data_type
        if kind in ("Int", "Decimal"):
            return self._compare(col, value, NUMBER, float, field)
        if kind == "DateTime":
            return self._compare(col, value, DATETIME + "|NOW|TODAY", self._datetime_ms, field)
        if kind == "Date":
            return self._compare(col, value, DATE + "|TODAY", self._date, field)
        if kind == "Boolean":
            self.params.append(1 if value in ("1", "Y", "true", "TRUE") else 0)
            return f"{col} = ?"
        if "*" in value or "?" in value:
            self.params.append(value.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_"))
            return f"{col} LIKE ? ESCAPE '\\'"
        self.params.append(value)
        return f"{col} = ?"

    def _compare(self, col: str, value: str, atom: str, convert: Callable[[str], Any], field: Field) -> str:
        try:
            bounds = _range(value, atom)
            if bounds is None:
                if not re.fullmatch(atom, value):
                    raise ValueError(value)
                self.params.append(convert(value))
                return f"{col} = ?"
            low, high = bounds
            parts = []
            if low is not None:
                self.params.append(convert(low))
                parts.append(f"{col} >= ?")
            if high is not None:
                self.params.append(convert(high))
                parts.append(f"{col} <= ?")
            return "(" + " AND ".join(parts) + ")"
        except ValueError as exc:
            raise DMQLError(f"Invalid value {value!r} for {field.system} ({field.data_type})", 20203) from exc

    def _datetime_ms(self, value: str) -> int:
        if value == "NOW":
            moment = self.now
        elif value == "TODAY":
            moment = self.now.astimezone(self.tz).replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:  # RETS: server local time without a zone
                moment = moment.replace(tzinfo=self.tz)
        return int(moment.timestamp() * 1000)

    def _date(self, value: str) -> str:
        if value == "TODAY":
            return (self.now.astimezone(self.tz)).strftime("%Y-%m-%d")
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")


def fixed_zone(offset: str) -> timezone:
    """'-05:00' -> a fixed-offset tzinfo (RETS SYSTEM TimeZoneOffset has no DST)."""
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = offset.lstrip("+-").split(":")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
