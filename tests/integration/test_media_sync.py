"""The media stage end to end: mock MLS (RESO MediaURL and RETS GetObject, real JPEGs, EXIF
orientation, a corrupt photo) -> real sync stages -> variants in S3 over HTTP (moto) -> rows.

One lifecycle test per protocol walks the issue's promises in order, on one small feed:
first run stores every variant, the corrupt photo is one error row, a second run plans and
downloads nothing, a replaced photo replaces exactly its objects and rows, the failed photo is
retried once due, and cleanup after the grace period deletes only removed objects.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from mls_sync import connections, media, sync
from mls_sync.config import Limits, ProviderConfig, find_provider
from mls_sync.imaging import PhotoProcessor
from mls_sync.objectstore import DEFAULT_CACHE_CONTROL, S3Store
from mls_sync.store.tables import tables
from PIL import Image

from tests.integration.s3_server import make_bucket, moto_s3, s3_client

pytestmark = pytest.mark.integration
LISTINGS = 24
PHOTOS = 3
SIZES = {"thumbnail": 320, "medium": 800, "large": 1600}
TYPES = {"webp": ("image/webp", "WEBP"), "jpeg": ("image/jpeg", "JPEG")}


PROVIDERS = [
    pytest.param("demo_reso", id="reso"),
    pytest.param("demo_rets", id="rets"),
]


@pytest.fixture(scope="module")
def endpoint_url() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture(scope="module")
def processor() -> Iterator[PhotoProcessor]:
    """One warm pool for the module (a task makes its own; tests need not pay the start-up each time)."""
    with PhotoProcessor(2, sizes=SIZES) as proc:
        yield proc


@pytest.fixture
def media_db(db: Any) -> Any:
    """The `db` fixture plus the media stage's own table (not in conftest's truncate list)."""
    with db.begin() as c:
        c.execute(sa.delete(tables(db).property_media_sync))
    return db


@pytest.fixture
def store(endpoint_url: str) -> S3Store:
    client = s3_client(endpoint_url)
    return S3Store(client, make_bucket(client), prefix="mls")


def provider_config(name: str, **media_settings: Any) -> ProviderConfig:
    cfg = find_provider(name)
    settings = {"keep_original": True, "batch_listings": 10, **media_settings}
    return cfg.model_copy(update={"media": cfg.media.model_copy(update=settings), "limits": Limits()})


class Harness:
    """The real sync stages against one mock MLS, the way the DAG chains them."""

    def __init__(self, name: str, mls: Any, db: Any, store: S3Store, processor: PhotoProcessor,
                 **media_settings: Any) -> None:
        from devstack import mls_connections

        os.environ.update(mls_connections(mls.url, mls.credentials))
        cfg = provider_config(name, **media_settings)
        self.ctx = sync.SyncContext(provider=cfg, db=db, mls=connections.from_env(cfg.connection_id))
        self.mls, self.store, self.processor = mls, store, processor

    def run(self, **conf: Any) -> dict[str, Any]:
        plan = sync.plan(self.ctx, dag_id="test_media", dag_run_id=uuid.uuid4().hex, conf=conf, trigger="manual")
        sync.fetch(self.ctx, plan)
        sync.transform_load(self.ctx, plan)
        batches = media.plan_batches(self.ctx, plan)
        served = self.mls.counters().get("photos_served", 0)
        results = [media.run_batch(self.ctx, plan, b, self.store, processor=self.processor) for b in batches]
        summary = sync.finalize(self.ctx, plan)
        return {"plan": plan, "batches": batches, "results": results, "summary": summary,
                "served": self.mls.counters().get("photos_served", 0) - served}

    def rows(self, state: str = "stored") -> dict[tuple[str, int], dict[str, Any]]:
        pm = self.ctx.t.property_media
        with self.ctx.db.connect() as c:
            found = c.execute(sa.select(pm).where(pm.c.state == state)).mappings().all()
        return {(r["listing_key"], r["media_order"]): dict(r) for r in found}

    def errors(self) -> list[dict[str, Any]]:
        e = self.ctx.t.mls_sync_errors
        with self.ctx.db.connect() as c:
            return [dict(r) for r in c.execute(sa.select(e).where(e.c.stage == "media")).mappings()]

    def listings(self) -> list[str]:
        pr = self.ctx.t.properties
        with self.ctx.db.connect() as c:
            return sorted(c.execute(sa.select(pr.c.listing_key).where(pr.c.deleted_at.is_(None))).scalars())

    def keys(self) -> set[str]:
        return set(self.store.list(""))


def row_keys(row: dict[str, Any]) -> set[str]:
    keys = {e["key"] for fmts in row["variants"].values() for e in fmts.values()}
    return keys | ({row["original_key"]} if row["original_key"] else set())


def mock_shapes(mls: Any, keys: list[str]) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(listing, order) -> stored pixel width, height and EXIF orientation, from the mock's own table."""
    return {(r[1], r[2]): (r[4], r[5], r[6]) for rows in mls.store.media_for(keys).values() for r in rows}


def replace_photo(mls: Any, listing_key: str, order: int) -> None:
    """A targeted replace (new version, bytes and URL), stamped like the mock's own mutations."""
    from mock_mls.data import MEDIA_INSERT

    now = mls.clock.stamp_ms()
    with mls.store.write_lock:
        conn = mls.store.conn()
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("SELECT Version FROM media WHERE ResourceRecordKey = ? AND MediaOrder = ?",
                               (listing_key, order)).fetchone()[0] + 1
        conn.execute("DELETE FROM media WHERE ResourceRecordKey = ? AND MediaOrder = ?", (listing_key, order))
        conn.execute(MEDIA_INSERT, mls.generator.media_row(listing_key, order, version, now))
        conn.execute("UPDATE listings SET PhotosChangeTimestamp = ?, ModificationTimestamp = ? WHERE ListingKey = ?",
                     (now, now, listing_key))
        conn.execute("COMMIT")


def check_variants(h: Harness, shapes: dict[tuple[str, int], tuple[int, int, int]]) -> None:
    """Every variant: right type and caching headers, decodes to its recorded size, never upscaled,
    oriented as the EXIF said; the original is kept byte for byte."""
    client, bucket = h.store.client, h.store.bucket
    rows = h.rows()
    assert {o for _, o in rows} == set(range(PHOTOS))
    for (listing, order), row in rows.items():
        width, height, orientation = shapes[(listing, order)]
        upright = (height, width) if orientation == 6 else (width, height)
        assert (row["width"], row["height"]) == upright
        assert set(row["variants"]) == set(SIZES)
        for name, box in SIZES.items():
            assert set(row["variants"][name]) == set(TYPES)
            for fmt, entry in row["variants"][name].items():
                head = client.head_object(Bucket=bucket, Key=f"mls/{entry['key']}")
                assert head["ContentType"] == TYPES[fmt][0]
                assert head["CacheControl"] == DEFAULT_CACHE_CONTROL
                assert entry["url"] == h.store.public_url(entry["key"])
                im = Image.open(io.BytesIO(h.store.get(entry["key"])))
                assert im.format == TYPES[fmt][1]
                assert im.size == (entry["width"], entry["height"])
                assert max(im.size) == min(box, max(upright))  # fitted to the box, never upscaled
                assert (im.width > im.height) == (upright[0] > upright[1])  # EXIF 6 comes out portrait
                if fmt == "jpeg" and name == "large":
                    assert im.info.get("progressive") or im.info.get("progression")
                    assert "exif" not in im.info
        original = h.store.get(row["original_key"])
        assert len(original) == row["bytes"]
    assert any(s[2] == 6 for s in shapes.values()), "the feed should hold EXIF-rotated photos"


@pytest.mark.parametrize("name", PROVIDERS)
def test_media_lifecycle(name: str, media_db: Any, mock_mls_factory: Any, store: S3Store,
                         processor: PhotoProcessor) -> None:
    mls = mock_mls_factory(listings=LISTINGS, seed=11, photos_per_listing=PHOTOS)
    h = Harness(name, mls, media_db, store, processor)
    active = [k for k in mls.all_keys() if mls.listing(k)["StandardStatus"] in
              ("Active", "Active Under Contract", "ActiveUnderContract", "Coming Soon", "ComingSoon", "Pending")]
    bad_listing = active[3]
    mls.fault("corrupt_photo", listing_key=bad_listing, order=1)

    # first run: every photo but the corrupt one, one error row for it
    first = h.run(mode="full")
    synced = h.listings()
    assert bad_listing in synced
    assert len(first["batches"]) == -(-len(synced) // 10)
    assert all(b["label"].startswith(f"{name} ") for b in first["batches"])
    errors = h.errors()
    assert [(e["ref"], e["category"], e["resolved_at"]) for e in errors] == [(f"{bad_listing}:1", "data", None)]
    assert "truncated" in errors[0]["message"] or "corrupt" in errors[0]["message"]
    stored = h.rows()
    assert len(stored) == len(synced) * PHOTOS - 1 and (bad_listing, 1) not in stored
    summary = first["summary"]
    assert summary["photos_added"] == len(stored) and summary["photos_failed"] == 1
    assert summary["photo_bytes"] > 0
    assert h.keys() == set().union(*(row_keys(r) for r in stored.values()))
    mls.clear_faults()
    check_variants(h, mock_shapes(mls, synced))

    # second run, nothing changed: no batches, no photo downloaded
    second = h.run(mode="full")  # touches every listing again; none changed
    assert second["batches"] == [] and second["served"] == 0
    assert second["summary"]["photo_bytes"] == 0 and second["summary"]["photos_added"] == 0

    # replace one photo: exactly that photo's objects and rows change
    target = next(k for k in synced if k != bad_listing)
    before_keys = h.keys()
    old = stored[(target, 2)]
    replace_photo(mls, target, 2)
    third = h.run(mode="full")
    assert [b["keys"] for b in third["batches"]] == [[target]]
    assert third["summary"]["photos_added"] == 1 and third["summary"]["photos_removed"] == 1
    now_stored = h.rows()
    assert {k: r["id"] for k, r in now_stored.items() if k != (target, 2)} == \
           {k: r["id"] for k, r in stored.items() if k != (target, 2)}
    new = now_stored[(target, 2)]
    assert new["content_hash"] != old["content_hash"] and new["id"] != old["id"]
    removed = h.rows("removed")
    assert list(removed) == [(target, 2)] and removed[(target, 2)]["removed_at"] is not None
    assert h.keys() == before_keys | row_keys(new)  # old objects stay for the grace period
    if name == "demo_reso":
        assert third["served"] == 1  # only the replaced photo was downloaded

    # the corrupt photo's retry, once due: stored now, its error resolved
    e = h.ctx.t.mls_sync_errors
    with media_db.begin() as c:
        c.execute(e.update().values(next_retry_at=sa.func.now() - sa.text("interval '1 minute'")))
    fourth = h.run(mode="full")
    assert [b["keys"] for b in fourth["batches"]] == [[bad_listing]]
    assert (bad_listing, 1) in h.rows() and fourth["summary"]["photos_added"] == 1
    assert [x["resolution"] for x in h.errors()] == ["succeeded"]

    # cleanup: nothing inside the grace period; after it exactly the replaced photo's objects go
    assert media.cleanup_removed(h.ctx, store)["objects_deleted"] == 0
    later = datetime.now(UTC) + timedelta(hours=h.ctx.provider.media.removal_grace_hours + 1)
    done = media.cleanup_removed(h.ctx, store, now=later)
    assert done == {"rows": 1, "objects_deleted": len(row_keys(old))}
    assert h.keys() == set().union(*(row_keys(r) for r in h.rows().values()))
    assert h.rows("removed")[(target, 2)]["objects_deleted_at"] is not None
    assert media.cleanup_removed(h.ctx, store, now=later) == {"rows": 0, "objects_deleted": 0}


def test_orphan_cleanup_deletes_only_orphans(media_db: Any, mock_mls_factory: Any, store: S3Store,
                                            processor: PhotoProcessor) -> None:
    mls = mock_mls_factory(listings=8, seed=5, photos_per_listing=2)
    h = Harness("demo_reso", mls, media_db, store, processor, keep_original=False)
    h.run(mode="full")
    owned = h.keys()
    assert owned
    some = sorted(owned)[0]
    folder = some.rsplit("/", 1)[0]
    strays = {f"{folder}/huge.webp",  # a variant no longer configured, next to live ones
              "listings/demo_reso/GONE-1/0-0123456789abcdef/large.jpg",  # a listing no row knows
              "listings/demo_rets/X/1-fedcba9876543210/thumbnail.webp"}  # another provider's orphan
    outside = "exports/listings.csv"  # not under the media prefix: never ours to delete
    for key in (*strays, outside):
        store.put(key, b"x", "application/octet-stream")
    prefix = h.ctx.provider.media.prefix
    assert set(media.find_orphans(media_db, store, "demo_reso", prefix)) == strays - {
        "listings/demo_rets/X/1-fedcba9876543210/thumbnail.webp"}
    assert set(media.find_orphans(media_db, store, None, prefix)) == strays

    dry = media.delete_orphans(media_db, store, None, prefix)
    assert dry["dry_run"] and dry["orphans"] == 3 and dry["deleted"] == 0
    assert h.keys() == owned | strays | {outside}

    done = media.delete_orphans(media_db, store, None, prefix, dry_run=False)
    assert done["deleted"] == 3
    assert h.keys() == owned | {outside}
    with pytest.raises(ValueError, match="prefix"):
        media.find_orphans(media_db, store, None, "")


def test_dry_run_and_no_photos_plan_nothing(media_db: Any, mock_mls_factory: Any, store: S3Store,
                                            processor: PhotoProcessor) -> None:
    mls = mock_mls_factory(listings=10, seed=3, photos_per_listing=2)
    h = Harness("demo_reso", mls, media_db, store, processor)
    dry = h.run(mode="full", dry_run=True)
    assert dry["batches"] == [] and dry["served"] == 0 and h.keys() == set()
    h_ = h.ctx.t.mls_sync_history
    with media_db.connect() as c:
        report = c.execute(sa.select(h_.c.report).where(h_.c.id == dry["plan"]["sync_id"])).scalar_one()
    estimate = report["media_dry_run"]
    assert estimate["listings"] == dry["summary"]["added"] > 0
    assert estimate["photos"] == 2 * estimate["listings"]
    off = h.run(mode="full", include_photos=False)
    assert off["batches"] == [] and off["served"] == 0 and h.keys() == set()
