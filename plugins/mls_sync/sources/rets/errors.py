"""RETS ReplyCodes and HTTP statuses -> the Source error classes (which decide retries).

RETS servers report most errors as HTTP 200 with a ReplyCode, so every reply is classified
here, in one table, the same way for every transaction.
"""

from __future__ import annotations

from mls_sync.limits import RETRYABLE_HTTP, RETS_RATE_LIMIT_CODES
from mls_sync.sources.base import AuthError, QueryError, RateLimitError, ServerError, SourceError

SESSION_EXPIRED = 20037
NO_RECORDS = 20201
MAX_RECORDS = 20208
NO_OBJECT = 20403
NO_METADATA = 20503
# Codes meaning "nothing to return" rather than failure.
EMPTY_CODES = frozenset({NO_RECORDS, NO_OBJECT, NO_METADATA})


class SessionExpired(SourceError):
    """401 or ReplyCode 20037 after login: log in again (once) and repeat the request."""

    category = "auth"


def _with_retry_after(exc: SourceError, retry_after: float | None) -> SourceError:
    exc.retry_after = retry_after  # type: ignore[attr-defined]  # read by call_with_retry
    return exc


def reply_error(code: int, text: str, body: str, transaction: str,
                retry_after: float | None = None) -> SourceError:
    """The exception for a non-zero ReplyCode; the server's own words stay in the message."""
    detail = f"{transaction}: RETS ReplyCode {code} {text}".rstrip()
    if body:
        detail += f": {body.strip()[:500]}"
    if code == SESSION_EXPIRED:
        return SessionExpired(detail, code=code, body=body)
    if code in RETS_RATE_LIMIT_CODES:
        return _with_retry_after(RateLimitError(detail, code=code, body=body), retry_after)
    if transaction == "Login" or 20000 <= code < 20100:
        return AuthError(detail, code=code, body=body)
    if 20200 <= code < 20600:
        # Query, object and metadata requests the server refuses: our request is at fault.
        return QueryError(detail, code=code, body=body)
    return ServerError(detail, code=code, body=body)


def http_error(status: int, reason: str, transaction: str, body: str = "",
               retry_after: float | None = None) -> SourceError:
    """Map an HTTP status that is not 200 (401 is handled by the caller: re-login first)."""
    detail = f"{transaction}: HTTP {status} {reason}".rstrip()
    if body:
        detail += f": {body.strip()[:300]}"
    if status == 429:
        return _with_retry_after(RateLimitError(detail, code=status, body=body), retry_after)
    if status in RETRYABLE_HTTP:
        return _with_retry_after(ServerError(detail, code=status, body=body), retry_after)
    if status in (401, 403):
        return AuthError(detail, code=status, body=body)
    if status in (400, 413, 414, 422):
        return QueryError(detail, code=status, body=body)
    exc = ServerError(detail, code=status, body=body)
    exc.retryable = False  # type: ignore[attr-defined]  # 404, 405 ...: a wrong URL, not a blip
    return exc
