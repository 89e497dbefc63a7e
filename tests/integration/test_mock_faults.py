"""Faults of the mock behave as specified: HTTP errors, budgets, RETS errors, broken bodies."""

from __future__ import annotations

import io
import time

import pytest
import requests
from lxml import etree
from PIL import Image

from mock_mls import MockMLS
from mock_mls.photos import render
from tests.integration.mock_fixtures import mock_mls_fixtures, rets_login

pytestmark = pytest.mark.integration
mls, _clean = mock_mls_fixtures(listings=300, seed=5, photos_per_listing=2, control=True, row_cap=100)


@pytest.fixture
def rets_session(mls: MockMLS) -> requests.Session:
    return rets_login(mls)


def search(s: requests.Session, mls: MockMLS, **extra: str) -> requests.Response:
    params = {"SearchType": "Property", "Class": "RE_1", "Query": "(LIST_22=0+)", "Select": "LIST_1", **extra}
    return s.get(f"{mls.url}/rets/search", params=params, timeout=10)


def test_http_errors_next_n_then_recover(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.fault("http_error", status=502, count=2)
    assert [search(rets_session, mls).status_code for _ in range(3)] == [502, 502, 200]
    assert mls.counters()["faults_injected"]["http_error"] == 2


def test_http_errors_seeded_fraction_is_deterministic(mls: MockMLS, rets_session: requests.Session) -> None:
    def run() -> list[int]:
        mls.clear_faults()
        mls.fault("http_error", status=500, fraction=0.5, seed=42)
        return [search(rets_session, mls).status_code for _ in range(12)]

    first = run()
    assert first == run() and {500, 200} == set(first)


def test_rate_limit_per_second_budget(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.configure(rate_limit_per_second=3)
    codes = [search(rets_session, mls) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert len(limited) >= 2 and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert mls.counters()["rate_limited"] == len(limited)


def test_rate_limit_per_hour_resets_with_clock(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.configure(rate_limit_per_hour=4)  # the login's digest challenge and answer already count: 2 left
    assert [search(rets_session, mls).status_code for _ in range(3)] == [200, 200, 429]
    mls.advance_clock(3601)
    assert search(rets_session, mls).status_code == 200


def test_forced_429_and_rets_error_codes(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.fault("too_many_requests", count=1, retry_after=7)
    r = search(rets_session, mls)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    for code in (20036, 20037, 20050, 20208):
        mls.fault("rets_error", code=code, count=1, transaction="search")
        r = search(rets_session, mls)
        assert r.status_code == 200 and f'ReplyCode="{code}"' in r.text
    assert 'ReplyCode="0"' in search(rets_session, mls).text


def test_truncated_and_malformed_bodies(mls: MockMLS, rets_session: requests.Session) -> None:
    whole = search(rets_session, mls).text
    mls.fault("truncated_body", count=1)
    cut = search(rets_session, mls).text
    assert whole.startswith(cut) and "</RETS>" not in cut
    mls.fault("malformed_xml", count=1)
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(search(rets_session, mls).content)


def test_reset_mid_body(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.fault("reset_mid_body", count=1)
    with pytest.raises(requests.exceptions.RequestException):
        search(rets_session, mls)
    fresh = requests.Session()
    fresh.auth = rets_session.auth
    fresh.cookies.update(rets_session.cookies)
    assert search(fresh, mls).status_code == 200


def test_corrupt_photo_and_error_part(mls: MockMLS, rets_session: requests.Session) -> None:
    key = mls.all_keys()[0]
    mls.fault("corrupt_photo", listing_key=key, order=1)
    url = f"{mls.url}/rets/getobject"
    good = rets_session.get(url, params={"Type": "Photo", "ID": f"{key}:1"}, timeout=10).content
    Image.open(io.BytesIO(good)).load()
    bad = rets_session.get(url, params={"Type": "Photo", "ID": f"{key}:2"}, timeout=10).content
    with pytest.raises(OSError):
        Image.open(io.BytesIO(bad)).load()
    mls.fault("error_part", listing_key=key, order=0, code=20409)
    multi = rets_session.get(url, params={"Type": "Photo", "ID": f"{key}:*"}, timeout=10).content
    assert b"Content-Type: text/xml\r\n\r\n<RETS ReplyCode=\"20409\"" in multi
    assert b"Object-ID: 2\r\nContent-Type: image/jpeg" in multi


def test_session_expires_mid_pagination(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.fault("session_expire_after_searches", n=2)
    replies = [search(rets_session, mls, Limit="10", Offset=str(1 + 10 * i)).text for i in range(3)]
    assert 'ReplyCode="0"' in replies[1] and 'ReplyCode="20037"' in replies[2]
    assert rets_session.get(mls.rets_login_url, timeout=10).status_code == 200
    assert 'ReplyCode="0"' in search(rets_session, mls, Limit="10", Offset="21").text


def test_latency_and_counters(mls: MockMLS, rets_session: requests.Session) -> None:
    mls.reset_counters()
    mls.fault("latency", seconds=0.3, count=1)
    r = search(rets_session, mls)
    counters = mls.counters()
    assert counters["faults_injected"]["latency"] == 1
    assert counters["requests"]["rets:search"] == 1 and counters["rows_served"] == 100
    assert counters["bytes_sent"] >= len(r.content)


def test_counters_include_a_reply_as_soon_as_the_client_has_read_it(
        mls: MockMLS, rets_session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock counted bytes after writing the reply, so a client reading the counters right after
    the reply saw too few (a flaky test_latency_and_counters). A slow tally makes the race certain."""
    real_add = mls.stats.add

    def slow_add(name: str, amount: int = 1) -> None:
        if name == "bytes_sent":
            time.sleep(0.3)
        real_add(name, amount)

    monkeypatch.setattr(mls.stats, "add", slow_add)
    for fetch in (lambda: search(rets_session, mls),  # streamed (chunked)
                  lambda: requests.post(mls.token_url, timeout=10, data={  # Content-Length
                      "grant_type": "client_credentials", "client_id": mls.credentials["client_id"],
                      "client_secret": mls.credentials["client_secret"]})):
        before = mls.counters()["bytes_sent"]
        r = fetch()
        assert r.status_code == 200
        assert mls.counters()["bytes_sent"] - before >= len(r.content)


def test_control_http_api(mls: MockMLS) -> None:
    base = f"{mls.url}/_control"
    assert requests.post(f"{base}/fault", json={"kind": "http_error", "status": 503, "count": 1},
                         timeout=10).status_code == 200
    assert requests.get(f"{mls.url}/reso/odata/Property", timeout=10).status_code == 503
    changed = requests.post(f"{base}/mutate", json={"price": 2}, timeout=10).json()
    assert len(changed["price"]) == 2
    state = requests.get(f"{base}/state", timeout=10).json()
    assert state["settings"]["row_cap"] == 100 and state["credentials"]["username"] == "mockuser"
    assert requests.post(f"{base}/fault", json={"kind": "nope"}, timeout=10).status_code == 400
    key = changed["price"][0]
    assert requests.get(f"{base}/listing/{key}", timeout=10).json()["ListingKey"] == key


def test_prerender_stores_photos_that_are_then_served_from_files(mock_mls_factory, tmp_path) -> None:
    photos = tmp_path / "photos"
    # no photos kept in memory: every request after the prerender must read a file
    m = mock_mls_factory(listings=20, seed=3, photos_per_listing=2, photo_dir=photos, photo_cache_size=0)
    # without a folder there is nothing to store into: a clear 400, not a silent no-op
    plain = mock_mls_factory(listings=5, seed=3, photos_per_listing=1)
    refused = requests.post(f"{plain.url}/_control/prerender", json={}, timeout=10)
    assert refused.status_code == 400 and "--photo-dir" in refused.text
    drawn = requests.post(f"{m.url}/_control/prerender", json={}, timeout=60).json()["photos"]
    files = sorted(photos.glob("*.jpg"))
    assert drawn == len(files) > 20  # every in-feed listing's photos (the feed is 20 listings, 2 each)
    # replace every stored photo: what the server sends now can only come from the files
    stand_in = render("stand-in", 0, 1, 64, 48, 0)
    for f in files:
        f.write_bytes(stand_in)
    got = requests.get(f"{m.url}/photos/{m.active_keys()[0]}/0/1.jpg", timeout=10)
    assert got.status_code == 200 and got.content == stand_in
