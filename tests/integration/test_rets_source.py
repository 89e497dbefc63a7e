"""RetsSource against the mock MLS over HTTP: full walks under row caps, Offset quirks, expiring
sessions, 429/503 bursts, photos (multipart and Location=1), resuming from a cursor."""

from __future__ import annotations

import io
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mls_sync.config import find_provider
from mls_sync.connections import from_mapping
from mls_sync.limits import Budget, RateLimiter
from mls_sync.sources.base import AuthError, SearchCriteria
from mls_sync.sources.rets import RetsSource
from PIL import Image

pytestmark = pytest.mark.integration


def source(mls: Any, *, sleep: bool = False, password: str | None = None, extra: dict[str, Any] | None = None,
           **rets: Any) -> RetsSource:
    c = mls.credentials
    conn = from_mapping("mls_demo_rets", {
        "host": mls.rets_login_url, "login": c["username"], "password": password or c["password"],
        "extra": {"user_agent": c["user_agent"], "ua_password": c["ua_password"], **(extra or {})}})
    provider = find_provider("demo_rets")
    if rets:
        provider = provider.model_copy(update={"rets": provider.rets.model_copy(update=rets)})
    kw = {} if sleep else {"sleep": lambda s: None}
    return RetsSource.from_config(provider, conn, RateLimiter(Budget()), **kw)


def walk_keys(src: RetsSource, criteria: SearchCriteria | None = None) -> list[str]:
    return [r["LIST_1"] for p in src.pages(criteria or SearchCriteria()) for r in p.records]


@pytest.fixture(scope="module")
def big_mls():
    from mock_mls import MockMLS

    with MockMLS(listings=10_000, seed=7, photos_per_listing=3, control=True) as mls:
        yield mls


@pytest.mark.slow
@pytest.mark.parametrize("offset_mode", ["honour", "ignore", "reject"])
def test_full_walk_of_10k_with_row_cap_yields_every_key_once(big_mls: Any, offset_mode: str) -> None:
    big_mls.configure(row_cap=2500, offset_mode=offset_mode)
    src = source(big_mls)
    tracemalloc.start()
    started = time.perf_counter()
    keys = walk_keys(src)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    src.close()
    assert len(keys) == len(set(keys)) == 10_000
    assert set(keys) == set(big_mls.all_keys())
    print(f"\n10k walk offset={offset_mode}: {seconds:.2f}s, peak traced memory {peak / 2**20:.1f} MiB, "
          f"{src.stats['requests'].get('Search')} searches, {src.stats['bytes'] / 2**20:.1f} MiB")


@pytest.mark.parametrize("offset_mode", ["honour", "ignore", "reject"])
def test_a_server_without_count_or_maxrows_capping_below_limit_is_walked_to_the_end(
        mock_mls_factory: Any, offset_mode: str) -> None:
    """Limit 2,500 against a server that sends 40 rows a reply, no COUNT and no MAXROWS: by
    Offset, the walk asks the next one after each reply as long as the widest; by time windows
    (Offset ignored or refused), a window reply that long is split. Every listing is read (the
    walk used to end after the first 40, as a success)."""
    mls = mock_mls_factory(listings=130, seed=8, photos_per_listing=1)
    mls.configure(row_cap=40, rets_count=False, rets_maxrows=False, offset_mode=offset_mode)
    src = source(mls)
    keys = walk_keys(src)
    src.close()
    assert sorted(set(keys)) == sorted(mls.all_keys())
    if offset_mode == "honour":
        assert len(keys) == 130 and src.stats["requests"].get("Search") == 4  # 40, 40, 40, then 10: the end


def test_compact_decodes_like_compact_decoded(big_mls: Any) -> None:
    big_mls.configure(row_cap=2500, offset_mode="honour")
    keys = tuple(big_mls.all_keys()[:30])
    decoded = {r["LIST_1"]: r for p in source(big_mls).pages(SearchCriteria(listing_keys=keys)) for r in p.records}
    raw = {r["LIST_1"]: r for p in source(big_mls, format="COMPACT").pages(SearchCriteria(listing_keys=keys))
           for r in p.records}
    assert decoded == raw and len(decoded) == 30


def test_status_and_since_filters(big_mls: Any) -> None:
    big_mls.configure(row_cap=2500, offset_mode="honour")
    src = source(big_mls)
    feed = [big_mls.listing(k) for k in big_mls.all_keys()]
    active = [r for p in src.pages(SearchCriteria(statuses=("Active", "Pending"))) for r in p.records]
    assert {r["LIST_15"] for r in active} == {"Active", "Pending"}
    # every listing with those statuses, once: not merely rows that match
    assert sorted(r["LIST_1"] for r in active) == sorted(
        x["ListingKey"] for x in feed if x["StandardStatus"] in ("Active", "Pending"))
    since = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    recent = [r for p in src.pages(SearchCriteria(modified_since=since)) for r in p.records]
    local = (since - timedelta(hours=5)).replace(tzinfo=None)  # the mock's TimeZoneOffset is -05:00
    assert all(datetime.fromisoformat(r["LIST_87"]) >= local for r in recent)
    expected = sorted(x["ListingKey"] for x in feed
                      if datetime.fromisoformat(x["ModificationTimestamp"].replace("Z", "+00:00")) >= since)
    assert 0 < len(expected) < len(feed) and sorted(r["LIST_1"] for r in recent) == expected


@pytest.mark.parametrize("offset_mode", ["honour", "ignore"])
def test_resume_from_cursor_after_a_failed_task(big_mls: Any, offset_mode: str) -> None:
    big_mls.configure(row_cap=2500, offset_mode=offset_mode)
    since = datetime(2024, 1, 1, tzinfo=UTC)
    first, cursor = [], None
    for page in source(big_mls).pages(SearchCriteria(modified_since=since)):
        first += [r["LIST_1"] for r in page.records]
        cursor = page.cursor
        if page.number == 3:
            break  # the task dies here; its checkpoint is `cursor`
    assert cursor and not cursor.get("done")
    rest = [
        r["LIST_1"] for p in source(big_mls).pages(SearchCriteria(modified_since=since), resume_from=cursor)
        for r in p.records]
    everything = set(walk_keys(source(big_mls), SearchCriteria(modified_since=since)))
    assert set(first) | set(rest) == everything
    assert len(rest) < len(everything)  # it did not start over


@pytest.mark.parametrize("reply", ["20037", "401"])
def test_session_expiring_mid_walk(mock_mls_factory: Any, reply: str) -> None:
    mls = mock_mls_factory(listings=3000, seed=3, photos_per_listing=1)
    mls.configure(row_cap=500, offset_mode="honour", expired_session_reply=reply)
    mls.fault("session_expire_after_searches", n=2)
    src = source(mls)
    keys = walk_keys(src)
    assert len(keys) == len(set(keys)) == 3000
    assert src.stats["relogins"] == 1


def test_idle_session_expiry_and_ua_auth_and_basic(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=600, seed=5, photos_per_listing=1)
    mls.configure(row_cap=250, require_ua_auth=True, auth="basic")
    src = source(mls)
    assert len(set(walk_keys(src))) == 600
    mls.expire_sessions()
    assert len(set(walk_keys(src))) == 600
    assert src.stats["relogins"] == 1


def test_503_and_429_bursts_are_retried(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=1500, seed=4, photos_per_listing=1)
    mls.configure(row_cap=500)
    src = source(mls)
    src.check()
    mls.fault("http_error", status=503, count=2)
    mls.fault("too_many_requests", count=1, retry_after=0)
    mls.fault("rets_error", code=20050, count=1, transaction="search")
    keys = walk_keys(src)  # 4 failures in a row: the 5th attempt (the YAML's default) gets through
    assert len(set(keys)) == 1500 and src.stats["retries"] == 4


def test_broken_bodies_are_retried(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=1200, seed=8, photos_per_listing=1)
    mls.configure(row_cap=400)
    src = source(mls)
    src.check()
    for n, kind in enumerate(("truncated_body", "reset_mid_body", "malformed_xml"), start=1):
        mls.fault(kind, count=1, path="/rets/search")
        keys = walk_keys(src)
        assert sorted(keys) == sorted(set(mls.all_keys())), kind
        assert src.stats["retries"] == n, kind


def test_bad_password_is_auth_error(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=50, seed=1, photos_per_listing=1)
    src = source(mls, password="not-the-password")
    with pytest.raises(AuthError) as info:
        src.check()
    assert "not-the-password" not in str(info.value) and "not-the-password" not in repr(src)


@pytest.mark.parametrize("location", [False, True])
def test_photos_multipart_and_location(mock_mls_factory: Any, location: bool) -> None:
    mls = mock_mls_factory(listings=60, seed=2, photos_per_listing=3)
    keys = mls.active_keys()[:5]
    src = source(mls, photo_location=location, photos_per_request=2)
    photos = list(src.photos(keys))
    assert len(photos) == 15
    by_key: dict[str, list[int]] = {}
    for p in photos:
        by_key.setdefault(p.listing_key, []).append(p.order)
        assert p.error is None and p.data
        with Image.open(io.BytesIO(p.data)) as im:
            im.load()
        assert (p.url is not None) is location
    assert all(sorted(v) == [0, 1, 2] for v in by_key.values()) and set(by_key) == set(keys)
    assert src.stats["requests"]["GetObject"] == 3
    if location:
        assert src.stats["requests"]["Download"] == 15


def test_photo_error_part_is_reported_not_raised(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=30, seed=2, photos_per_listing=3)
    key = mls.active_keys()[0]
    mls.fault("error_part", listing_key=key, order=1, code=20409)
    photos = list(source(mls).photos([key]))
    assert [(p.order, p.error is None) for p in photos] == [(0, True), (1, False), (2, True)]
    assert "20409" in photos[1].error


def test_metadata_is_kept_between_runs_per_announced_version(mock_mls_factory: Any, db: Any) -> None:
    """A second source (the next run) reads TABLE/LOOKUP_TYPE/SYSTEM from the store instead of the
    server; when the login announces another MetadataVersion it asks the server again and drops
    the old version's entries."""
    import sqlalchemy as sa
    from mls_sync.store.metadata_cache import DbMetadataCache
    from mls_sync.store.tables import tables

    mls = mock_mls_factory(listings=30, seed=3)
    t = tables(db)
    criteria = SearchCriteria(statuses=("Active",))

    def run(version: str | None = None) -> tuple[list[str], int]:
        mls.reset_counters()
        src = source(mls)
        src.metadata_cache = DbMetadataCache(db, t, "demo_rets")
        if version:
            src.session.login()
            src.session.login_info.info["MetadataVersion"] = version
        keys = walk_keys(src, criteria)
        src.close()
        return keys, mls.counters()["requests"].get("rets:getmetadata", 0)

    first, asked_first = run()
    again, asked_again = run()
    assert asked_first >= 2 and asked_again == 0
    assert again == first and first  # the cached lookups put the same status codes in the DMQL
    _, asked_new = run(version="99.0.0")
    assert asked_new == asked_first
    with db.connect() as c:
        stored = list(c.execute(sa.text("SELECT cache_key FROM mls_metadata_cache")).scalars())
    assert stored and all("|99.0.0@" in k for k in stored)
