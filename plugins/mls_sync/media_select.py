"""Which listings need photo work in a run, and how they become mapped tasks.

A listing needs work when this run touched it (landed a raw record or upserted its row) and the
MLS's photo clock or photo count differs from what `property_media_sync` says the stored photos
reflect, or when it was deleted while photos are still stored, or when an earlier photo failure
of it is due for a retry. Everything else is left alone, so a no-change run plans zero batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mls_sync.store import errors as err_store
from mls_sync.store import raw as raw_store
from mls_sync.store import runs
from mls_sync.store.tables import Tables
from mls_sync.sync import mapper_for_run

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig
    from mls_sync.sync import SyncContext

STAGE = "media"
def clock_column(provider: ProviderConfig) -> str:
    """The properties column that moves when photos change; ModificationTimestamp as a fallback
    for providers that publish no photo timestamp (then any change re-checks the photos)."""
    mapped = {t.column for t in provider.targets()}
    return "photos_changed_at" if "photos_changed_at" in mapped else "mls_modified_at"


def listing_of(ref: str) -> str:
    """`<listing>:<order>` -> listing (listing keys may themselves contain ':')."""
    return ref.rpartition(":")[0] or ref


def photo_ref(listing_key: str, order: int) -> str:
    return f"{listing_key}:{order}"


def due_listings(conn: Connection, t: Tables, provider_id: str) -> list[str]:
    """Listings with a photo failure whose retry time has come (dead letters excluded)."""
    refs = err_store.due_refs(conn, t, provider_id, STAGE)
    return sorted({listing_of(r) for r in refs})


def _differs(clock: Any, count: Any, state_clock: Any, state_count: Any) -> Any:
    """SQL: the MLS's photo clock or count is not what the stored photos reflect."""
    return sa.or_(clock.is_distinct_from(state_clock), count.is_distinct_from(state_count))


def changed_listings(ctx: SyncContext, sync_id: int) -> tuple[list[str], list[str]]:
    """(listings touched by this run whose photos changed or must go, due retries), sorted."""
    p, t = ctx.provider, ctx.t
    pr, rr, pm, s = t.properties, t.mls_raw_records, t.property_media, t.property_media_sync
    pid = p.provider_id
    touched = sa.union(
        sa.select(rr.c.listing_key).where(rr.c.provider_id == pid, rr.c.sync_id == sync_id),
        sa.select(pr.c.listing_key).where(pr.c.provider_id == pid, pr.c.last_sync_id == sync_id),
    ).subquery()
    clock = pr.c[clock_column(p)]
    has_stored = sa.exists().where(pm.c.provider_id == pid, pm.c.listing_key == pr.c.listing_key,
                                   pm.c.state == "stored")
    never_synced = sa.and_(s.c.listing_key.is_(None),
                           sa.or_(sa.func.coalesce(pr.c.photos_count, 1) > 0, has_stored))
    live_change = sa.and_(pr.c.deleted_at.is_(None), sa.or_(
        never_synced,
        sa.and_(s.c.listing_key.isnot(None), _differs(clock, pr.c.photos_count, s.c.photos_changed_at,
                                                      s.c.photos_count))))
    gone = sa.and_(pr.c.deleted_at.isnot(None), has_stored)
    q = (sa.select(pr.c.listing_key)
         .select_from(touched.join(pr, sa.and_(pr.c.provider_id == pid,
                                               pr.c.listing_key == touched.c.listing_key))
                      .outerjoin(s, sa.and_(s.c.provider_id == pid, s.c.listing_key == pr.c.listing_key)))
         .where(sa.or_(live_change, gone)).order_by(pr.c.listing_key))
    with ctx.db.connect() as c:
        changed = list(c.execute(q).scalars())
        due = due_listings(c, t, pid)
        if due:  # only listings we still hold and that are not gone from the MLS
            due = sorted(c.execute(sa.select(pr.c.listing_key).where(
                pr.c.provider_id == pid, pr.c.listing_key.in_(due), pr.c.deleted_at.is_(None))).scalars())
    return changed, due


def split(keys: Sequence[str], batch_listings: int, max_batches: int) -> list[list[str]]:
    """Consecutive chunks of `batch_listings`, grown when needed to stay within `max_batches`."""
    if not keys:
        return []
    size = max(batch_listings, math.ceil(len(keys) / max(1, max_batches)))
    return [list(keys[i:i + size]) for i in range(0, len(keys), size)]


def _short(key: str, width: int = 10) -> str:
    return key if len(key) <= width + 2 else f"{key[:width]}.."


def label(provider_id: str, keys: Sequence[str]) -> str:
    """Readable map index: provider, first and last listing, size."""
    span = _short(keys[0]) if len(keys) == 1 else f"{_short(keys[0])}-{_short(keys[-1])}"
    return f"{provider_id} {span} ({len(keys)} listing{'s' if len(keys) != 1 else ''})"


def _dry_run_estimate(ctx: SyncContext, sync_id: int) -> dict[str, int]:
    """What a real run would fetch: the run's raw records mapped (properties stay untouched in a
    dry run, so they cannot be compared) against the stored photo state."""
    p, t = ctx.provider, ctx.t
    with ctx.db.connect() as c:
        run = runs.get_run(c, t, sync_id)
    mapper = mapper_for_run(ctx, run)
    column = clock_column(p)
    listings = photos = 0
    s = t.property_media_sync
    for batch in raw_store.iter_run(ctx.db, t, p.provider_id, sync_id):
        keys = [k for k, _, deleted in batch if not deleted]
        with ctx.db.connect() as c:
            state = {r.listing_key: r for r in c.execute(sa.select(s).where(
                s.c.provider_id == p.provider_id, s.c.listing_key.in_(keys)))}
        for key, payload, deleted in batch:
            if deleted:
                continue
            row = mapper.map_columns(payload, {column, "photos_count"})
            clock, count = row.get(column), row.get("photos_count")
            st = state.get(key)
            if st is None and count == 0:
                continue
            if st is not None and _same_time(st.photos_changed_at, clock) and st.photos_count == count:
                continue
            listings += 1
            photos += count or 0
    with ctx.db.connect() as c:
        due = err_store.due_refs(c, t, p.provider_id, STAGE)
    return {"listings": listings, "photos": photos, "retry_photos": len(due),
            "retry_listings": len({listing_of(r) for r in due})}


def _same_time(a: datetime | None, b: Any) -> bool:
    return a == b if isinstance(b, datetime) or b is None else False


def plan_batches(ctx: SyncContext, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The media stage's map: one small dict per batch of listing keys (never records).

    Dry runs and runs without photos plan nothing; a dry run records in the run's report how
    many listings and photos a real run would fetch.
    """
    sid, m, pid = plan["sync_id"], ctx.provider.media, ctx.provider.provider_id
    started = time.monotonic()
    if not plan.get("include_photos", True):
        return []
    if plan.get("dry_run"):
        estimate = _dry_run_estimate(ctx, sid)
        with ctx.db.begin() as c:
            runs.record_stage(c, ctx.t, sid, "media_plan", time.monotonic() - started,
                              {"media_dry_run": estimate})
        return []
    changed, due = changed_listings(ctx, sid)
    keys = sorted(set(changed) | set(due))
    chunks = split(keys, m.batch_listings, m.max_mapped_tasks)
    batches = [{"index": i, "keys": chunk, "label": label(pid, chunk)} for i, chunk in enumerate(chunks)]
    with ctx.db.begin() as c:
        runs.record_stage(c, ctx.t, sid, "media_plan", time.monotonic() - started, {"media_plan": {
            "listings": len(keys), "changed": len(changed), "retries": len(due), "batches": len(batches)}})
    return batches


def batch_keys(batch: dict[str, Any]) -> list[str]:
    """The listing keys a planned batch names, deduplicated, in order."""
    keys: Iterable[Any] = batch.get("keys") or []
    return list(dict.fromkeys(str(k) for k in keys if k not in (None, "")))
