"""Run-level failures: the error table's category, and no secret in what is recorded."""

from __future__ import annotations

import pytest
from mls_sync.connections import ConnectionNotFound
from mls_sync.failures import category_of, describe_failure
from mls_sync.objectstore import ObjectStoreConfigError, ObjectStoreError
from mls_sync.sources.base import AuthError, QueryError, RateLimitError, ServerError
from sqlalchemy.exc import OperationalError


def _not_retryable(exc: ServerError) -> ServerError:
    exc.retryable = False  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize("exc, category", [
    (RateLimitError("Search: HTTP 429"), "rate_limit"),
    (AuthError("Login refused"), "auth"),
    (ServerError("Search: HTTP 503"), "network"),
    (_not_retryable(ServerError("GetObject: HTTP 404")), "config"),  # a wrong URL is a setting
    (QueryError("Search: 20206 syntax"), "data"),
    (ConnectionNotFound("no AIRFLOW_CONN_MLS_X"), "config"),
    (ObjectStoreConfigError("unknown setting"), "config"),
    (ObjectStoreError("S3 PutObject failed"), "network"),
    (OperationalError("SELECT 1", {}, Exception("server closed the connection")), "network"),
    (PermissionError("/data/media"), "config"),
    (ConnectionResetError("reset by peer"), "network"),
    (KeyError("LIST_1"), "data"),
])
def test_categories(exc: BaseException, category: str) -> None:
    assert category_of(exc) == category


def test_the_cause_and_the_request_are_masked() -> None:
    exc = AuthError("token endpoint refused client s3cr3t-value", code=401)
    exc.request = {"transaction": "Login", "url": "https://mls.example/login?pw=s3cr3t-value",  # type: ignore[attr-defined]
                   "params": {"Query": "(LIST_1=*)"}}
    out = describe_failure(exc, {"search": "ignored: the source's own request wins"}, ["s3cr3t-value"])
    assert out["category"] == "auth" and out["code"] == 401 and out["error"] == "AuthError"
    assert "s3cr3t-value" not in str(out) and out["request"]["params"] == {"Query": "(LIST_1=*)"}
    assert describe_failure(ValueError("x"), {"keys": 3})["request"] == {"keys": 3}
