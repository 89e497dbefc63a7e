"""RetsSource over a scripted HTTP server (responses): login, headers, re-login, retries, secrets."""

from __future__ import annotations

import logging

import pytest
import responses
from mls_sync.config import ProviderConfig
from mls_sync.connections import Connection
from mls_sync.limits import Budget, RateLimiter
from mls_sync.sources.base import AuthError, MismatchError, QueryError, RateLimitError, SearchCriteria, ServerError
from mls_sync.sources.rets import RetsSource
from mls_sync.sources.rets.auth import ua_digest
from mls_sync.sources.rets.session import OriginScope, trusted_origins

from tests.shared_fixtures import SHARED_FIXTURES

LIBRETS = SHARED_FIXTURES / "librets/unit"

BASE = "http://rets.test"
LOGIN = f"{BASE}/rets/login"
PASSWORD, UA_PASSWORD = "hunter2-secret", "ua-pass-secret"
LOGIN_BODY = ('<RETS ReplyCode="0" ReplyText="ok"><RETS-RESPONSE>\nSearch = /rets/search\n'
              "GetMetadata=/rets/meta\nLogout=http://other.test:8080/rets/logout\nAction=/rets/action\n"
              "GetObject=/rets/object\n</RETS-RESPONSE></RETS>")
SYSTEM = ('<RETS ReplyCode="0" ReplyText="ok"><METADATA-SYSTEM Version="1" Date="x">'
          '<SYSTEM SystemID="T" SystemDescription="Test" TimeZoneOffset="-05:00"/></METADATA-SYSTEM></RETS>')
ROWS = ('<RETS ReplyCode="0" ReplyText="ok"><COUNT Records="2"/><DELIMITER value="09"/>'
        "<COLUMNS>\tLIST_1\tLIST_87\t</COLUMNS><DATA>\tA\t2024-01-01T00:00:00\t</DATA>"
        "<DATA>\tB\t2024-01-02T00:00:00\t</DATA></RETS>")


def provider() -> ProviderConfig:
    return ProviderConfig.model_validate({
        "provider_id": "unit_rets", "name": "u", "protocol": "rets", "connection_id": "unit",
        "rets": {"page_size": 100, "time_zone": "-05:00"},
        "source_fields": {"key": "LIST_1", "modified": "LIST_87"},
        "fields": {"LIST_1": {"column": "listing_key"}}, "limits": {"request_attempts": 3}})


def make_source() -> RetsSource:
    conn = Connection("unit", host=LOGIN, login="user", password=PASSWORD,
                      extra={"user_agent": "Agent/1.0", "ua_password": UA_PASSWORD, "rets_version": "1.7.2"})
    return RetsSource.from_config(provider(), conn, RateLimiter(Budget()), sleep=lambda s: None)


def add_login(rsps: responses.RequestsMock, session: str = "S1", version: str = "RETS/1.8") -> None:
    rsps.add(responses.GET, LOGIN, body=LOGIN_BODY, headers={"RETS-Version": version,
                                                             "Set-Cookie": f"RETS-Session-ID={session}; Path=/"})
    rsps.add(responses.GET, f"{BASE}/rets/action", body="You have found an Action!")


@responses.activate
def test_login_capabilities_action_version_and_ua_header() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS)
    src = make_source()
    pages = list(src.pages(SearchCriteria()))
    assert [r["LIST_1"] for p in pages for r in p.records] == ["A", "B"]
    assert pages[-1].cursor["done"]
    calls = [c.request for c in responses.calls]
    assert calls[0].headers["RETS-Version"] == "RETS/1.7.2"
    assert calls[0].headers["RETS-UA-Authorization"] == ua_digest("Agent/1.0", UA_PASSWORD, "", "", "RETS/1.7.2")
    assert calls[1].url == f"{BASE}/rets/action"
    search = calls[2]
    assert search.headers["RETS-Version"] == "RETS/1.8"  # negotiated from the login reply
    assert search.headers["RETS-UA-Authorization"] == ua_digest("Agent/1.0", UA_PASSWORD, "", "S1", "RETS/1.8")
    assert "Offset=1" in search.url and "Count=1" in search.url and "Limit=100" in search.url
    assert src.session.capabilities["Logout"] == "http://other.test:8080/rets/logout"
    assert src.stats["requests"]["Search"] == 1 and src.stats["bytes"] > 0


@responses.activate
@pytest.mark.parametrize("expiry", ["20037", "401"])
def test_relogin_once_on_expired_session(expiry: str) -> None:
    add_login(responses.mock, "S1")
    if expiry == "401":
        responses.add(responses.GET, f"{BASE}/rets/search", status=401, body="")
    else:
        responses.add(responses.GET, f"{BASE}/rets/search", body='<RETS ReplyCode="20037" ReplyText="expired"/>')
    add_login(responses.mock, "S2")
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS)
    src = make_source()
    records = [r for p in src.pages(SearchCriteria()) for r in p.records]
    assert len(records) == 2 and src.stats["relogins"] == 1
    last = responses.calls[-1].request
    assert last.headers["RETS-UA-Authorization"] == ua_digest("Agent/1.0", UA_PASSWORD, "", "S2", "RETS/1.8")
    assert "S1" not in last.headers.get("Cookie", "")


@responses.activate
def test_second_expiry_after_relogin_is_auth_error() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", body='<RETS ReplyCode="20037" ReplyText="expired"/>')
    with pytest.raises(AuthError, match="again right after a fresh login"):
        list(make_source().pages(SearchCriteria()))


@responses.activate
def test_retries_503_and_rate_limit_codes_then_succeeds() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", status=503, headers={"Retry-After": "0"})
    responses.add(responses.GET, f"{BASE}/rets/search", body='<RETS ReplyCode="20050" ReplyText="busy"/>')
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS)
    src = make_source()
    assert sum(len(p.records) for p in src.pages(SearchCriteria())) == 2
    assert src.stats["retries"] == 2


@responses.activate
def test_rate_limit_after_retries_and_429() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", status=429, headers={"Retry-After": "1"})
    src = make_source()
    with pytest.raises(RateLimitError):
        list(src.pages(SearchCriteria()))
    assert src.stats["retries"] == 2  # 3 attempts


@responses.activate
def test_query_errors_are_not_retried_and_keep_text() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search",
                  body='<RETS ReplyCode="20206" ReplyText="Invalid Query Syntax">near LIST_99</RETS>')
    src = make_source()
    with pytest.raises(QueryError, match="near LIST_99"):
        list(src.pages(SearchCriteria(raw_query="LIST_99=1")))
    assert src.stats["retries"] == 0


@responses.activate
def test_truncated_reply_is_retried() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS[:150])
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS)
    src = make_source()
    assert sum(len(p.records) for p in src.pages(SearchCriteria())) == 2


@responses.activate
def test_long_key_lists_use_post_and_chunks() -> None:
    add_login(responses.mock)
    responses.add(responses.POST, f"{BASE}/rets/search", body=ROWS)
    responses.add(responses.GET, f"{BASE}/rets/search", body=ROWS)
    src = make_source()
    keys = tuple(f"K{i:019d}" for i in range(150))
    pages = list(src.pages(SearchCriteria(listing_keys=keys)))
    searches = [c.request for c in responses.calls if "/search" in c.request.url]
    assert [r.method for r in searches] == ["POST", "GET"]  # 100 keys: too long for a URL; 50 fit
    assert "K0000000000000000099" in searches[0].body and "K0000000000000000149" in searches[1].url
    assert pages[0].cursor["chunk"] == 1 and pages[-1].cursor["done"]


@responses.activate
def test_bad_password_is_auth_error_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    responses.add(responses.GET, LOGIN, status=401, body=f"bad password {PASSWORD}")
    src = make_source()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError) as info:
        src.check()
    for text in (str(info.value), repr(src), repr(src.session), caplog.text, str(info.value.body)):
        assert PASSWORD not in text and UA_PASSWORD not in text


@responses.activate
def test_server_errors_never_show_secrets(caplog: pytest.LogCaptureFixture) -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/search", status=500, body=f"oops {PASSWORD} {UA_PASSWORD}")
    responses.add(responses.GET, "http://other.test:8080/rets/logout", status=500, body=PASSWORD)
    caplog.set_level(logging.DEBUG)
    src = make_source()
    with pytest.raises(ServerError) as info:
        list(src.pages(SearchCriteria()))
    src.close()  # failing logout: warning only
    assert "logout failed" in caplog.text
    for text in (str(info.value), str(info.value.body), caplog.text, repr(src)):
        assert PASSWORD not in text and UA_PASSWORD not in text


@responses.activate
def test_metadata_cached_and_time_zone() -> None:
    add_login(responses.mock)
    responses.add(responses.GET, f"{BASE}/rets/meta", body=SYSTEM)
    conn = Connection("unit", host=LOGIN, login="user", password=PASSWORD)
    src = RetsSource.from_config(provider().model_copy(update={"rets": provider().rets.model_copy(
        update={"time_zone": None})}), conn)
    assert str(src.zone()) == "UTC-05:00"
    facts = src.check()
    assert facts["system_id"] == "T" and facts["rets_version"] == "RETS/1.8"
    assert src.stats["requests"]["GetMetadata"] == 1


@responses.activate
@pytest.mark.parametrize("auth", ["basic", "digest"])
def test_credentials_and_cookies_go_to_the_login_origin_only(auth: str) -> None:
    """A Location URL on a CDN, and one on the RETS host that redirects to the CDN: the CDN gets
    a plain GET (no Authorization, no RETS cookie although its Domain covers the CDN), with the
    XML-escaped `&amp;` of the header turned back into `&`."""
    base, cdn = "http://rets.example.com", "http://cdn.example.com"
    if auth == "digest":
        challenge = {"WWW-Authenticate": 'Digest realm="r", nonce="n1", qop="auth"'}
        responses.add(responses.GET, f"{base}/rets/login", status=401, headers=challenge)
    responses.add(responses.GET, f"{base}/rets/login", body=LOGIN_BODY.replace("Action=/rets/action\n", ""),
                  headers={"Set-Cookie": "RETS-Session-ID=S1; Domain=.example.com; Path=/"})
    multipart = ("--B\r\nContent-ID: K\r\nObject-ID: 1\r\nContent-Type: image/jpeg\r\n"
                 f"Location: {cdn}/p/1.jpg?w=1&amp;sig=abc\r\n\r\n\r\n"
                 "--B\r\nContent-ID: K\r\nObject-ID: 2\r\nContent-Type: image/jpeg\r\n"
                 "Location: /media/2.jpg\r\n\r\n\r\n--B--\r\n")
    responses.add(responses.GET, f"{base}/rets/object", body=multipart,
                  content_type='multipart/parallel; boundary="B"')
    responses.add(responses.GET, f"{base}/media/2.jpg", status=302, headers={"Location": f"{cdn}/p/2.jpg"})
    for n in (1, 2):
        responses.add(responses.GET, f"{cdn}/p/{n}.jpg", body=b"JPEG%d" % n, content_type="image/jpeg")
    conn = Connection("unit", host=f"{base}/rets/login", login="user", password=PASSWORD,
                      extra={"user_agent": "Agent/1.0", "auth": auth})
    src = RetsSource.from_config(provider(), conn, RateLimiter(Budget()), sleep=lambda s: None)
    photos = list(src.photos(["K"]))
    assert [(p.order, p.data) for p in photos] == [(0, b"JPEG1"), (1, b"JPEG2")]
    sent = [c.request for c in responses.calls]
    to_cdn = [r for r in sent if r.url.startswith(cdn)]
    assert [r.url for r in to_cdn] == [f"{cdn}/p/1.jpg?w=1&sig=abc", f"{cdn}/p/2.jpg"]
    assert not [r for r in to_cdn if "Authorization" in r.headers or "Cookie" in r.headers]
    rets = [r for r in sent if r.url.startswith(f"{base}/rets/object") or r.url.startswith(f"{base}/media")]
    assert all("RETS-Session-ID=S1" in r.headers["Cookie"] and r.headers["Authorization"] for r in rets)


def test_origins_compare_scheme_host_and_port() -> None:
    scope = OriginScope("http://RETS.example.com/rets/login", ["https://photos.example.com:8443/x"])
    assert scope("http://rets.example.com:80/rets/search")
    assert scope("https://rets.example.com/rets/search")  # the TLS upgrade of the same host
    assert scope("https://photos.example.com:8443/p.jpg")
    assert not scope("http://rets.example.com:6103/rets/search")
    assert not scope("http://cdn.example.com/p.jpg") and not scope("https://photos.example.com/p.jpg")
    assert not scope("http://rets.example.com:notaport/")
    assert trusted_origins("https://a.test, https://b.test") == ["https://a.test", "https://b.test"]


@responses.activate
@pytest.mark.parametrize("name", ["logout-valid15.xml", "logout-cris.xml"])
def test_a_logout_url_as_login_url_is_named_as_the_likely_mistake(name: str) -> None:
    """Recorded Logout replies (ReplyCode 0, no capability list) where a Login reply was expected."""
    responses.add(responses.GET, LOGIN, body=(LIBRETS / name).read_bytes())
    with pytest.raises(MismatchError, match="probably not the RETS Login transaction"):
        make_source().check()


@responses.activate
def test_a_login_without_search_or_metadata_rights_says_so() -> None:
    responses.add(responses.GET, LOGIN, body='<RETS ReplyCode="0" ReplyText="ok"><RETS-RESPONSE>\n'
                  "Logout=/rets/logout\nGetObject=/rets/object\n</RETS-RESPONSE></RETS>")
    with pytest.raises(AuthError, match=r"granted neither Search nor GetMetadata \(only GetObject, Logout\)"):
        make_source().check()
