"""`mls_sync_leases`: which runs are going, where, and when they last showed signs of life.

One row per going run (keyed by its history id); at most one writer per provider, enforced by a
partial unique index. The policy (who may take a lease over, the heartbeat thread) is
`mls_sync.lease`; these are its statements.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.store.tables import Tables


def get(conn: Connection, t: Tables, sync_id: int) -> dict[str, Any] | None:
    le = t.mls_sync_leases
    row = conn.execute(sa.select(le, sa.func.now().label("now")).where(le.c.sync_id == sync_id)).mappings().first()
    return dict(row) if row else None


def of_provider(conn: Connection, t: Tables, provider_id: str) -> list[dict[str, Any]]:
    """Every lease of the provider (writer and dry runs), with the database's clock as `now`."""
    le = t.mls_sync_leases
    rows = conn.execute(sa.select(le, sa.func.now().label("now")).where(le.c.provider_id == provider_id)
                        .order_by(le.c.sync_id)).mappings()
    return [dict(r) for r in rows]


def writer_of(conn: Connection, t: Tables, provider_id: str) -> dict[str, Any] | None:
    return next((r for r in of_provider(conn, t, provider_id) if r["writer"]), None)


def put(conn: Connection, t: Tables, *, sync_id: int, provider_id: str, writer: bool, holder: str,
        run_label: str | None, host: str, pid: int, process_bound: bool, stage: str,
        stale_after_seconds: int) -> None:
    """Take (or refresh) the lease of this run. A second writer of the provider fails on the
    partial unique index: callers check first, the index makes a race impossible."""
    le = t.mls_sync_leases
    values = {"provider_id": provider_id, "writer": writer, "holder": holder, "run_label": run_label,
              "host": host, "pid": pid, "process_bound": process_bound, "stage": stage,
              "stale_after_seconds": stale_after_seconds}
    stmt = pg_insert(le).values(sync_id=sync_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["sync_id"],
                                            set_={**values, "heartbeat_at": sa.func.now()}))


def beat(conn: Connection, t: Tables, sync_id: int, *, host: str, pid: int | None,
         stage: str | None = None) -> bool:
    """Refresh the run's heartbeat; False when the run holds no lease any more (taken over)."""
    le = t.mls_sync_leases
    values: dict[str, Any] = {"heartbeat_at": sa.func.now(), "host": host, "pid": pid}
    if stage is not None:
        values["stage"] = stage
    return bool(conn.execute(le.update().where(le.c.sync_id == sync_id).values(values)).rowcount)


def release(conn: Connection, t: Tables, sync_id: int) -> None:
    le = t.mls_sync_leases
    conn.execute(le.delete().where(le.c.sync_id == sync_id))
