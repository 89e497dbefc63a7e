"""`mls_rate_permits`: the requests (and downloaded bytes) each provider's account has spent.

The policy (windows, waiting, giving up) is `mls_sync.shared_budget`; these are its statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mls_sync.store.tables import Tables

LOCK_CLASS = 0x4D4C5352  # 'MLSR': the first key of the per-provider advisory lock
KEEP = timedelta(hours=25)  # the longest window (a day) and a margin


def take(conn: Connection, t: Tables, provider_id: str, windows: Sequence[tuple[float, int]],
         bytes_per_hour: int | None) -> float:
    """Take one request permit if every window has room; else the seconds until one will.

    Runs under a transaction-scoped advisory lock per provider, so two takers never both see
    the last free place of a window.
    """
    p = t.mls_rate_permits
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_CLASS, sa.func.hashtext(provider_id))))
    now = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    mine = p.c.provider_id == provider_id
    delay = 0.0
    for window, limit in windows:
        # the `limit`-th newest request inside the window: while it is there, the window is full
        nth = conn.execute(sa.select(p.c.at).where(mine, p.c.requests > 0, p.c.at > now - timedelta(seconds=window))
                           .order_by(p.c.at.desc()).offset(int(limit) - 1).limit(1)).scalar()
        if nth is not None:
            delay = max(delay, (nth + timedelta(seconds=window) - now).total_seconds())
    if bytes_per_hour:
        used, oldest = conn.execute(sa.select(sa.func.sum(p.c.bytes), sa.func.min(p.c.at))
                                    .where(mine, p.c.bytes > 0, p.c.at > now - timedelta(hours=1))).one()
        if used is not None and used >= bytes_per_hour:
            delay = max(delay, (oldest + timedelta(hours=1) - now).total_seconds())
    if delay <= 0:
        conn.execute(p.insert().values(provider_id=provider_id, at=now))
    return max(delay, 0.0)


def add_bytes(conn: Connection, t: Tables, provider_id: str, n: int) -> None:
    conn.execute(t.mls_rate_permits.insert().values(provider_id=provider_id, requests=0, bytes=n))


def forget_old(conn: Connection, t: Tables, provider_id: str) -> int:
    """Delete the provider's permits that no window reaches any more."""
    p = t.mls_rate_permits
    return conn.execute(p.delete().where(p.c.provider_id == provider_id,
                                         p.c.at < sa.func.clock_timestamp() - KEEP)).rowcount

