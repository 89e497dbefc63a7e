"""The RESO client against the mock's vendor profiles over HTTP: integer keys, OData's own `$top`,
OData 4.0 without `in`, vendor `$metadata` (no namespace, set `Properties` of type `PropertyResi`),
enum members spelt `Active_Under_Contract` or `b__<hex>`, `$count`, one 429 with Retry-After.

Each profile is synced by the engine's stages (plan, fetch, transform_load, reconcile, finalize)
into a real PostgreSQL, fully and then incrementally, and must store every record exactly once.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from mls_sync import sync
from mls_sync.columns import STANDARD_STATUSES
from mls_sync.config import ProviderConfig, find_provider
from mls_sync.connections import Connection
from mls_sync.limits import RateLimiter
from mls_sync.sources.base import QueryError, SearchCriteria
from mls_sync.sources.reso import ResoSource
from mls_sync.store.metadata_cache import DbMetadataCache
from mls_sync.store.tables import tables

from mock_mls import MockMLS
from mock_mls.control import RESO_PROFILES
from tests.integration.mock_fixtures import mock_mls_fixtures

pytestmark = pytest.mark.integration
LISTINGS = 1200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT_KEYS = {name for name, p in RESO_PROFILES.items() if p.get("reso_key") == "int"}


mls, _clean = mock_mls_fixtures(listings=LISTINGS, seed=11, photos_per_listing=1, control=True)


def provider(profile: str, **reso: Any) -> ProviderConfig:
    """demo_reso, keyed by ListingKeyNumeric where the profile keys by it, with `reso` settings."""
    data = find_provider("demo_reso").model_dump(by_alias=True)
    if profile in INT_KEYS:
        data["source_fields"]["key"] = "ListingKeyNumeric"
        data["fields"] = {"ListingKeyNumeric": {"column": "listing_key", "required": True},
                          **{k: v for k, v in data["fields"].items() if k != "ListingKey"}}
    data["reso"].update({"page_size": 250, **reso})
    return ProviderConfig.model_validate(data)


def connection(mls: MockMLS) -> Connection:
    cred = mls.credentials
    return Connection("mls_demo_reso", host=mls.reso_url, login=cred["client_id"], password=cred["client_secret"],
                      extra={"token_url": mls.token_url})


def source(mls: MockMLS, profile: str, **reso: Any) -> ResoSource:
    cfg = provider(profile, **reso)
    return ResoSource(cfg, connection(mls), RateLimiter(cfg.limits.budget()))


def key_of(mls: MockMLS, profile: str) -> dict[str, str]:
    """ListingKey -> the key this profile serves (ListingKeyNumeric as text where it keys by it)."""
    numbers = mls.key_numbers() if profile in INT_KEYS else {}
    return {k: str(numbers[k]) if numbers else k for k in mls.all_keys()}


def served_keys(mls: MockMLS, profile: str, statuses: tuple[str, ...] | None = None) -> set[str]:
    keys = key_of(mls, profile)
    return {v for k, v in keys.items() if statuses is None or mls.listing(k)["StandardStatus"] in statuses}


# ---- the client against each behaviour -----------------------------------------------------------
def test_integer_keys_are_written_bare_everywhere(mls: MockMLS) -> None:
    """Edm.Int64 ListingKeyNumeric: the keyset walk, a partial sync's key list and the media
    lookup (by ResourceRecordKeyNumeric) all send bare integers; a string literal is a 400."""
    mls.configure(reso_profile="numeric-keys")
    src = source(mls, "numeric-keys", page_size=150)
    keys = [str(r["ListingKeyNumeric"]) for p in src.pages(SearchCriteria()) for r in p.records]
    assert len(keys) == len(set(keys)) == LISTINGS and set(keys) == served_keys(mls, "numeric-keys")
    assert src.stats["pages"] > LISTINGS // 200  # pages of at most the server's 200
    wanted = sorted(keys)[:5]
    got = [str(r["ListingKeyNumeric"]) for p in src.pages(SearchCriteria(listing_keys=tuple(wanted)))
           for r in p.records]
    assert sorted(got) == wanted
    for expand in (True, False):
        refs = list(source(mls, "numeric-keys", expand_media=expand).media_refs(wanted[:2]))
        assert sorted({r.listing_key for r in refs}) == wanted[:2] and len(refs) == 2
    # what the client sent before: the key as a string literal, refused by a type-checking server
    wrong = source(mls, "numeric-keys", field_types={"ListingKeyNumeric": "Edm.String"}, odata_version="4.01")
    with pytest.raises(QueryError, match=r"page: HTTP 400: Invalid literal .*'\d+'.* for a int property"):
        list(wrong.pages(SearchCriteria(listing_keys=tuple(wanted))))


def test_metadata_that_lies_about_the_key_is_fixed_by_the_yaml(mls: MockMLS) -> None:
    mls.configure(reso_profile="numeric-keys", reso_metadata_key_type="Edm.String", reso_throttle_once=None)
    with pytest.raises(QueryError, match="400"):
        list(itertools.islice(source(mls, "numeric-keys", page_size=150).pages(SearchCriteria()), 3))
    fixed = source(mls, "numeric-keys", page_size=150, field_types={"ListingKeyNumeric": "Edm.Int64"})
    keys = [r["ListingKeyNumeric"] for p in fixed.pages(SearchCriteria()) for r in p.records]
    assert len(keys) == len(set(keys)) == LISTINGS


def test_nextlink_asks_the_page_size_with_prefer_not_top(mls: MockMLS) -> None:
    """Under OData, $top limits the whole result: a nextLink walk that sent $top=page_size read
    one page's worth and stopped. Prefer: odata.maxpagesize pages through everything; $top as a
    page size only where the YAML says this vendor reads it so, and then $count exposes it."""
    mls.configure(reso_profile="numeric-keys", reso_throttle_once=None)
    src = source(mls, "numeric-keys", paging="nextlink", page_size=100)
    pages = list(src.pages(SearchCriteria()))
    assert sum(len(p.records) for p in pages) == LISTINGS and len(pages) == LISTINGS // 100
    assert src.expected_count(SearchCriteria(), pages[-1].cursor) == LISTINGS
    cut_short = source(mls, "numeric-keys", paging="nextlink", page_size=100, top_is_page_size=True)
    pages = list(cut_short.pages(SearchCriteria()))
    assert sum(len(p.records) for p in pages) == 100  # what a spec-conformant server does with $top
    assert cut_short.expected_count(SearchCriteria(), pages[-1].cursor) == LISTINGS
    # a vendor that does read $top as a page size (the textbook profile) pages on with it
    mls.configure(reso_profile="textbook")
    lenient = source(mls, "textbook", paging="nextlink", page_size=100, top_is_page_size=True)
    assert sum(len(p.records) for p in lenient.pages(SearchCriteria())) == LISTINGS


def test_odata_4_0_gets_or_chains_and_qualified_enum_members(mls: MockMLS) -> None:
    """`in` is a 400 there: key lists go as bounded `or` chains (several requests when long),
    statuses as `Vendor.Data.StandardStatus'Active_Under_Contract'`, read back as their meaning."""
    mls.configure(reso_profile="odata-4.0", reso_throttle_once=None)
    src = source(mls, "odata-4.0")
    wanted = sorted(mls.all_keys())[:150]
    before = mls.counters()["requests"].get("reso:Properties", 0)
    got = [r["ListingKey"] for p in src.pages(SearchCriteria(listing_keys=tuple(wanted))) for r in p.records]
    assert sorted(got) == wanted
    assert mls.counters()["requests"]["reso:Properties"] - before >= 4  # 150 keys, URLs kept short
    statuses = ("ActiveUnderContract", "ComingSoon")
    recs = [r for p in src.pages(SearchCriteria(statuses=statuses)) for r in p.records]
    assert {r["StandardStatus"] for r in recs} == {"Active Under Contract", "Coming Soon"}
    assert {r["ListingKey"] for r in recs} == served_keys(mls, "odata-4.0", statuses)
    refs = list(source(mls, "odata-4.0", expand_media=False).media_refs(wanted[:3]))
    assert [r.listing_key for r in refs] == wanted[:3]


def test_a_server_that_answers_400_to_in_is_probed_once(mls: MockMLS, db: Any) -> None:
    """$metadata says 4.01 but the server refuses `in`: one probe finds out, and the answer is
    kept with the provider's metadata, so the next source does not ask again."""
    mls.configure(reso_profile="odata-4.0", reso_metadata_version="4.01", reso_throttle_once=None)
    cache = DbMetadataCache(db, tables(db), "demo_reso")
    src = source(mls, "odata-4.0")
    src.metadata_cache = cache
    wanted = tuple(sorted(mls.all_keys())[:3])
    assert sorted(r["ListingKey"] for p in src.pages(SearchCriteria(listing_keys=wanted)) for r in p.records) == \
        list(wanted)
    again = source(mls, "odata-4.0")
    again.metadata_cache = cache
    mls.reset_counters()
    assert sorted(r["ListingKey"] for p in again.pages(SearchCriteria(listing_keys=wanted)) for r in p.records) == \
        list(wanted)
    assert mls.counters()["requests"] == {"reso:token": 1, "reso:Properties": 1}  # no $metadata, no probe


def test_encoded_enum_members_and_vendor_names(mls: MockMLS) -> None:
    mls.configure(reso_profile="encoded-enums", reso_throttle_once=None)
    src = source(mls, "encoded-enums")
    recs = [r for p in src.pages(SearchCriteria(statuses=("Active", "Pending"))) for r in p.records]
    assert {r["StandardStatus"] for r in recs} == {"Active", "Pending"}
    assert {str(r["ListingKeyNumeric"]) for r in recs} == served_keys(mls, "encoded-enums", ("Active", "Pending"))
    meta = src.metadata()
    assert meta["resource"]["entity_set"] == "Properties" and meta["resource"]["key"] == ["ListingKeyNumeric"]
    assert meta["enums"]["Vendor.Data.StandardStatus"]["b__416374697665"] == "Active"


def test_one_429_is_waited_out(mls: MockMLS) -> None:
    mls.configure(reso_profile="numeric-keys")
    slept: list[float] = []
    cfg = provider("numeric-keys", page_size=150)
    src = ResoSource(cfg, connection(mls), RateLimiter(cfg.limits.budget()), sleep=slept.append)
    assert sum(len(p.records) for p in src.pages(SearchCriteria())) == LISTINGS
    assert src.stats["rate_limited"] == 1 and slept == [1.0]  # Retry-After: 1
    assert mls.counters()["faults_injected"] == {"too_many_requests": 1}


def test_a_server_without_count_cannot_check_and_says_so(mls: MockMLS, caplog: pytest.LogCaptureFixture) -> None:
    mls.configure(reso_count=False)
    src = source(mls, "textbook")
    pages = list(src.pages(SearchCriteria()))
    assert src.expected_count(SearchCriteria(), pages[-1].cursor) is None
    assert "ignores $count=true" in caplog.text


# ---- the engine, profile by profile ----------------------------------------------------------------
def _stored(db: Any) -> list[tuple[str, str]]:
    with db.connect() as c:
        return [tuple(r) for r in c.execute(sa.text("SELECT listing_key, status FROM properties "
                                                     "WHERE provider_id = 'demo_reso' AND deleted_at IS NULL"))]


def _run(db: Any, sid: int) -> dict[str, Any]:
    with db.connect() as c:
        return dict(c.execute(sa.text("SELECT * FROM mls_sync_history WHERE id = :s"), {"s": sid}).mappings().one())


def _raw_keys(db: Any, sid: int) -> list[str]:
    with db.connect() as c:
        return list(c.execute(sa.text("SELECT listing_key FROM mls_raw_records WHERE sync_id = :s"), {"s": sid})
                    .scalars())


def _sync(ctx: sync.SyncContext, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DAG's record stages in its order; a failed fetch is finalized as failed and re-raised."""
    plan = sync.plan(ctx, dag_id="t", dag_run_id=run_id, conf={"include_photos": False})
    try:
        sync.fetch(ctx, plan)
    except sync.IncompleteRead:
        sync.finalize(ctx, plan, ["fetch"])
        raise
    sync.transform_load(ctx, plan)
    sync.reconcile(ctx, plan)
    return plan, sync.finalize(ctx, plan)


def _ms(iso: str) -> int:
    """An ISO timestamp as the mock stores it (UTC ms), cut as a Precision="3" literal is."""
    return (datetime.fromisoformat(iso) - EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize("profile", list(RESO_PROFILES))
def test_full_and_incremental_sync_store_every_record_once(profile: str, mls: MockMLS, db: Any) -> None:
    mls.configure(reso_profile=profile)
    cfg = provider(profile)
    ctx = sync.SyncContext(provider=cfg, db=db, mls=connection(mls))
    plan, result = _sync(ctx, f"{profile}-full")
    expected = served_keys(mls, profile, cfg.full_sync_statuses)
    stored = _stored(db)
    assert result["state"] == "success"
    assert sorted(k for k, _ in stored) == sorted(expected)  # each record once, none missing
    assert {s for _, s in stored} <= set(cfg.full_sync_statuses) <= set(STANDARD_STATUSES)
    verified = _run(db, plan["sync_id"])["stage_state"]["read_verified"]
    assert verified == {"server_count": len(expected), "distinct_keys": len(expected)}
    if profile != "textbook":
        assert mls.counters()["faults_injected"] == {"too_many_requests": 1}

    changed = mls.mutate(price=6, status=6, new=3, remove=2, touch=4)
    plan, result = _sync(ctx, f"{profile}-incremental")
    assert plan["mode"] == "incremental" and result["state"] == "success"
    in_window = mls.store.query("SELECT ListingKey FROM listings WHERE InFeed = 1 AND ModificationTimestamp >= ?",
                                [_ms(plan["since"])]).fetchall()
    keys = key_of(mls, profile)
    window = {keys[k] for (k,) in in_window}
    present = {keys[k] for kind, ks in changed.items() if kind != "remove" for k in ks}
    raw = _raw_keys(db, plan["sync_id"])
    assert len(raw) == len(set(raw)) and set(raw) == window and present <= window
    assert _run(db, plan["sync_id"])["stage_state"]["read_verified"] == {
        "server_count": len(window), "distinct_keys": len(window)}
    now = dict(_stored(db))
    for key in changed["status"] + changed["new"]:
        assert now[keys[key]] == mls.listing(key)["StandardStatus"]
    with db.connect() as c:
        assert c.execute(sa.text("SELECT count(*) = count(DISTINCT listing_key) FROM properties")).scalar()


def test_a_nextlink_walk_cut_short_fails_and_keeps_the_watermark(mls: MockMLS, db: Any) -> None:
    """A YAML that says $top is a page size, against a server that reads it as OData does: the
    chain ends after one page, the fetch fails naming both numbers, the watermark stays."""
    mls.configure(reso_profile="numeric-keys", reso_throttle_once=None)
    good = sync.SyncContext(provider=provider("numeric-keys", paging="nextlink"), db=db, mls=connection(mls))
    _, result = _sync(good, "nextlink-full")
    assert result["state"] == "success"
    with db.connect() as c:
        watermark = c.execute(sa.text("SELECT watermark FROM mls_sync_status WHERE provider_id = 'demo_reso'")
                              ).scalar()
    assert watermark is not None
    mls.mutate(price=20, touch=40)
    wrong = sync.SyncContext(provider=provider("numeric-keys", paging="nextlink", page_size=25,
                                               top_is_page_size=True), db=db, mls=connection(mls))
    with pytest.raises(sync.IncompleteRead, match=r"read 25 distinct listings but the server counts (\d+)") as err:
        _sync(wrong, "nextlink-cut-short")
    assert int(err.value.args[0].split("counts ")[1].split()[0]) >= 60
    with db.connect() as c:
        row = c.execute(sa.text("SELECT s.watermark, h.state FROM mls_sync_status s JOIN mls_sync_history h "
                                "ON h.provider_id = s.provider_id WHERE h.dag_run_id = 'nextlink-cut-short'")).one()
    assert row.watermark == watermark and row.state == "failed"


def test_a_fetch_resumed_after_a_finished_key_chunk_reads_the_next_one(mls: MockMLS, db: Any) -> None:
    """A RESO cursor's `done` is one key chunk's: a partial sync of 150 keys (two `in` chunks)
    killed after the first chunk landed must resume with the second, not call the fetch done."""
    ctx = sync.SyncContext(provider=provider("textbook"), db=db, mls=connection(mls))
    keys = sorted(mls.all_keys())[:150]
    plan = sync.plan(ctx, dag_id="t", dag_run_id="chunks", conf={"include_photos": False, "listing_keys": keys})
    with ctx.source() as src:
        first = next(iter(src.pages(sync.criteria_for(ctx.provider, plan))))
    assert first.cursor["chunk"] == 0 and first.cursor["done"] is True and len(first.records) == 100
    sync._land_page(ctx, plan, first.records, first.cursor, first.number, {"pages": 0, "records": 0, "keyless": 0})
    out = sync.fetch(ctx, plan)  # the retried task
    assert out["resumed"] is True
    assert sorted(_raw_keys(db, plan["sync_id"])) == keys
