"""Deleting photo objects nobody needs: removed photos after their grace period, and orphans.

Removed rows keep their objects for `media.removal_grace_hours` so pages and caches that still
show the old photo do not break at once. Orphans are objects no row points at (a task killed
between upload and commit, a wiped table, a changed variant list); they are found one listed
chunk at a time through `property_media.object_prefix`, so memory does not grow with the bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mls_sync.media_rows import row_keys
from mls_sync.objectstore import ObjectStore, prefix_parts, safe_segment
from mls_sync.store.tables import tables

if TYPE_CHECKING:
    from mls_sync.sync import SyncContext

log = logging.getLogger(__name__)
CHUNK = 1000
SAMPLE = 20


def _chunks(items: Iterable[str], size: int = CHUNK) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _owned(conn: sa.Connection, pm: sa.Table, prefixes: Iterable[str], exclude_ids: Iterable[int] = ()) -> set[str]:
    """Keys that live rows (stored, or removed with objects not yet deleted) point at."""
    q = sa.select(pm.c.variants, pm.c.original_key).where(
        pm.c.object_prefix.in_(sorted(set(prefixes))),
        sa.or_(pm.c.state == "stored", pm.c.objects_deleted_at.is_(None)))
    ids = list(exclude_ids)
    if ids:
        q = q.where(pm.c.id.notin_(ids))
    return {k for r in conn.execute(q) for k in row_keys(r.variants, r.original_key)}


def cleanup_removed(ctx: SyncContext, store: ObjectStore, now: datetime | None = None) -> dict[str, int]:
    """Delete the objects of photos removed more than the grace period ago; mark them deleted.

    Keys another live row still uses (the same photo back at the same place) are left alone.
    """
    pid, pm = ctx.provider.provider_id, ctx.t.property_media
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=ctx.provider.media.removal_grace_hours)
    rows_done = objects = 0
    last_id = 0
    while True:
        with ctx.db.begin() as c:
            rows = c.execute(sa.select(pm.c.id, pm.c.variants, pm.c.original_key, pm.c.object_prefix).where(
                pm.c.provider_id == pid, pm.c.state == "removed", pm.c.objects_deleted_at.is_(None),
                pm.c.removed_at <= cutoff, pm.c.id > last_id).order_by(pm.c.id).limit(CHUNK)).all()
            if not rows:
                break
            ids = [r.id for r in rows]
            keys = {k for r in rows for k in row_keys(r.variants, r.original_key)}
            keys -= _owned(c, pm, [r.object_prefix for r in rows if r.object_prefix], ids)
            if keys:
                objects += store.delete(sorted(keys))
            c.execute(pm.update().where(pm.c.id.in_(ids)).values(objects_deleted_at=sa.func.now()))
            rows_done += len(rows)
            last_id = ids[-1]
    out = {"rows": rows_done, "objects_deleted": objects}
    log.info("media cleanup %s (removed before %s): %s", pid, cutoff.isoformat(), out)
    return out


def _root(prefix: str, provider_id: str | None) -> str:
    parts = prefix_parts(prefix)
    if not parts:
        raise ValueError("orphan search needs the media prefix (e.g. 'listings'): an empty prefix would "
                         "treat every object in the bucket as a photo")
    if provider_id:
        parts.append(safe_segment(provider_id))
    return "/".join(parts) + "/"


def find_orphans(db: Engine, store: ObjectStore, provider_id: str | None, prefix: str) -> list[str]:
    """Keys under `<prefix>/[<provider>/]` that no stored or not-yet-deleted removed row points at."""
    pm = tables(db).property_media
    orphans: list[str] = []
    for chunk in _chunks(store.list(_root(prefix, provider_id))):
        folders = {k.rsplit("/", 1)[0] + "/" for k in chunk}
        with db.connect() as c:
            owned = _owned(c, pm, folders)
        orphans.extend(k for k in chunk if k not in owned)
    return orphans


def _busy_roots(db: Engine, prefix: str, provider_id: str | None) -> list[str]:
    """Folders of providers whose sync is running now: their fresh uploads may not have rows yet."""
    s = tables(db).mls_sync_status
    q = sa.select(s.c.provider_id).where(s.c.state == "running")
    if provider_id:
        q = q.where(s.c.provider_id == provider_id)
    with db.connect() as c:
        return [_root(prefix, pid) for pid in c.execute(q).scalars()]


def delete_orphans(db: Engine, store: ObjectStore, provider_id: str | None, prefix: str,
                   dry_run: bool = True) -> dict[str, Any]:
    """Find orphans and, unless `dry_run`, delete them. Providers with a sync running are skipped."""
    found = find_orphans(db, store, provider_id, prefix)
    busy = _busy_roots(db, prefix, provider_id)
    orphans = [k for k in found if not k.startswith(tuple(busy))] if busy else found
    deleted = 0 if dry_run or not orphans else store.delete(orphans)
    out = {"dry_run": dry_run, "orphans": len(orphans), "deleted": deleted, "sample": orphans[:SAMPLE],
           "skipped_running": len(found) - len(orphans)}
    log.info("media orphans %s under %r: %s", provider_id or "(all providers)", prefix, out)
    return out
