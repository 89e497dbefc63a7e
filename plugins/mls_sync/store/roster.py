"""Writing the roster tables (members, offices, open_houses) and each resource's watermark.

The same pattern as `properties`: one `INSERT .. SELECT .. ON CONFLICT .. DO UPDATE .. WHERE` the
row hash changed per batch, sent as one JSON document (store/bulk.py), so an unchanged row costs
no write; rows gone from the MLS are soft-deleted. `mls_resource_sync` holds a watermark per
provider and resource, and the checkpoint of the run walking it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.columns import ROSTER_COLUMNS, ROSTER_TABLES
from mls_sync.store import bulk
from mls_sync.store.tables import Tables

BATCH = 1000


def table(t: Tables, kind: str) -> sa.Table:
    return getattr(t, ROSTER_TABLES[kind])


def key_column(kind: str) -> str:
    """The table's key column (the first of its columns in columns.py)."""
    return next(iter(ROSTER_COLUMNS[kind]))


def _columns(kind: str) -> tuple[str, ...]:
    return (*ROSTER_COLUMNS[kind], "raw", "provider_id", "row_hash", "first_sync_id", "last_sync_id")


@functools.lru_cache(maxsize=8)
def _upsert_statement(tbl: sa.Table, kind: str) -> sa.Select[Any]:
    cols = _columns(kind)
    src = bulk.json_rows(tbl, cols)
    stmt = pg_insert(tbl).from_select(cols, sa.select(*[src.c[c] for c in cols]))
    ex = stmt.excluded
    key = key_column(kind)
    set_ = {c: ex[c] for c in ROSTER_COLUMNS[kind] if c != key}
    set_.update(raw=ex.raw, row_hash=ex.row_hash, last_sync_id=ex.last_sync_id, deleted_at=None,
                updated_at=sa.func.now())
    changed = tbl.c.row_hash.is_distinct_from(ex.row_hash) | tbl.c.deleted_at.isnot(None)
    stmt = stmt.on_conflict_do_update(index_elements=["provider_id", key], set_=set_, where=changed)
    written = stmt.returning(sa.literal_column("(xmax = 0)", sa.Boolean).label("inserted")).cte("written")
    return sa.select(sa.func.count().filter(written.c.inserted), sa.func.count()).select_from(written)


def upsert(conn: Connection, t: Tables, provider_id: str, kind: str,
           rows: Sequence[tuple[dict[str, Any], str, dict[str, Any]]], sync_id: int) -> dict[str, int]:
    """Upsert (mapped row, row hash, raw record) triples; returns added, updated and unchanged."""
    out = {"added": 0, "updated": 0, "unchanged": 0}
    columns = tuple(ROSTER_COLUMNS[kind])
    tbl = table(t, kind)
    for i in range(0, len(rows), BATCH):
        chunk = rows[i:i + BATCH]
        values = [(*(row.get(c) for c in columns), raw, provider_id, h, sync_id, sync_id) for row, h, raw in chunk]
        added, written = conn.execute(_upsert_statement(tbl, kind), bulk.rows_param(values)).one()
        out["added"] += int(added)
        out["updated"] += int(written) - int(added)
        out["unchanged"] += len(chunk) - int(written)
    return out


def mark_deleted(conn: Connection, t: Tables, provider_id: str, kind: str, keys: Sequence[str],
                 sync_id: int) -> int:
    """Soft-delete live rows gone from the MLS; returns how many were live."""
    if not keys:
        return 0
    tbl = table(t, kind)
    key = tbl.c[key_column(kind)]
    return conn.execute(tbl.update().where(tbl.c.provider_id == provider_id, bulk.any_of(key, keys),
                                           tbl.c.deleted_at.is_(None)).values(
        deleted_at=sa.func.now(), last_sync_id=sync_id, updated_at=sa.func.now())).rowcount or 0


def live(conn: Connection, t: Tables, provider_id: str, kind: str) -> dict[str, datetime | None]:
    """Live rows' keys and MLS modification times (a roster is thousands of rows, not millions)."""
    tbl = table(t, kind)
    return dict(conn.execute(sa.select(tbl.c[key_column(kind)], tbl.c.mls_modified_at).where(
        tbl.c.provider_id == provider_id, tbl.c.deleted_at.is_(None))).all())


def count_live(conn: Connection, t: Tables, provider_id: str, kind: str) -> int:
    tbl = table(t, kind)
    return int(conn.execute(sa.select(sa.func.count()).select_from(tbl).where(
        tbl.c.provider_id == provider_id, tbl.c.deleted_at.is_(None))).scalar_one())


# ------------------------------------------------------------------ watermark and checkpoint

def state(conn: Connection, t: Tables, provider_id: str, kind: str) -> dict[str, Any]:
    """The resource's row (watermark, run checkpoint), created empty on first use and locked for
    the caller's transaction."""
    s = t.mls_resource_sync
    conn.execute(pg_insert(s).values(provider_id=provider_id, resource=kind).on_conflict_do_nothing())
    return dict(conn.execute(sa.select(s).where(s.c.provider_id == provider_id, s.c.resource == kind)
                             .with_for_update()).mappings().one())


def checkpoint(conn: Connection, t: Tables, provider_id: str, kind: str, sync_id: int,
               run_state: dict[str, Any]) -> None:
    """What this run has written of the resource so far (in the transaction that wrote it)."""
    s = t.mls_resource_sync
    conn.execute(s.update().where(s.c.provider_id == provider_id, s.c.resource == kind).values(
        run_sync_id=sync_id, run_state=run_state, updated_at=sa.func.now()))


def finish(conn: Connection, t: Tables, provider_id: str, kind: str, sync_id: int, watermark: datetime | None,
           counts: dict[str, Any], reconciled: bool) -> None:
    """The walk is written: the watermark moves past what was stored (never back), the checkpoint
    is kept as done for this run (a retried task does not walk again)."""
    s = t.mls_resource_sync
    values: dict[str, Any] = {"last_counts": counts, "run_sync_id": sync_id,
                              "run_state": {"done": True, "counts": counts}, "updated_at": sa.func.now()}
    if watermark is not None:
        values["watermark"] = sa.func.greatest(s.c.watermark, watermark)
    if reconciled:
        values["last_reconciled_at"] = sa.func.now()
    conn.execute(s.update().where(s.c.provider_id == provider_id, s.c.resource == kind).values(values))


def watermarks(conn: Connection, t: Tables, provider_id: str) -> dict[str, dict[str, Any]]:
    """Per resource: watermark, last reconciliation and last counts (for reports and the CLI)."""
    s = t.mls_resource_sync
    rows = conn.execute(sa.select(s.c.resource, s.c.watermark, s.c.last_reconciled_at, s.c.last_counts).where(
        s.c.provider_id == provider_id)).mappings()
    return {r["resource"]: {k: r[k] for k in ("watermark", "last_reconciled_at", "last_counts")} for r in rows}
