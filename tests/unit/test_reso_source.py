"""ResoSource against an in-process fake: paging, cursors, tokens, errors, deletions, media."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from mls_sync.limits import Budget
from mls_sync.sources.base import AuthError, QueryError, RateLimitError, SearchCriteria, ServerError
from mls_sync.sources.reso import DELETED, ResoSource
from mls_sync.sources.reso.media import MediaDownloader

from tests.unit.test_reso_fake import ROOT, SECRET, TOKEN_URL, FakeReso, listing, make_source

CLUSTER_TS = "2024-03-01T10:00:00Z"


@pytest.fixture
def fake() -> Iterator[FakeReso]:
    """25 listings: 5 early, a 15-record cluster sharing one timestamp, 5 late."""
    recs = [listing(i, f"2024-02-0{i + 1}T00:00:00Z") for i in range(5)]
    recs += [listing(i, CLUSTER_TS) for i in range(5, 20)]
    recs += [listing(i, f"2024-04-0{i - 19}T00:00:00.1234567Z") for i in range(20, 25)]
    server = FakeReso(records=recs)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        server.install(rsps)
        yield server


def keys_of(pages: list) -> list[str]:
    return [r["ListingKey"] for p in pages for r in p.records]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_keyset_walk_returns_each_record_once_across_a_cluster(fake: FakeReso) -> None:
    src = make_source(page_size=4)
    pages = list(src.pages(SearchCriteria()))
    assert keys_of(pages) == [f"K{i:05d}" for i in range(25)]
    assert [p.number for p in pages] == list(range(1, 8))
    last = pages[-1].cursor
    assert last["mode"] == "keyset" and last["done"] is True and last["key"] == "K00024"
    assert last["modified"] == "2024-04-05T00:00:00.1234567Z"
    q = query_of(fake.page_requests()[1])
    assert q["$orderby"] == "ModificationTimestamp,ListingKey" and q["$top"] == "4"
    assert "ListingKey gt 'K00003'" in q["$filter"]
    # the walk is bounded by the newest timestamp there was when it began
    assert q["$filter"].startswith("(ModificationTimestamp le 2024-04-05T00:00:00.1234567Z) and ")
    assert last["cut"] == "2024-04-05T00:00:00.1234567Z"
    # 7 pages + token + $metadata + the newest-timestamp probe
    assert src.stats["pages"] == 7 and src.stats["requests"] == 10


def test_resume_from_cursor_continues_after_the_page(fake: FakeReso) -> None:
    src = make_source(page_size=4)
    walk = src.pages(SearchCriteria())
    first = [next(walk), next(walk), next(walk)]  # ends inside the cluster
    assert first[-1].cursor["modified"] == CLUSTER_TS
    rest = list(make_source(page_size=4).pages(SearchCriteria(), resume_from=first[-1].cursor))
    assert keys_of(first) + keys_of(rest) == [f"K{i:05d}" for i in range(25)]
    assert rest[0].number == 4
    # a finished walk resumes to nothing
    assert list(make_source(page_size=4).pages(SearchCriteria(), resume_from=rest[-1].cursor)) == []


def test_nextlink_paging_and_resume(fake: FakeReso) -> None:
    fake.nextlink = True
    src = make_source(page_size=10, paging="nextlink")
    pages = list(src.pages(SearchCriteria()))
    assert keys_of(pages) == [f"K{i:05d}" for i in range(25)]
    assert pages[0].cursor["next"].startswith(ROOT) and pages[-1].cursor["done"] is True
    rest = list(make_source(page_size=10, paging="nextlink").pages(SearchCriteria(), resume_from=pages[0].cursor))
    assert keys_of(rest) == [f"K{i:05d}" for i in range(10, 25)]
    with pytest.raises(QueryError, match="paging"):
        next(make_source(page_size=10).pages(SearchCriteria(), resume_from=pages[0].cursor))


def test_nextlink_to_another_host_is_refused(fake: FakeReso) -> None:
    fake.queue.append((200, {"value": [listing(1, CLUSTER_TS)],
                             "@odata.nextLink": "http://evil.test/steal"}, {}))
    with pytest.raises(ServerError, match="another host"):
        list(make_source(paging="nextlink").pages(SearchCriteria()))


def test_prefer_header_instead_of_top(fake: FakeReso) -> None:
    list(make_source(page_size=10, max_page_size_header=True).pages(SearchCriteria()))
    assert "$top" not in query_of(fake.page_requests()[0])
    assert fake.headers_seen[-1]["Prefer"] == "odata.maxpagesize=10"


def test_listing_keys_are_chunked_and_cursor_has_the_chunk(fake: FakeReso, monkeypatch: pytest.MonkeyPatch) -> None:
    from mls_sync.sources.reso import odata

    monkeypatch.setattr(odata, "KEY_CHUNK", 3)
    wanted = ("K00007", "K00001", "K00020", "K00003", "K00009")
    pages = list(make_source().pages(SearchCriteria(listing_keys=wanted, select=("ListPrice",))))
    assert sorted(keys_of(pages)) == sorted(wanted)
    assert [p.cursor["chunk"] for p in pages] == [0, 1]
    sel = query_of(fake.page_requests()[0])["$select"].split(",")
    assert sel == ["ListPrice", "ListingKey", "ModificationTimestamp", "StandardStatus", "MlgCanView"]


def test_deletion_markers(fake: FakeReso) -> None:
    fake.records[1]["MlgCanView"] = False
    fake.records[2]["StandardStatus"] = "Delete"
    recs = [r for p in make_source().pages(SearchCriteria()) for r in p.records]
    assert [r["ListingKey"] for r in recs if r.get(DELETED)] == ["K00001", "K00002"]
    assert len(recs) == 25
    keys = list(make_source().keys())
    assert len(keys) == 23 and "K00001" not in keys and keys == sorted(keys)
    # without mlg_can_view only StandardStatus Delete counts
    recs = [r for p in make_source(mlg_can_view=False).pages(SearchCriteria()) for r in p.records]
    assert [r["ListingKey"] for r in recs if r.get(DELETED)] == ["K00002"]


def test_token_is_cached_and_refreshed_once_on_401(fake: FakeReso) -> None:
    src = make_source(page_size=5)
    walk = src.pages(SearchCriteria())
    next(walk)
    next(walk)
    assert fake.tokens_issued == 1
    fake.expire_tokens()
    rest = list(walk)
    assert len(keys_of(rest)) == 15
    assert fake.tokens_issued == 2 and src.stats["token_refreshes"] == 2


def test_token_renewed_before_expiry() -> None:
    now = [1000.0]
    from mls_sync.sources.reso.http import TokenSource

    t = TokenSource(token_url=TOKEN_URL, clock=lambda: now[0])
    t.store("abc-token", 300)
    now[0] += 260
    assert t.current() == "abc-token"
    now[0] += 15  # within 10% of the lifetime: renew early
    assert t.current() is None


def test_auth_failure_after_refresh_is_auth_error(fake: FakeReso) -> None:
    fake.queue.extend([(401, {"error": {"code": "401", "message": "nope"}}, {})] * 3)
    with pytest.raises(AuthError, match="nope"):
        list(make_source().pages(SearchCriteria()))
    assert fake.tokens_issued == 2  # one refresh, not a loop


def test_bad_client_secret_is_auth_error_without_the_secret(fake: FakeReso) -> None:
    src = make_source(extra={"token_url": TOKEN_URL, "client_secret": "wrong-secret-value"})
    with pytest.raises(AuthError) as err:
        src.check()
    assert "bad secret" in str(err.value) and "wrong-secret-value" not in str(err.value)


def test_static_token(fake: FakeReso) -> None:
    src = make_source(extra={"access_token": "static-token"})
    assert len(keys_of(list(src.pages(SearchCriteria())))) == 25
    assert fake.tokens_issued == 0
    assert src.check()["auth"] == "static bearer token"


def test_error_mapping(fake: FakeReso) -> None:
    fake.queue.append((400, {"error": {"code": "InvalidFilter", "message": "Unknown field Foo"}}, {}))
    with pytest.raises(QueryError, match="Unknown field Foo") as err:
        list(make_source().pages(SearchCriteria(raw_query="Foo eq 1")))
    assert err.value.code == 400
    fake.queue.extend([(503, {"error": {"code": "503", "message": "busy"}}, {})] * 4)
    src = make_source()
    with pytest.raises(ServerError, match="busy"):
        list(src.pages(SearchCriteria()))
    assert src.stats["retries"] == 3  # 4 attempts


def test_5xx_and_429_are_retried_then_resume(fake: FakeReso) -> None:
    sleeps: list[float] = []
    src = make_source()
    src.client.sleep = sleeps.append
    fake.queue.extend([(503, {}, {}), (429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}),
                       (429, {}, {})])
    assert len(keys_of(list(src.pages(SearchCriteria())))) == 25
    assert sleeps[1:] == [7.0, 2.0]  # Retry-After honoured; without one, 1, 2, 4 ... seconds
    assert src.stats["rate_limited"] == 2 and src.stats["retries"] == 3
    assert src.stats["quota"] == {"X-RateLimit-Remaining": "99"}


def test_budget_exhaustion_is_not_retried(fake: FakeReso) -> None:
    src = make_source(budget=Budget(per_second=1, max_wait_seconds=0.01))
    calls = []
    src.client.sleep = calls.append
    with pytest.raises(RateLimitError, match="budget"):
        list(src.pages(SearchCriteria()))  # the token takes the only permit
    assert calls == []


def test_secrets_never_in_logs_errors_or_reprs(fake: FakeReso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src = make_source(page_size=5)
    walk = src.pages(SearchCriteria())
    next(walk)
    fake.expire_tokens()
    token = "tok-1-abcdef"
    fake.queue.append((500, {"error": {"message": f"bad token {token} / {SECRET}"}}, {}))
    fake.queue.extend([(500, {}, {})] * 4)
    with pytest.raises(ServerError) as err:
        list(walk)
    text = " ".join([caplog.text, str(err.value), err.value.body or "", repr(src), repr(src.client),
                     repr(src.client.tokens), str(src.stats)])
    assert "bad token *** / ***" in caplog.text
    for secret in (SECRET, token, "tok-2-abcdef"):
        assert secret not in text


def test_check_and_metadata(fake: FakeReso) -> None:
    src = make_source()
    facts = src.check()
    assert facts["protocol"] == "reso" and facts["latest_key"] == "K00024" and facts["auth"].startswith("oauth2")
    meta = src.metadata()
    prop = meta["entity_types"][0]
    assert prop["name"] == "Property" and prop["key"] == ["ListingKey"]
    assert {"name": "ListingKey", "type": "Edm.String", "nullable": False, "max_length": 20} in prop["properties"]
    assert meta["enums"]["org.reso.metadata.StandardStatus"] == {"Active": "Active", "Delete": "Delete"}
    assert meta["entity_sets"][0] == {"name": "Property", "type": "org.reso.metadata.Property"}
    assert meta["resource"] == {"name": "Property", "entity_set": "Property",
                                "entity_type": "org.reso.metadata.Property", "key": ["ListingKey"],
                                "key_types": {"ListingKey": "Edm.String"}}
    assert meta["odata_version"] == "4.01" and meta["warnings"] == []


def _media(key: str, n: int, url: str = "http://cdn.test/photos") -> list[dict]:
    return [{"MediaKey": f"{key}-m{i}", "ResourceRecordKey": key, "Order": n - 1 - i,
             "MediaURL": f"{url}/{key}-{n - 1 - i}.jpg", "MediaCategory": "Photo",
             "ShortDescription": f"photo {i}", "MediaModificationTimestamp": "2024-01-01T00:00:00Z",
             "ImageWidth": 1024} for i in range(n)]


def test_media_refs_and_photos(fake: FakeReso) -> None:
    fake.media = {"K00001": _media("K00001", 3), "K00002": _media("K00002", 2, "http://fake.test/photos")}
    fake.media["K00002"][0]["MediaURL"] = "http://fake.test/photos/missing.jpg"
    fake.media["K00002"].append({"MediaKey": "doc", "MediaCategory": "Document", "MediaURL": "x"})
    fake.media["K00001"][2]["MediaURL"] = "http://cdn.test/photos/html-page"
    src = make_source()
    refs = list(src.media_refs(["K00002", "K00001"]))
    assert [(r.listing_key, r.order) for r in refs] == [("K00001", 0), ("K00001", 1), ("K00001", 2),
                                                       ("K00002", 0), ("K00002", 1)]
    assert refs[0].caption == "photo 2" and refs[0].extra["ImageWidth"] == 1024
    photos = list(src.photos(["K00001", "K00002"]))
    assert [p.error is None for p in photos] == [False, True, True, True, False]
    assert photos[1].data == b"\xff\xd8\xffK00001-1.jpg" and photos[1].content_type == "image/jpeg"
    assert "not an image" in (photos[0].error or "") and "404" in (photos[4].error or "")
    # the bearer token goes to the API host, never to the CDN
    cdn = [h for h in fake.headers_seen if h.get("Accept") == "image/*"]
    assert sum("Authorization" in h for h in cdn) == 2


def test_media_without_expand_uses_media_resource(fake: FakeReso) -> None:
    src = make_source(expand_media=False)
    list(src.media_refs(["K00001"]))
    assert urlsplit(fake.requests[-1]).path.endswith("/Media")
    assert query_of(fake.requests[-1])["$filter"] == "ResourceRecordKey in ('K00001')"


def test_media_user_agent_token(fake: FakeReso) -> None:
    fake.media = {"K00001": _media("K00001", 1)}
    assert all(p.error is None for p in make_source(media_user_agent_token=True).photos(["K00001"]))
    assert fake.headers_seen[-1]["User-Agent"] == "tok-1-abcdef"


def test_from_config_does_no_io() -> None:
    from mls_sync.connections import Connection
    from mls_sync.limits import RateLimiter

    conn = Connection("x", host=ROOT, login="a", password=SECRET, extra={"token_url": TOKEN_URL})
    with responses.RequestsMock() as rsps:  # any request would fail: none registered
        src = ResoSource.from_config(make_source().provider, conn, RateLimiter(Budget()))
        assert repr(src) == f"ResoSource('demo_reso', '{ROOT}/')"
        assert len(rsps.calls) == 0


def test_hostile_values_survive_url_encoding(fake: FakeReso) -> None:
    hostile = "x' or 1 eq 1 or ListingKey eq '&$top=1#frag"
    pages = list(make_source().pages(SearchCriteria(listing_keys=(hostile,), cities=("A&B=C",))))
    assert keys_of(pages) == []
    q = query_of(fake.requests[-1])
    assert q["$filter"] == ("(ListingKey in ('x'' or 1 eq 1 or ListingKey eq ''&$top=1#frag')) "
                            "and (City in ('A&B=C'))")
    assert q["$top"] == "1000"


def test_photo_timeout_and_byte_budget(fake: FakeReso) -> None:
    fake.media = {"K00001": _media("K00001", 2)}
    fake.media["K00001"][0]["MediaURL"] = "http://cdn.test/photos/timeout.jpg"
    src = make_source()
    photos = list(src.photos(["K00001"]))
    assert photos[0].data and photos[0].error is None
    assert photos[1].data is None and "ReadTimeout" in (photos[1].error or "")
    # the photo's bytes count, with the metadata queries that listed it; the timed-out one adds none
    assert src.client.limiter.bytes == src.stats["bytes"] > len(photos[0].data)


def test_concurrent_downloads_share_one_token_refresh(fake: FakeReso) -> None:
    fake.media = {"K00001": _media("K00001", 12, "http://fake.test/photos")}
    src = make_source()
    refs = list(src.media_refs(["K00001"]))
    fake.expire_tokens()
    photos = list(MediaDownloader(src.client, 6).download(refs))
    assert all(p.error is None for p in photos) and len(photos) == 12
    assert fake.tokens_issued == 2


def test_pages_with_a_bom_or_in_latin_1_are_read(fake: FakeReso) -> None:
    one = {"value": [listing(1, CLUSTER_TS, PublicRemarks="Café près du lac")]}
    body = json.dumps(one, ensure_ascii=False)
    fake.queue.append((200, b"\xef\xbb\xbf" + body.encode(), {"Content-Type": "application/json"}))
    fake.queue.append((200, body.encode("latin-1"), {"Content-Type": "application/json; charset=iso-8859-1"}))
    for _ in range(2):
        page = next(iter(make_source(page_size=4).pages(SearchCriteria())))
        assert page.records[0]["PublicRemarks"] == "Café près du lac"


def test_an_html_page_instead_of_json_is_a_clear_server_error(fake: FakeReso) -> None:
    fake.queue.append((200, "<html><body>Maintenance</body></html>", {"Content-Type": "text/html"}))
    with pytest.raises(ServerError, match=r"not JSON.*text/html"):
        list(make_source(page_size=4).pages(SearchCriteria()))


def test_query_pages_and_tokens_count_against_the_byte_budget(fake: FakeReso) -> None:
    """Providers cap bytes per hour for the whole API (MLS Grid: 4 GB/h), not only for photos."""
    src = make_source(page_size=4)
    pages = list(src.pages(SearchCriteria()))
    assert keys_of(pages)
    assert src.client.limiter.bytes == src.stats["bytes"] > 0


def test_nextlink_asks_page_size_with_prefer_and_top_only_where_the_yaml_says(fake: FakeReso) -> None:
    fake.nextlink = True
    list(make_source(page_size=10, paging="nextlink").pages(SearchCriteria()))
    first = fake.page_requests()[0]
    assert "$top" not in query_of(first)
    assert fake.headers_seen[fake.requests.index(first)]["Prefer"] == "odata.maxpagesize=10"
    list(make_source(page_size=10, paging="nextlink", top_is_page_size=True).pages(SearchCriteria()))
    assert query_of(fake.page_requests()[-3])["$top"] == "10"


def test_without_metadata_literals_come_from_the_yaml_and_values(fake: FakeReso) -> None:
    src = make_source(use_metadata=False, odata_version="4.01", field_types={"ListingKey": "Edm.String"})
    pages = list(src.pages(SearchCriteria(listing_keys=("K00003", "K00001"))))
    assert sorted(keys_of(pages)) == ["K00001", "K00003"]
    assert not any(u.endswith("$metadata") for u in fake.requests)
    assert query_of(fake.page_requests()[-1])["$filter"] == "ListingKey in ('K00001','K00003')"
