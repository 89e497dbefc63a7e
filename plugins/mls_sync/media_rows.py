"""`property_media` rows of the media stage: what is stored, and writing one listing's outcome.

A listing's outcome is written in one transaction: replaced and vanished photos are marked
removed (their objects go later, after the grace period), new photos inserted, kept photos'
metadata refreshed, its photo failures recorded or resolved, and `property_media_sync` moved to
the MLS photo clock the rows now reflect. Not when a photo is missing or failed for a reason that
may pass (a reply cut off, a timeout, a 5xx): then the listing keeps its old photo state (none, for
a new listing), so it is planned again, and a missing photo's error is due at once (retried by the
next run). A photo the MLS sent broken (a data error) does not hold the state back: its error row
is retried on its own back-off, and the listing is not downloaded again on every full sync.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.media_select import STAGE, clock_column, photo_ref
from mls_sync.store import errors as err_store
from mls_sync.store.tables import Tables

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig


@dataclass(frozen=True)
class StoredPhoto:
    """The identity of a stored photo: enough to tell whether the MLS's photo is the same one."""

    id: int
    order: int
    source_id: str | None
    source_url: str | None
    source_modified_at: datetime | None
    content_hash: str | None
    caption: str | None


@dataclass(frozen=True)
class ListingInfo:
    """A listing's photo clock and count as `properties` has them now, and its sync state."""

    listing_key: str
    clock: datetime | None
    photos_count: int | None
    deleted: bool
    state_sync_id: int | None
    state_matches: bool


@dataclass
class PhotoMeta:
    """What the MLS says about one photo (kept photos get only this refreshed)."""

    source_id: str | None
    source_url: str | None
    source_modified_at: datetime | None
    caption: str | None


@dataclass
class NewPhoto:
    """A processed and uploaded photo, ready to become a row."""

    meta: PhotoMeta
    content_hash: str
    content_type: str | None
    width: int
    height: int
    bytes: int
    variants: dict[str, dict[str, dict[str, Any]]]
    original_key: str | None
    object_prefix: str
    objects: int = 0  # uploaded for it (variants + original)


@dataclass
class ListingOutcome:
    """Everything one listing's photo work produced; `present` is what the MLS lists now."""

    listing_key: str
    info: ListingInfo
    present: set[int] = field(default_factory=set)
    new: dict[int, NewPhoto] = field(default_factory=dict)
    kept: dict[int, PhotoMeta] = field(default_factory=dict)
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # order -> (category, message)
    missing: set[int] = field(default_factory=set)  # listed but never received (also in `failed`)


def load_listings(conn: Connection, t: Tables, provider: ProviderConfig,
                  keys: Sequence[str]) -> dict[str, ListingInfo]:
    pr, s = t.properties, t.property_media_sync
    clock = pr.c[clock_column(provider)]
    pid = provider.provider_id
    q = (sa.select(pr.c.listing_key, clock.label("clock"), pr.c.photos_count, pr.c.deleted_at,
                   s.c.sync_id, s.c.photos_changed_at, s.c.photos_count.label("state_count"),
                   s.c.listing_key.label("state_key"))
         .select_from(pr.outerjoin(s, sa.and_(s.c.provider_id == pid, s.c.listing_key == pr.c.listing_key)))
         .where(pr.c.provider_id == pid, pr.c.listing_key.in_(list(keys))))
    out = {}
    for r in conn.execute(q):
        matches = r.state_key is not None and r.photos_changed_at == r.clock and r.state_count == r.photos_count
        out[r.listing_key] = ListingInfo(r.listing_key, r.clock, r.photos_count, r.deleted_at is not None,
                                         r.sync_id, matches)
    return out


def load_stored(conn: Connection, t: Tables, provider_id: str,
                keys: Sequence[str]) -> dict[str, dict[int, StoredPhoto]]:
    pm = t.property_media
    out: dict[str, dict[int, StoredPhoto]] = {k: {} for k in keys}
    q = sa.select(pm.c.id, pm.c.listing_key, pm.c.media_order, pm.c.source_id, pm.c.source_url,
                  pm.c.source_modified_at, pm.c.content_hash, pm.c.caption).where(
        pm.c.provider_id == provider_id, pm.c.listing_key.in_(list(keys)), pm.c.state == "stored")
    for r in conn.execute(q):
        out.setdefault(r.listing_key, {})[r.media_order] = StoredPhoto(
            r.id, r.media_order, r.source_id, r.source_url, r.source_modified_at, r.content_hash, r.caption)
    return out


def row_keys(variants: Mapping[str, Any] | None, original_key: str | None) -> Iterator[str]:
    """Every object key a row points at."""
    for formats in (variants or {}).values():
        for entry in (formats or {}).values():
            if isinstance(entry, Mapping) and entry.get("key"):
                yield str(entry["key"])
    if original_key:
        yield original_key


def _meta_values(meta: PhotoMeta) -> dict[str, Any]:
    return {"source_id": meta.source_id, "source_url": meta.source_url,
            "source_modified_at": meta.source_modified_at, "caption": meta.caption}


def write_outcome(conn: Connection, t: Tables, provider: ProviderConfig, sync_id: int, out: ListingOutcome,
                  *, base_minutes: int) -> dict[str, int]:
    """Apply one listing's outcome; returns its history counts."""
    pm, e, s = t.property_media, t.mls_sync_errors, t.property_media_sync
    pid, key = provider.provider_id, out.listing_key
    now = sa.func.now()
    stored = {r.media_order: r for r in conn.execute(
        sa.select(pm.c.id, pm.c.media_order, pm.c.source_id, pm.c.source_url, pm.c.source_modified_at,
                  pm.c.caption).where(pm.c.provider_id == pid, pm.c.listing_key == key,
                                      pm.c.state == "stored").with_for_update())}
    gone = [r.id for order, r in stored.items() if order not in out.present or order in out.new]
    if gone:
        conn.execute(pm.update().where(pm.c.id.in_(gone)).values(state="removed", removed_at=now,
                                                                  updated_at=now))
    if out.new:
        conn.execute(pm.insert(), [{
            "provider_id": pid, "listing_key": key, "media_order": order, **_meta_values(p.meta),
            "content_hash": p.content_hash, "content_type": p.content_type, "width": p.width,
            "height": p.height, "bytes": p.bytes, "variants": p.variants, "original_key": p.original_key,
            "object_prefix": p.object_prefix, "state": "stored", "sync_id": sync_id,
        } for order, p in sorted(out.new.items())])
    for order, meta in out.kept.items():
        row = stored.get(order)
        values = _meta_values(meta)
        if row is not None and any(getattr(row, k) != v for k, v in values.items()):
            conn.execute(pm.update().where(pm.c.id == row.id).values(**values, updated_at=now))
    for order, (category, message) in sorted(out.failed.items()):
        err_store.record_error(conn, t, provider_id=pid, stage=STAGE, category=category,
                               ref=photo_ref(key, order), message=message, sync_id=sync_id,
                               max_attempts=provider.media.max_attempts,
                               base_minutes=0 if order in out.missing else base_minutes)
    open_refs = conn.execute(sa.select(e.c.ref).where(
        e.c.provider_id == pid, e.c.stage == STAGE, e.c.resolved_at.is_(None),
        e.c.ref.startswith(f"{key}:", autoescape=True))).scalars()
    failed_refs = {photo_ref(key, o) for o in out.failed}
    err_store.resolve(conn, t, pid, STAGE, [r for r in open_refs if r not in failed_refs])
    remaining = len(stored) - len(gone) + len(out.new)
    complete = all(category != "network" for category, _ in out.failed.values())
    stmt = pg_insert(s).values(
        provider_id=pid, listing_key=key, photos_changed_at=out.info.clock if complete else None,
        photos_count=out.info.photos_count if complete else None, photos_stored=remaining, synced_at=now,
        sync_id=sync_id)
    moved = ("photos_changed_at", "photos_count") if complete else ()
    conn.execute(stmt.on_conflict_do_update(index_elements=["provider_id", "listing_key"], set_={
        k: stmt.excluded[k] for k in (*moved, "photos_stored", "synced_at", "sync_id")}))
    return {"photos_added": len(out.new), "photos_removed": len(gone), "photos_failed": len(out.failed)}
