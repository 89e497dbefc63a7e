"""`mls_rate_permits`: the requests (and downloaded bytes) each provider's account has spent.

The policy (windows, waiting, giving up) is `mls_sync.shared_budget`; these are its statements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mls_sync.store.tables import Tables

LOCK_CLASS = 0x4D4C5352  # 'MLSR': the first key of the per-provider advisory lock
KEEP = timedelta(hours=25)  # the longest window (a day) and a margin


@functools.lru_cache(maxsize=32)
def _take_sql(windows: int, bytes_cap: bool) -> sa.TextClause:
    """One statement: per window the `limit`-th newest request inside it (while there is one, the
    window is full), the last hour's bytes, and the permit inserted when all have room. Plain SQL:
    built with Core per request it cost more CPU than the round trips. Only for a budget with a
    window or a byte cap (`SharedRateLimiter` takes no permit without)."""
    recent = "SELECT {what} FROM mls_rate_permits WHERE provider_id = :p AND {which} AND at > now_ - {span}"
    cols: list[str] = []
    room = []
    for i in range(windows):
        cols.append(f"({recent.format(what='at', which='requests > 0', span=f'make_interval(secs => :s{i})')} "
                    f"ORDER BY at DESC OFFSET :o{i} LIMIT 1) AS w{i}")
        room.append(f"w{i} IS NULL")
    if bytes_cap:
        hour = recent.format(what="{}", which="bytes > 0", span="interval '1 hour'")
        cols += [f"({hour.format('sum(bytes)')}) AS used", f"({hour.format('min(at)')}) AS oldest"]
        room.append("(used IS NULL OR used < :cap)")
    # now_ (the statement's timestamp) first, then the windows that are measured back from it
    return sa.text(
        f"WITH seen AS (SELECT * FROM (SELECT statement_timestamp() AS now_) AS n, LATERAL (SELECT "
        f"{', '.join(cols)}) AS w), "
        f"taken AS (INSERT INTO mls_rate_permits (provider_id, at) SELECT :p, now_ FROM seen "
        f"WHERE {' AND '.join(room)} RETURNING id) "
        "SELECT seen.*, (SELECT count(*) FROM taken) AS taken FROM seen")


_LOCK = sa.text("SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(:cls, hashtext(:p))")


def take(conn: Connection, provider_id: str, windows: Sequence[tuple[float, int]],
         bytes_per_hour: int | None) -> float:
    """Take one request permit if every window has room; else the seconds until one will.

    Runs under a transaction-scoped advisory lock per provider, so two takers never both see the
    last free place of a window (the lock comes first, in a statement of its own: a statement sees
    what was committed when it started). The commit does not wait for the disk: a permit lost in
    a crash is a request the budget forgets, nothing more.
    """
    conn.execute(_LOCK, {"cls": LOCK_CLASS, "p": provider_id})
    params: dict[str, object] = {"p": provider_id, "cap": bytes_per_hour}
    for i, (window, limit) in enumerate(windows):
        params[f"s{i}"], params[f"o{i}"] = window, int(limit) - 1
    row = conn.execute(_take_sql(len(windows), bool(bytes_per_hour)), params).mappings().one()
    if row["taken"]:
        return 0.0
    now = row["now_"]
    delay = 0.0
    for i, (window, _) in enumerate(windows):
        if row[f"w{i}"] is not None:
            delay = max(delay, (row[f"w{i}"] + timedelta(seconds=window) - now).total_seconds())
    if bytes_per_hour and row["used"] is not None and row["used"] >= bytes_per_hour:
        delay = max(delay, (row["oldest"] + timedelta(hours=1) - now).total_seconds())
    return max(delay, 0.001)  # not taken: never "now" (a window edge met to the microsecond)


def add_bytes(conn: Connection, t: Tables, provider_id: str, n: int) -> None:
    conn.execute(sa.select(sa.func.set_config("synchronous_commit", "off", True)))
    conn.execute(t.mls_rate_permits.insert().values(provider_id=provider_id, requests=0, bytes=n))


def forget_old(conn: Connection, t: Tables, provider_id: str) -> int:
    """Delete the provider's permits that no window reaches any more."""
    p = t.mls_rate_permits
    return conn.execute(p.delete().where(p.c.provider_id == provider_id,
                                         p.c.at < sa.func.clock_timestamp() - KEEP)).rowcount
