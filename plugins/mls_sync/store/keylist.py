"""The MLS's key list for one reconciliation run (`mls_reconcile_keys`), and what it says of the store.

A reconciliation lands, page by page, only the key and modification time of every listing the
provider should hold (the full sync's statuses). Compared with `properties` in SQL:
- missing: in the MLS's list, not a live listing here;
- stale: here, with another modification time (a back-dated change, one an outage hid);
- gone: a live listing here in scope that the list does not have (deleted, or left the scope).
Keys this run already landed in full (its incremental walk) are neither missing nor stale.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.store import bulk
from mls_sync.store.tables import Tables


def land(conn: Connection, t: Tables, provider_id: str, sync_id: int,
         pairs: Sequence[tuple[str, datetime | None]]) -> int:
    """Add (listing_key, modified) pairs to the run's list; a key seen twice keeps its last time."""
    if not pairs:
        return 0
    latest = dict(pairs)
    conn.execute(_land_statement(t.mls_reconcile_keys), {
        "provider_id": provider_id, "sync_id": sync_id, "keys": bulk.encode_json(list(latest)),
        "modified": bulk.encode_json([m.isoformat() if m else None for m in latest.values()])})
    return len(latest)


@functools.lru_cache(maxsize=8)
def _land_statement(k: sa.Table) -> sa.Insert:
    stamps = sa.cast(bulk.json_array("modified"), ARRAY(sa.DateTime(timezone=True)))
    src = sa.func.unnest(bulk.json_array("keys"), stamps).table_valued("listing_key", "modified").render_derived()
    stmt = pg_insert(k).from_select(("provider_id", "sync_id", "listing_key", "modified"), sa.select(
        sa.bindparam("provider_id", type_=sa.Text), sa.bindparam("sync_id", type_=sa.BigInteger),
        src.c.listing_key, src.c.modified))
    return stmt.on_conflict_do_update(index_elements=["provider_id", "sync_id", "listing_key"],
                                      set_={"modified": stmt.excluded.modified})


def count(conn: Connection, t: Tables, provider_id: str, sync_id: int) -> int:
    k = t.mls_reconcile_keys
    return int(conn.execute(sa.select(sa.func.count()).select_from(k).where(
        k.c.provider_id == provider_id, k.c.sync_id == sync_id)).scalar_one())


def _landed(t: Tables, provider_id: str, sync_id: int) -> sa.Select[Any]:
    r = t.mls_raw_records
    return sa.select(r.c.listing_key).where(r.c.provider_id == provider_id, r.c.sync_id == sync_id)


def to_fetch(conn: Connection, t: Tables, provider_id: str, sync_id: int) -> dict[str, list[str]]:
    """{"missing": keys, "stale": keys}: what the store lacks or holds at another time, in key order.

    (key, modified) pairs of the list EXCEPT those of the live store, EXCEPT the keys this run
    already landed in full: set differences, hashed or sorted, so no plan compares every key with
    every row, however stale the statistics of tables the run has just filled (as a LEFT JOIN with
    NOT EXISTS PostgreSQL chose nested loops over sequential scans: 20 s for 20,000 listings).
    """
    k, p = t.mls_reconcile_keys, t.properties
    listed = sa.select(k.c.listing_key, k.c.modified).where(k.c.provider_id == provider_id, k.c.sync_id == sync_id)
    held = sa.select(p.c.listing_key, p.c.mls_modified_at).where(p.c.provider_id == provider_id,
                                                                 p.c.deleted_at.is_(None))
    differ = sa.except_(listed, held).subquery()
    keys = sorted(conn.execute(sa.except_(sa.select(differ.c.listing_key), _landed(t, provider_id, sync_id)))
                  .scalars())
    # live ones picked here, not with `deleted_at IS NULL` in SQL: see properties.remove_listings
    present = {key for key, deleted_at in conn.execute(sa.select(p.c.listing_key, p.c.deleted_at).where(
        p.c.provider_id == provider_id, bulk.any_of(p.c.listing_key, keys))) if deleted_at is None
        } if keys else set()
    return {"missing": [key for key in keys if key not in present], "stale": [key for key in keys if key in present]}


def gone(conn: Connection, t: Tables, provider_id: str, sync_id: int, statuses: Sequence[str]) -> list[str]:
    """Live listings here in the reconciled scope that the MLS's list does not have, in key order.

    A set difference (EXCEPT), like the full sync's: no nested-loop plan however stale the
    statistics of tables a run has just rewritten.
    """
    k, p = t.mls_reconcile_keys, t.properties
    held = sa.select(p.c.listing_key).where(p.c.provider_id == provider_id, p.c.deleted_at.is_(None),
                                            p.c.status.in_(list(statuses)))
    listed = sa.select(k.c.listing_key).where(k.c.provider_id == provider_id, k.c.sync_id == sync_id)
    q = sa.except_(held, listed, _landed(t, provider_id, sync_id))
    return sorted(conn.execute(q).scalars())


def in_scope(conn: Connection, t: Tables, provider_id: str, statuses: Sequence[str]) -> int:
    """Live listings the store holds in the reconciled scope."""
    p = t.properties
    return int(conn.execute(sa.select(sa.func.count()).select_from(p).where(
        p.c.provider_id == provider_id, p.c.deleted_at.is_(None), p.c.status.in_(list(statuses)))).scalar_one())


def purge_closed(conn: Connection, t: Tables, provider_id: str) -> int:
    """Drop the key lists of the provider's runs that are no longer running."""
    k, h = t.mls_reconcile_keys, t.mls_sync_history
    running = sa.select(h.c.id).where(h.c.id == k.c.sync_id, h.c.state == "running").exists()
    return conn.execute(k.delete().where(k.c.provider_id == provider_id, ~running)).rowcount or 0
