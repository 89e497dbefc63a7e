"""The media stage: a batch of listings' photos downloaded, turned into variants, uploaded, recorded.

`plan_batches` (media_select) decides which listings; `run_batch` does one mapped task's share;
`cleanup_removed`, `find_orphans` and `delete_orphans` (media_cleanup) tidy the bucket later.

One batch is a pipeline, so download, CPU and upload overlap instead of taking turns:
the calling thread reads the source's photo stream (RESO downloads run on the source's own
threads; RETS streams one multipart reply) and skips bytes it already stored; two driver threads
feed a `PhotoProcessor` process pool in small chunks; an upload pool writes each photo's objects
with `put_many`; the calling thread alone writes PostgreSQL, one transaction per group of
finished listings. A permit per photo in flight bounds memory.

Failures are per photo: a bad image, a 404, an XML error part or a timeout becomes one
`mls_sync_errors` row (stage `media`, ref `<listing>:<order>`) and the listing's other photos
carry on. So does a photo the MLS lists but never sent (a GetObject reply cut off, a part
missing): every photo a listing lists (RESO: its Media records; RETS: its photo count) is stored
or an error row, and a missing one is retried by the next run; the listing's photo state
(`property_media_sync`) stays behind until no photo is missing (`media_rows.write_outcome`).
Storage or database failures are not the photo's fault and fail the task (recorded as the run's
failure, stage `media_batch`; Airflow retries it; finished listings are not redone).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from mls_sync import lease
from mls_sync.imaging import ImageError, PhotoProcessor, ProcessedPhoto, content_hash
from mls_sync.media_cleanup import cleanup_removed, delete_orphans, find_orphans
from mls_sync.media_rows import (
    ListingInfo,
    ListingOutcome,
    NewPhoto,
    PhotoMeta,
    StoredPhoto,
    load_listings,
    load_stored,
    write_outcome,
)
from mls_sync.media_select import STAGE, batch_keys, due_listings, plan_batches
from mls_sync.objectstore import ObjectStore, photo_key
from mls_sync.sources.base import PhotoObject, PhotoRef, Source
from mls_sync.store import runs
from mls_sync.sync import SyncContext, counted_requests, quietly, record_failure

__all__ = ["cleanup_removed", "delete_orphans", "find_orphans", "plan_batches", "run_batch"]

log = logging.getLogger(__name__)
ORIGINAL_EXT = {"jpeg": "jpg", "mpo": "jpg", "png": "png", "gif": "gif", "webp": "webp", "tiff": "tif",
                "bmp": "bmp"}
ORIGINAL_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
                  "tif": "image/tiff", "bmp": "image/bmp"}
COMMIT_EVERY_SECONDS = 2.0
CPU_DRIVERS = 2
# Photos uploading at once x objects per photo at once: 10 fits boto3's default connection pool.
UPLOAD_THREADS = 2
PUTS_PER_PHOTO = 5
MISSING = "not in the MLS's reply (cut off, or its part missing); retried on a later run"
# Words in a failure message meaning "try again later" rather than "this photo is bad".
_NETWORK_WORDS = ("timed out", "timeout", "connection", "reset", "temporar", "unavailable", " 429",
                  " 500", " 502", " 503", " 504", "rate limit", "budget")


def error_category(message: str) -> str:
    """network for transient trouble, data for a bad photo (404, XML error part, broken bytes)."""
    text = f" {message.lower()}"
    return "network" if any(w in text for w in _NETWORK_WORDS) else "data"


@dataclass
class _Item:
    listing_key: str
    order: int
    meta: PhotoMeta
    data: bytes
    digest: str
    content_type: str | None


class _Listing:
    """One listing's outcome as it builds up, plus how many of its photos are still in flight."""

    def __init__(self, info: ListingInfo, stored: dict[int, StoredPhoto]) -> None:
        self.outcome = ListingOutcome(info.listing_key, info)
        self.stored = stored
        self.pending = 0
        self.closed = False
        self.written = False

    @property
    def ready(self) -> bool:
        return self.closed and self.pending == 0 and not self.written


def _meta(photo: PhotoObject | PhotoRef) -> PhotoMeta:
    return PhotoMeta(photo.source_id or None, photo.url, photo.modified, photo.caption)


def _same_ref(row: StoredPhoto, ref: PhotoRef) -> bool:
    """The stored photo is the MLS's current one: same id and modification time (or URL when the
    server gives no time). Signed URLs change per request, so the URL alone decides only then."""
    if row.source_id != ref.source_id or not row.content_hash:
        return False
    if ref.modified is not None:
        return row.source_modified_at == ref.modified
    return row.source_url == ref.url


class _Batch:
    """The pipeline of one `run_batch` call (see the module docstring)."""

    def __init__(self, ctx: SyncContext, plan: dict[str, Any], store: ObjectStore, processor: PhotoProcessor,
                 listings: dict[str, _Listing]) -> None:
        self.ctx, self.plan, self.store, self.processor = ctx, plan, store, processor
        self.sync_id = plan["sync_id"]
        self.present_known = False
        self.media = ctx.provider.media
        self.listings = listings
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.permits = threading.Semaphore(max(8, 4 * processor.workers))
        self.chunk: list[_Item] = []
        self.cpu = ThreadPoolExecutor(CPU_DRIVERS, thread_name_prefix="media-cpu")
        self.up = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="media-upload")
        self.current: str | None = None
        self.counts = {"photos_added": 0, "photos_removed": 0, "photos_failed": 0, "photos_missing": 0,
                       "photo_bytes": 0, "photos_unchanged": 0, "objects_uploaded": 0, "listings": 0}
        self.bytes_recorded = 0
        self.last_commit = time.monotonic()

    # -- calling thread --------------------------------------------------------------------------
    def feed(self, photos: Iterable[PhotoObject], present_known: bool) -> None:
        self.present_known = present_known
        for photo in photos:
            listing = self.listings.get(photo.listing_key)
            if listing is None or listing.written:
                log.warning("media: ignoring photo %s:%s outside the batch or after its listing was written",
                            photo.listing_key, photo.order)
                continue
            if self.current != photo.listing_key:
                self._close(self.current)
                self.current = photo.listing_key
            self._take(listing, photo, present_known)
            self._drain(block=False)
        self._close(self.current)

    def _take(self, listing: _Listing, photo: PhotoObject, present_known: bool) -> None:
        out, order = listing.outcome, photo.order
        if not present_known:
            out.present.add(order)
        if photo.data:
            self.counts["photo_bytes"] += len(photo.data)
        if photo.error or not photo.data:
            message = photo.error or "no bytes and no error from the server"
            out.failed[order] = (error_category(message), f"photo {photo.source_id}: {message}")
            return
        digest = content_hash(photo.data)
        row = listing.stored.get(order)
        if row is not None and row.content_hash == digest:
            out.kept[order] = _meta(photo)  # same bytes at the same place: nothing to redo
            self.counts["photos_unchanged"] += 1
            return
        item = _Item(photo.listing_key, order, _meta(photo), photo.data, digest, photo.content_type)
        if not self.permits.acquire(blocking=False):
            self._flush()  # never hold a partial chunk while waiting for the pipeline to drain
            while not self.permits.acquire(timeout=0.2):
                self._drain(block=False)
        listing.pending += 1
        self.chunk.append(item)
        if len(self.chunk) >= self.processor.workers:
            self._flush()

    def _flush(self) -> None:
        if self.chunk:
            chunk, self.chunk = self.chunk, []
            self.cpu.submit(self._guard, self._process, chunk)

    def _close(self, key: str | None) -> None:
        if key is not None and key in self.listings:
            self.listings[key].closed = True

    def finish(self) -> None:
        self._flush()
        for listing in self.listings.values():
            listing.closed = True
        while any(not x.written and x.pending for x in self.listings.values()):
            self._drain(block=True)
        self._commit(force=True)

    def _drain(self, block: bool) -> None:
        try:
            event = self.events.get(timeout=1.0) if block else self.events.get_nowait()
        except queue.Empty:
            event = None
        while event is not None:
            kind, *rest = event
            if kind == "fatal":
                raise rest[0]
            item, result = rest
            listing = self.listings[item.listing_key]
            listing.pending -= 1
            if isinstance(result, NewPhoto):
                listing.outcome.new[item.order] = result
                self.counts["objects_uploaded"] += result.objects
            else:
                listing.outcome.failed[item.order] = ("data", f"photo {item.meta.source_id}: {result}")
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                event = None
        self._commit(force=False)

    def _commit(self, force: bool) -> None:
        """Write finished listings, grouped: at most every COMMIT_EVERY_SECONDS, or at the end."""
        if not force and time.monotonic() - self.last_commit < COMMIT_EVERY_SECONDS:
            return
        ready = [x for x in self.listings.values() if x.ready]
        if not ready:
            return
        t, p = self.ctx.t, self.ctx.provider
        totals: dict[str, int] = {}
        with self.ctx.db.begin() as c:
            for listing in ready:
                totals["photos_missing"] = totals.get("photos_missing", 0) + self._missing(listing.outcome)
                for k, v in write_outcome(c, t, p, self.sync_id, listing.outcome,
                                          base_minutes=p.retry.record_retry_base_minutes).items():
                    totals[k] = totals.get(k, 0) + v
            totals["photo_bytes"] = self.counts["photo_bytes"] - self.bytes_recorded
            runs.add_counts(c, t, self.sync_id, totals)
            done = totals.get("photos_added", 0) + totals.get("photos_failed", 0)
            s = t.mls_sync_status
            progress = s.c.progress.op("||")(sa.func.jsonb_build_object(
                "photos", sa.func.coalesce(s.c.progress["photos"].astext.cast(sa.BigInteger), 0) + done,
                "photo_listings", sa.func.coalesce(
                    s.c.progress["photo_listings"].astext.cast(sa.BigInteger), 0) + len(ready)))
            c.execute(s.update().where(s.c.provider_id == p.provider_id, s.c.current_sync_id == self.sync_id)
                      .values(progress=progress, current_stage=STAGE, updated_at=sa.func.now()))
            lease.beat(c, t, self.plan, STAGE)  # a run that lost its lease writes no photo rows
        for listing in ready:
            listing.written = True
        self.bytes_recorded = self.counts["photo_bytes"]
        self.counts["listings"] += len(ready)
        for k in ("photos_added", "photos_removed", "photos_failed", "photos_missing"):
            self.counts[k] += totals.get(k, 0)
        self.last_commit = time.monotonic()

    def _missing(self, out: ListingOutcome) -> int:
        """Photos the MLS lists for this finished listing that neither arrived nor failed: each
        becomes a failure (error row, retried later), and a stored photo in its place is kept.

        RESO lists them (Media records: `present`); RETS GetObject sends what it sends, so its
        listing's photo count says how many there must be (none known: what arrived is all)."""
        if out.info.deleted:
            return 0
        seen = set(out.new) | set(out.kept) | set(out.failed)
        if self.present_known:
            missing = sorted(out.present - seen)
        else:
            expected = out.info.photos_count
            short = (expected or 0) - len(out.present)
            missing = list(itertools.islice((o for o in itertools.count() if o not in out.present), max(short, 0)))
        for order in missing:
            out.present.add(order)
            out.missing.add(order)
            out.failed[order] = ("network", f"photo {order}: {MISSING}")
        if missing:
            log.warning("media: listing %s: %d photo(s) missing from the MLS's reply", out.listing_key, len(missing))
        return len(missing)

    # -- worker threads ----------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced on the calling thread
            self.events.put(("fatal", exc))

    def _process(self, chunk: list[_Item]) -> None:
        for item, result in zip(chunk, self.processor.map([i.data for i in chunk]), strict=True):
            if isinstance(result, ImageError):
                self.permits.release()
                self.events.put(("done", item, result))
            else:
                self.up.submit(self._guard, self._upload, item, result)

    def _upload(self, item: _Item, result: ProcessedPhoto) -> None:
        try:
            photo, objects = self._objects(item, result)
            self.store.put_many(objects, workers=min(len(objects), PUTS_PER_PHOTO))
        finally:
            self.permits.release()
        self.events.put(("done", item, photo))

    def _objects(self, item: _Item, result: ProcessedPhoto) -> tuple[NewPhoto, list[tuple[str, bytes, str]]]:
        pid, m = self.ctx.provider.provider_id, self.media

        def key(name: str, ext: str) -> str:
            return photo_key(m.prefix, pid, item.listing_key, item.order, item.digest, name, ext)

        objects: list[tuple[str, bytes, str]] = []
        variants: dict[str, dict[str, dict[str, Any]]] = {}
        for v in result.variants:
            k = key(v.name, v.ext)
            objects.append((k, v.data, v.content_type))
            variants.setdefault(v.name, {})[v.fmt] = {"key": k, "url": self.store.public_url(k),
                                                      "width": v.width, "height": v.height, "bytes": len(v.data)}
        original_key = None
        ext = ORIGINAL_EXT.get(result.format, "bin")
        ctype = ORIGINAL_TYPES.get(ext, "application/octet-stream")
        if m.keep_original:
            original_key = key("original", ext)
            objects.append((original_key, item.data, ctype))
        photo = NewPhoto(item.meta, item.digest, ctype, result.width, result.height, len(item.data), variants,
                         original_key, objects[0][0].rsplit("/", 1)[0] + "/", len(objects))
        return photo, objects

    def shutdown(self) -> None:
        self.cpu.shutdown(wait=True, cancel_futures=True)
        self.up.shutdown(wait=True, cancel_futures=True)


def _downloads(source: Source, keys: list[str], listings: dict[str, _Listing]) -> tuple[Iterator[PhotoObject], bool]:
    """The photos to look at, and whether the listings' full photo sets are already known.

    With `media_refs` (RESO) the sets come from the Media records and only new or changed photos
    are downloaded; otherwise (RETS GetObject) every photo of the listings arrives.
    """
    refs_of = getattr(source, "media_refs", None)
    if refs_of is None:
        return iter(source.photos(keys)), False
    wanted: list[PhotoRef] = []
    for ref in refs_of(keys):
        listing = listings.get(ref.listing_key)
        if listing is None:
            continue
        listing.outcome.present.add(ref.order)
        row = listing.stored.get(ref.order)
        if row is not None and _same_ref(row, ref):
            listing.outcome.kept[ref.order] = _meta(ref)
        else:
            wanted.append(ref)
    return _download_refs(source, wanted), True


def _download_refs(source: Source, refs: list[PhotoRef]) -> Iterator[PhotoObject]:
    """The listed photos to fetch: a source that lists photos (`media_refs`) downloads them too."""
    return iter(source.download(refs)) if refs else iter(())


def _record_time(ctx: SyncContext, sync_id: int, seconds: float) -> None:
    """Mapped batches run side by side: add to the stage's total instead of overwriting it."""
    h = ctx.t.mls_sync_history
    total = sa.func.coalesce(h.c.stage_timings["media"].astext.cast(sa.Float), 0.0) + round(seconds, 3)
    with ctx.db.begin() as c:
        c.execute(h.update().where(h.c.id == sync_id).values(
            stage_timings=h.c.stage_timings.op("||")(sa.func.jsonb_build_object("media", total))))


def run_batch(ctx: SyncContext, plan: dict[str, Any], batch: dict[str, Any], store: ObjectStore,
              *, processor: PhotoProcessor | None = None) -> dict[str, Any]:
    """Sync the photos of one planned batch of listings; returns small counts.

    `processor` lets a caller (the benchmark, the CLI) reuse a warm pool across batches; by
    default one is made with the provider's sizes, formats and quality and closed at the end.
    Listings this run already finished (a retried task) are skipped unless a retry is due.
    """
    started = time.monotonic()
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    keys = batch_keys(batch)
    request = {"photos_of": len(keys), "listings": f"{keys[0]}..{keys[-1]}" if keys else ""}
    try:
        lease.hold(ctx.db, t, p, plan, STAGE)
        with lease.keep_alive(ctx.db, t, sid):
            pipe, listings = _run_batch(ctx, plan, keys, store, processor)
    except Exception as exc:
        record_failure(ctx, plan, "media_batch", exc, request)
        raise
    finally:
        quietly(lease.park, ctx.db, t, plan)
    seconds = time.monotonic() - started
    _record_time(ctx, sid, seconds)
    counts: dict[str, Any] = dict(pipe.counts)
    processed = counts["photos_added"] + counts["photos_failed"]
    counts.update(seconds=round(seconds, 3), photos_per_second=round(processed / seconds, 2) if seconds else 0.0,
                  skipped_listings=len(keys) - len(listings))
    log.info("media %s: %s", batch.get("label", ""), counts)
    return counts


def _run_batch(ctx: SyncContext, plan: dict[str, Any], keys: list[str], store: ObjectStore,
               processor: PhotoProcessor | None) -> tuple[_Batch, dict[str, _Listing]]:
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    with ctx.db.connect() as c:
        infos = load_listings(c, t, p, keys)
        stored = load_stored(c, t, p.provider_id, keys)
        due = set(due_listings(c, t, p.provider_id)) & set(keys)
    listings = {k: _Listing(infos[k], stored.get(k, {})) for k in keys if k in infos
                and not (infos[k].state_sync_id == sid and infos[k].state_matches and k not in due)}
    live = [k for k in listings if not infos[k].deleted]
    own = processor is None
    proc = processor or PhotoProcessor(sizes=p.media.sizes, formats=p.media.formats, quality=p.media.quality)
    pipe = _Batch(ctx, plan, store, proc, listings)
    try:
        if live:
            with ctx.source() as source, counted_requests(ctx, plan, source):
                photos, known = _downloads(source, live, listings)
                pipe.feed(photos, known)
        pipe.finish()
    finally:
        pipe.shutdown()
        if own:
            proc.close()
    return pipe, listings
