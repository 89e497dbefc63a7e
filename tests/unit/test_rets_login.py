"""Login replies (1.5-1.8), the UA digest, logout replies."""

from __future__ import annotations

import pytest
from mls_sync.sources.base import AuthError
from mls_sync.sources.rets.auth import normalise_version, parse_login, ua_digest
from mls_sync.sources.rets.compact import parse_bytes
from mls_sync.sources.rets.errors import reply_error

from tests.unit.test_rets_fixtures import FLEX_GET, LIBRETS, flex, header

LOGIN = "http://example.com:6103/rets/login"


def test_ua_digest_published_vector() -> None:
    value = ua_digest("MyAgent/1.2.3", "secret", "98765", "1234567", "RETS/1.7")
    assert value == "Digest 71c39e723a334222bc7a1025b9c363e2"


def test_ua_digest_changes_with_session_and_version() -> None:
    a = ua_digest("UA/1", "pw", "", "", "RETS/1.7.2")
    assert a != ua_digest("UA/1", "pw", "", "abc", "RETS/1.7.2") != ua_digest("UA/1", "pw", "", "abc", "RETS/1.8")


@pytest.mark.parametrize(("raw", "want"), [("1.8", "RETS/1.8"), ("RETS/1.7.2", "RETS/1.7.2"),
                                           ("rets/1.5 extra", "RETS/1.5"), (None, "RETS/1.7.2")])
def test_version_normalised(raw: str | None, want: str) -> None:
    assert normalise_version(raw) == want


def test_login_15_spaces_relative_urls_and_action() -> None:
    info = parse_login((LIBRETS / "login-valid15.xml").read_bytes(), LOGIN)
    assert info.code == 0
    caps = info.capabilities
    assert caps["Search"] == "http://example.com:6103/rets/search"  # relative, resolved
    assert caps["Action"] == "http://example.com:6103/rets/action"
    assert caps["GetObject"] == "http://example.com:6103/rets/getObject"
    assert info.info["MemberName"] == "Joe Schmoe" and info.info["Balance"] == "3,197.35"
    assert "X-Field" in info.info


def test_login_18_info_lines_and_missing_closing_tag() -> None:
    info = parse_login((LIBRETS / "login-valid18.xml").read_bytes(), LOGIN)
    assert info.code == 0
    assert info.info["MEMBERNAME"] == "Joe Schmoe" and info.info["USERLEVEL"] == "25"
    assert info.info["TimeoutSeconds"] == "123"
    assert info.capabilities["GetPayloadList"] == "http://example.com:6103/rets/getPayloadList"
    assert info.capabilities["Search"] == "http://example.com:6103/rets/search"


def test_login_10_without_rets_response_and_other_hosts() -> None:
    info = parse_login((LIBRETS / "login-valid10.xml").read_bytes(), LOGIN)
    assert info.capabilities["Search"] == "http://cornerstone.mris.com:6103/platinum/search"
    info = parse_login((LIBRETS / "login-cris.xml").read_bytes(), LOGIN)
    assert info.capabilities["GetObject"].startswith("http://rets.crisnetmls.com:6103/")


def test_login_failure_20036_is_auth_error() -> None:
    info = parse_login((LIBRETS / "login-invalid.xml").read_bytes(), LOGIN)
    assert info.code == 20036 and not info.capabilities
    exc = reply_error(info.code, info.text, "", "Login")
    assert isinstance(exc, AuthError) and "Miscellaneous Server Error" in str(exc)


@pytest.mark.parametrize("sub", ["rets2_1_Login", "action_rets2_1_Login", "limited_rets2_1_Login",
                                 "lookup_rets2_1_Login"])
def test_flexmls_logins(sub: str) -> None:
    for path in sorted((FLEX_GET / sub).iterdir()):
        _, headers, body = flex(str(path))
        base = "http://retsgw.flexmls.com/rets2_1/Login"
        info = parse_login(body, base)
        assert info.code == 0
        assert info.capabilities["Search"].startswith("http://retsgw.flexmls.com/")
        assert header(headers, "RETS-Version") in ("RETS/1.7.2", "RETS/1.5")
        if sub == "action_rets2_1_Login":
            assert info.capabilities["Action"] == "http://retsgw.flexmls.com/action/rets2_1/Action"
        if sub == "limited_rets2_1_Login":
            assert set(info.capabilities) == {"Login", "Search", "Logout"}


@pytest.mark.parametrize("name", ["logout-cris.xml", "logout-tarasoft.xml", "logout-valid15.xml"])
def test_logout_replies(name: str) -> None:
    reply, _ = parse_bytes((LIBRETS / name).read_bytes())
    assert reply.code == 0
    info = parse_login((LIBRETS / name).read_bytes(), LOGIN)
    if name == "logout-valid15.xml":
        assert info.info["Billing"] == "0.36" and info.info["SignOffMessage"] == "Goodbye"


def test_logout_flexmls_and_non_xml() -> None:
    _, _, body = flex("get/retsgw.flexmls.com/rets2_1_Logout/18f6b7bfb97630b9cdbfd8af1b817310.txt")
    assert parse_login(body, LOGIN).info["SignOffMessage"] == "Good Bye"
    assert parse_login(b"Goodbye, not XML", LOGIN).code is None
