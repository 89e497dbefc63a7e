"""RetsSource over a scripted HTTP server (responses): login, headers, re-login, retries, secrets."""

from __future__ import annotations

import logging

import pytest
import responses
from mls_sync.config import ProviderConfig
from mls_sync.connections import Connection
from mls_sync.limits import Budget, RateLimiter
from mls_sync.sources.base import AuthError, QueryError, RateLimitError, SearchCriteria, ServerError
from mls_sync.sources.rets import RetsSource
from mls_sync.sources.rets.auth import ua_digest

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
