"""Bulk writes through COPY: rows go into a temporary staging table with PostgreSQL's COPY, then
one `INSERT .. SELECT .. ON CONFLICT` moves them. Binding 1,000 rows x 35 columns as parameters
spends most of a load in the driver; COPY streams the same rows as text.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _array_item(v: Any) -> str:
    if v is None:
        return "NULL"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def copy_value(v: Any) -> str:
    """One value in COPY's text format (NULL is \\N)."""
    if v is None:
        return "\\N"
    kind = type(v)
    if kind is str:
        text = v
    elif kind is bool:
        text = "t" if v else "f"
    elif kind in (int, float, Decimal):
        text = str(v)
    elif isinstance(v, (datetime, date)):
        text = v.isoformat()
    elif isinstance(v, (list, tuple)):
        text = "{" + ",".join(_array_item(x) for x in v) + "}"
    elif isinstance(v, dict):
        text = json.dumps(v, default=str, separators=(",", ":"))
    else:
        text = str(v)
    # Most values need no escaping; isprintable() is false for tab, newline, CR and NUL.
    if "\\" in text or not text.isprintable():
        text = text.replace("\x00", "").translate(_COPY_ESCAPES)
    return text


def stage_table(conn: Connection, like: sa.Table, columns: Sequence[str]) -> sa.Table:
    """A session-temporary copy of `like`'s columns, emptied for this batch."""
    name = f"_mls_stage_{like.name}"
    conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} "
                         f"(LIKE {like.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    conn.exec_driver_sql(f"TRUNCATE {name}")
    return sa.Table(name, sa.MetaData(), *[sa.Column(c, like.c[c].type) for c in columns])


def copy_into(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> int:
    """COPY rows (dicts) into `table` on this connection's transaction; returns the row count."""
    buf = io.StringIO()
    n = 0
    for row in rows:
        buf.write("\t".join(copy_value(row.get(c)) for c in columns))
        buf.write("\n")
        n += 1
    buf.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN", buf)
    finally:
        cursor.close()
    return n
