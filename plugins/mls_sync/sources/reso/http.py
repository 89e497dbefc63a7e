"""HTTP for the RESO Web API: bearer auth, the rate limiter, retries and OData error mapping.

Every request takes a permit from the shared RateLimiter and runs under call_with_retry, so the
provider's published budget holds across pages, media and token calls alike. Secrets (client
secret, access token) never leave this module in a log line, an exception or a repr: messages
are masked before they are raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import msgspec
import requests

from mls_sync.limits import RateLimiter, RetryPolicy, call_with_retry, retry_after_seconds
from mls_sync.sources.base import (
    AuthError,
    Masker,
    QueryError,
    RateLimitError,
    ServerError,
    SourceError,
)

log = logging.getLogger(__name__)
_decode_json = msgspec.json.Decoder().decode

QUOTA_HEADER_PREFIXES = ("x-ratelimit", "x-rate-limit", "ratelimit", "x-quota", "mlg-")


@dataclass
class TokenSource:
    """A bearer token: static, or OAuth2 client credentials cached until shortly before expiry."""

    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    static_token: str | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.monotonic
    _token: str | None = field(default=None, repr=False)
    _expires_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def refreshable(self) -> bool:
        return self.token_url is not None

    def current(self) -> str | None:
        """The cached token if still comfortably valid, else None (caller fetches one)."""
        if self.static_token:
            return self.static_token
        with self._lock:
            if self._token and self.clock() < self._expires_at:
                return self._token
        return None

    def store(self, token: str, expires_in: float | None) -> None:
        # Refresh a little early: a 1-hour token is renewed a minute before it dies, a short
        # one (tests, some vendors) 10% before, so a request never departs with a dying token.
        ttl = float(expires_in) if expires_in else 3600.0
        with self._lock:
            self._token = token
            self._expires_at = self.clock() + ttl - min(60.0, ttl * 0.1)

    def invalidate(self, token: str | None) -> None:
        """Forget `token` if it is still the cached one (other threads may have refreshed)."""
        with self._lock:
            if token is not None and token == self._token:
                self._token = None
                self._expires_at = 0.0

    def seconds_left(self) -> float | None:
        if self.static_token or not self._token:
            return None
        return round(max(0.0, self._expires_at - self.clock()), 1)


def odata_message(resp: requests.Response) -> tuple[str | None, str]:
    """(code, message) from an OData `{"error": {...}}` or OAuth `{"error": ...}` body, else text."""
    text = resp.text[:2000] if resp.content else ""
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return (str(err["code"]) if err.get("code") is not None else None,
                    str(err.get("message") or text))
        if isinstance(err, str):  # OAuth2 token endpoint: error + error_description
            return err, str(body.get("error_description") or err)
        text = ""  # JSON without an error object says nothing useful
    return None, text.strip() or resp.reason or f"HTTP {resp.status_code}"


class ODataClient:
    """One service root, one token, one limiter; thread-safe for concurrent media downloads."""

    def __init__(self, root: str, tokens: TokenSource, limiter: RateLimiter, policy: RetryPolicy, *,
                 user_agent: str, timeout: float, masker: Masker, pool_size: int = 10,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.root = root.rstrip("/") + "/"
        self.tokens = tokens
        self.limiter = limiter
        self.policy = policy
        self.user_agent = user_agent
        self.timeout = timeout
        self.mask = masker
        self.sleep = sleep
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()
        self.stats: dict[str, Any] = {"requests": 0, "bytes": 0, "retries": 0, "token_refreshes": 0,
                                      "pages": 0, "rate_limited": 0, "quota": {}}

    def __repr__(self) -> str:
        return f"ODataClient({self.root!r})"

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    # ---- URLs ----------------------------------------------------------------------------
    def url(self, path: str, params: dict[str, str] | None = None) -> str:
        """Service-root-relative URL with OData-friendly encoding (`$`, quotes, commas kept)."""
        base = urljoin(self.root, path.lstrip("/"))
        if not params:
            return base
        return base + "?" + urlencode(params, safe="$',():", quote_via=quote)

    def same_origin(self, url: str) -> bool:
        """Whether `url` is on the service's host, so our bearer token may be sent to it."""
        a, b = urlsplit(self.root), urlsplit(url)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    # ---- auth ----------------------------------------------------------------------------
    def token(self) -> str:
        """A valid access token, fetched (through the limiter, with retries) when none is cached."""
        return call_with_retry(self._token, self.policy, what="token request", sleep=self.sleep)

    def _token(self) -> str:
        """One attempt: the cached token or a single token request; the caller's retry covers it."""
        tok = self.tokens.current()
        if tok:
            return tok
        with self._token_lock:  # one thread fetches; photo threads waiting here reuse its token
            return self.tokens.current() or self._fetch_token()

    def _fetch_token(self) -> str:
        t = self.tokens
        if not t.refreshable:
            raise AuthError("no access token: set extra.token_url (OAuth2) or extra.access_token")
        form = {"grant_type": "client_credentials", "client_id": t.client_id or "",
                "client_secret": t.client_secret or ""}
        if t.scope:
            form["scope"] = t.scope
        self._acquire()
        resp = self._send("POST", str(t.token_url), data=form, headers={"Accept": "application/json"})
        if resp.status_code in (400, 401, 403):
            code, msg = odata_message(resp)
            raise AuthError(self.mask(f"token endpoint refused the client credentials "
                                      f"(HTTP {resp.status_code} {code or ''}): {msg}"),
                            code=resp.status_code)
        self._raise_for_status(resp, "token request")
        try:
            body = resp.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise AuthError("token endpoint answered without an access_token") from None
        self.mask.add(token)
        t.store(token, body.get("expires_in"))
        self.count("token_refreshes")
        log.info("access token obtained (valid %ss)", body.get("expires_in", "?"))
        return token

    # ---- requests ------------------------------------------------------------------------
    def _acquire(self) -> None:
        self.limiter.acquire()  # BudgetExhausted when the wait would be too long: never retried

    def _retry_sleep(self, seconds: float) -> None:
        """The back-off between two attempts, counted in stats (call_with_retry's `sleep`)."""
        self.count("retries")
        self.sleep(seconds)

    def _send(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One HTTP exchange; network failures become retryable ServerErrors (masked)."""
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            self.count("requests")
            what = f"{method} {urlsplit(url).path}: {type(exc).__name__}: {exc}"
            raise ServerError(self.mask(what)) from None
        with self._lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += len(resp.content)
            for name, value in resp.headers.items():
                if name.lower().startswith(QUOTA_HEADER_PREFIXES):
                    self.stats["quota"][name] = value
        self.limiter.record_bytes(len(resp.content))  # pages, tokens and photos all count against byte caps
        log.debug("%s %s -> %s (%d bytes)", method, urlsplit(url).path, resp.status_code, len(resp.content))
        return resp

    def _raise_for_status(self, resp: requests.Response, what: str, rate_limit_hits: int = 1) -> None:
        status = resp.status_code
        if status < 400:
            return
        code, msg = odata_message(resp)
        label = f" {code}" if code and code != str(status) else ""
        text = self.mask(f"{what}: HTTP {status}{label}: {msg}")
        body = self.mask(resp.text[:2000])
        if status == 429:
            self.count("rate_limited")
            exc: SourceError = RateLimitError(text, code=status, body=body)
            # Without Retry-After, back off 1, 2, 4 ... s: the limiter spaces requests already,
            # a 429 means the server's view of the budget differs, so slow down clearly.
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            exc.retry_after = wait if wait is not None else float(min(60, 2 ** (rate_limit_hits - 1)))  # type: ignore[attr-defined]
            raise exc
        if status in (401, 403):
            raise AuthError(text, code=status, body=body)
        if status in (408, 425) or status >= 500:
            raise ServerError(text, code=status, body=body)
        raise QueryError(text, code=status, body=body)

    def get(self, url: str, *, headers: dict[str, str] | None = None, what: str = "GET",
            auth: bool = True, user_agent: str | None = None,
            policy: RetryPolicy | None = None) -> requests.Response:
        """GET with permit, bearer token (refreshed once on 401/403), retries and error mapping."""
        refreshed = False
        hits = 0

        def attempt() -> requests.Response:
            nonlocal refreshed, hits
            while True:
                self._acquire()
                token = self._token() if auth else None
                h = {"Accept-Encoding": "gzip", "User-Agent": user_agent or self.user_agent,
                     **(headers or {})}
                if token:
                    h["Authorization"] = f"Bearer {token}"
                resp = self._send("GET", url, headers=h)
                if (resp.status_code in (401, 403) and token and self.tokens.refreshable
                        and not refreshed):
                    refreshed = True
                    self.tokens.invalidate(token)
                    log.info("%s: HTTP %s, renewing the access token once", what, resp.status_code)
                    continue
                if resp.status_code == 429:
                    hits += 1
                self._raise_for_status(resp, what, hits)
                return resp

        try:
            return call_with_retry(attempt, policy or self.policy, what=what, sleep=self._retry_sleep)
        except SourceError as exc:  # the failure record names the request, as RETS failures do
            if getattr(exc, "request", None) is None:
                exc.request = {"method": "GET", "what": what, "url": self.mask(url)}  # type: ignore[attr-defined]
            raise

    def get_json(self, path_or_url: str, params: dict[str, str] | None = None, *,
                 headers: dict[str, str] | None = None, what: str = "query") -> dict[str, Any]:
        url = path_or_url if "://" in path_or_url else self.url(path_or_url, params)
        resp = self.get(url, headers={"Accept": "application/json", **(headers or {})}, what=what)
        try:
            # OData JSON is UTF-8 (a BOM is tolerated); msgspec parses a 1 MB page in C, several
            # times faster than json.loads, and that time is on the fetch's critical path
            try:
                body = _decode_json(resp.content.removeprefix(b"\xef\xbb\xbf"))
            except ValueError:  # not UTF-8 after all: let requests guess the charset
                body = resp.json()
        except ValueError:
            raise ServerError(f"{what}: answer is not JSON ({resp.headers.get('Content-Type')})") from None
        if not isinstance(body, dict):
            raise ServerError(f"{what}: answer is not a JSON object")
        return body

    def close(self) -> None:
        with contextlib.suppress(Exception):  # close must never raise
            self.session.close()
