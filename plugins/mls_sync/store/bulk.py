"""Bulk writes as one JSON document per batch.

A batch of rows is encoded by msgspec (in C) into one JSON array of arrays, values in column order,
and sent as a single parameter; PostgreSQL parses it once into jsonb and reads each value by
position into its column's type, and one `INSERT .. SELECT .. ON CONFLICT` writes them. Binding
1,000 rows x 35 columns as parameters spent most of a load in the driver, and COPY's text format
needed a Python call per value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

_ENCODER = msgspec.json.Encoder(decimal_format="string")
# A text[] value travels as one JSON string, each item after this character (see `array_text`).
ARRAY_SEPARATOR = "\x1f"
# PostgreSQL's text types cannot hold NUL, so json -> text rejects "\u0000". Drop the escape unless
# its backslash is itself escaped (an even run of backslashes before it is literal text).
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def encode_json(value: Any) -> str:
    """JSON text for PostgreSQL's json/jsonb input: Decimal as text, datetimes in ISO 8601, no NULs."""
    return _without_nul(_ENCODER.encode(value)).decode()


def encode_json_texts(values: Iterable[Any], separator: str) -> str:
    """Each value's `encode_json` text, joined by `separator` (a control character, which JSON
    text never holds raw) into one string."""
    encode = _ENCODER.encode
    return _without_nul(separator.encode().join([encode(v) for v in values])).decode()


def _without_nul(data: bytes) -> bytes:
    if b"\\u0000" in data:
        data = _NUL_ESCAPE.sub(rb"\1", data)
    return data


def json_rows(like: sa.Table, columns: Sequence[str], name: str = "src") -> sa.Subquery:
    """A batch of rows (bound at execution with `rows_param`) as a FROM clause typed like `like`'s
    columns, to select from in an INSERT. The statement does not depend on the rows, so callers
    build it once per column list and reuse it for every batch.

    Rows travel as arrays, not objects: objects repeat every column name in every row, nearly half
    the document, and PostgreSQL's JSON parser is most of what the conversion costs. Measured on
    1,000 mapped listings: 14 ms against 18 ms for `json_to_recordset` over objects (which parses
    its input twice, once as the `json` value and again to split it).

    A text[] column's value must be sent as `array_text` gives it.
    """
    doc = sa.cast(sa.bindparam(f"{name}_rows", type_=sa.Text), JSONB)
    elems = sa.func.jsonb_array_elements(doc).table_valued(sa.column("r", JSONB)).render_derived(name=f"{name}_r")
    row = elems.c.r
    values = []
    for i, c in enumerate(columns):
        typ = like.c[c].type
        at = sa.literal_column(str(i), sa.Integer)  # positions are part of the statement, not parameters
        if isinstance(typ, ARRAY):  # see array_text: split, and the empty text before the first item dropped
            values.append(sa.literal_column(
                f"(string_to_array({elems.name}.r ->> {i}, chr({ord(ARRAY_SEPARATOR)})))[2:]", typ).label(c))
        else:
            values.append(sa.cast(row.op("->>", return_type=sa.Text)(at), typ).label(c))
    return sa.select(*values).select_from(elems).subquery(name)


def rows_param(rows: Sequence[Sequence[Any]], name: str = "src") -> dict[str, str]:
    """The execution parameter carrying `rows` (each a sequence of values in the column order given
    to `json_rows`) for a `json_rows(..., name)` clause."""
    return {f"{name}_rows": encode_json(rows)}


def array_text(items: Sequence[Any] | None) -> str | None:
    """A text[] value as `json_rows` reads it: each item preceded by ARRAY_SEPARATOR, so that
    PostgreSQL's `string_to_array` splits it in C and the empty text before the first separator
    is dropped; an empty list is empty text, and None stays NULL. Exact for any text items, empty
    ones included, except that an item holding the separator itself (a control character no MLS
    means) gets a space in its place. Other items (a local edit's numbers) are stored as their
    text, a None item as empty text: the mapper only makes lists of non-empty text.

    Turning each JSON array into text[] with a subquery over `jsonb_array_elements_text` cost
    PostgreSQL a third of the whole upsert (10 of 31 ms per 1,000 listings with three lists).
    """
    if items is None:
        return None
    if not items:
        return ""
    sep = ARRAY_SEPARATOR
    try:
        text = sep + sep.join(items)
    except TypeError:  # not all text: a local edit's list of numbers, say
        return array_text(["" if x is None else str(x) for x in items])
    if text.count(sep) != len(items):
        text = sep + sep.join(str(x).replace(sep, " ") for x in items)
    return text


def json_array(name: str | None, value: Any = None) -> sa.ColumnElement[Any]:
    """A text[] bound as one JSON array (`encode_json` of a list, under parameter `name`), in the
    list's order (arrays are unnested side by side with others).

    psycopg sends a Python list as an array literal it quotes item by item in Python, a regex
    match per item: 20 ms of a 10k load's CPU for key lists, 10 % of a fetch's for landing. As
    JSON, msgspec encodes it in C and the server splits it.
    """
    doc = sa.cast(sa.bindparam(name, value, type_=sa.Text), JSONB)
    items = sa.func.jsonb_array_elements_text(doc).table_valued("value", with_ordinality="n").render_derived()
    return sa.func.array(sa.select(items.c.value).order_by(items.c.n).scalar_subquery())


def any_of(column: sa.ColumnElement[Any], values: Iterable[str]) -> sa.ColumnElement[bool]:
    """`column = ANY(...)` for a batch of text keys, sent as one JSON array: one parameter where
    `IN` would bind 1,000."""
    return column == sa.any_(json_array(None, encode_json(list(values))))
