"""Shared pieces of the test_mock_* integration files: one mock per module, reset after every test.

    mls, _clean = mock_mls_fixtures(listings=1500, seed=7, row_cap=500)

Both names must be bound in the test module for pytest to find them; `_clean` is autouse.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.auth import HTTPDigestAuth

from mock_mls import MockMLS


def mock_mls_fixtures(**kwargs: Any) -> tuple[Any, Any]:
    """A module-scoped `mls` fixture serving `MockMLS(**kwargs)` and an autouse `_clean` resetting it."""

    @pytest.fixture(scope="module")
    def mls() -> Iterator[MockMLS]:
        with MockMLS(**kwargs) as server:
            yield server

    @pytest.fixture(autouse=True)
    def _clean(mls: MockMLS) -> Iterator[None]:
        yield
        mls.reset()

    return mls, _clean


def rets_login(mls: MockMLS, headers: dict[str, str] | None = None) -> requests.Session:
    """A requests session logged in to the mock's RETS server with digest auth."""
    s = requests.Session()
    s.auth = HTTPDigestAuth(mls.credentials["username"], mls.credentials["password"])
    s.headers.update(headers or {})
    r = s.get(mls.rets_login_url, timeout=10)
    assert r.status_code == 200, r.text
    assert "RETS-Session-ID" in s.cookies
    return s
