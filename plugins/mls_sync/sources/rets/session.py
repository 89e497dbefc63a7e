"""The RETS HTTP conversation: login, headers, every request through limiter + retry + re-login.

One place decides what happens to a request: it takes a permit from the provider's RateLimiter,
sends the RETS headers (RETS-Version as negotiated, RETS-UA-Authorization recomputed from the
current session cookie), maps HTTP statuses and ReplyCodes to Source errors, logs in again once
on 401/20037 with a fresh cookie jar, and lets `call_with_retry` back off on network errors,
5xx and rate limits. Secrets are scrubbed from every error it raises.

Credentials (the HTTP Authorization header, Basic or Digest) and cookies go only to the login
URL's origin (scheme, host, port) and to origins the connection explicitly trusts: a photo URL
(`Location=1`) usually points at a CDN, which gets a plain GET. This is enforced below the
transactions (the auth object, the requests Session, the cookie jar's policy), so redirects and
Digest's challenge handling obey it too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth, HTTPDigestAuth
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar

from mls_sync.limits import Budget, RateLimiter, RetryPolicy, call_with_retry, retry_after_seconds
from mls_sync.sources.base import AuthError, Masker, MismatchError, ServerError, SourceError
from mls_sync.sources.rets.auth import LoginInfo, normalise_version, parse_login, ua_digest
from mls_sync.sources.rets.compact import parse_bytes
from mls_sync.sources.rets.errors import SessionExpired, http_error, reply_error

log = logging.getLogger(__name__)
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", re.I)
T = TypeVar("T")
CHUNK = 64 * 1024
SESSION_COOKIE = "RETS-Session-ID"


def charset_of(resp: requests.Response) -> str | None:
    """The charset the server declared (requests guesses ISO-8859-1 for text/*; we do not)."""
    m = _CHARSET.search(resp.headers.get("Content-Type", ""))
    return m.group(1) if m else None


_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int | None]


def origin(url: str) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in: what "the same server" means."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: matches no origin
        port = -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


class OriginScope:
    """The origins that may see our credentials and cookies: the login URL's, plus trusted ones.

    A trusted plain-HTTP origin on port 80 also covers its HTTPS upgrade on 443 (same host, a
    redirect to TLS), as requests itself allows when it keeps auth across redirects.
    """

    def __init__(self, login_url: str, trusted: Iterable[str] = ()) -> None:
        self.origins = {origin(login_url), *(origin(u) for u in trusted)}

    def __call__(self, url: str) -> bool:
        o = origin(url)
        return o in self.origins or (o[0] == "https" and o[2] == 443 and ("http", o[1], 80) in self.origins)


def trusted_origins(value: object) -> list[str]:
    """The connection's `trusted_origins` extra: a list, or one comma-separated string, of URLs."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [str(v).strip() for v in items if str(v).strip()] if isinstance(items, (list, tuple)) else []


class _ScopedCookies(DefaultCookiePolicy):
    """Cookies are kept only from allowed origins (a CDN cannot plant a RETS-Session-ID)."""

    def __init__(self, allowed: OriginScope) -> None:
        super().__init__()
        self._allowed = allowed

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return self._allowed(request.get_full_url()) and super().set_ok(cookie, request)


class _ScopedSession(requests.Session):
    """A requests Session that sends cookies (and, after a redirect, credentials) only where allowed.

    requests copies the session's cookies into a fresh jar for each request, so a jar policy cannot
    stop them; and cookie domains ignore ports, so 127.0.0.1:9000 would get 127.0.0.1:8000's cookies.
    """

    def __init__(self, allowed: OriginScope) -> None:
        super().__init__()
        self._allowed = allowed

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        if not self._allowed(prepared.url or ""):
            prepared.headers.pop("Cookie", None)
        return prepared

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)
        if not self._allowed(prepared_request.url or ""):
            prepared_request.headers.pop("Cookie", None)
            prepared_request.headers.pop("Authorization", None)


class _ChallengeAuth(AuthBase):
    """HTTP Digest, or Basic when the server's challenge asks only for Basic; allowed origins only.

    requests' Digest answers any 401 challenge and, once it has a nonce, signs every request it
    prepares, whatever the host: both are limited to `allowed` here, also for redirects.
    """

    def __init__(self, username: str, password: str, mode: str = "auto",
                 allowed: Callable[[str], bool] = lambda url: True) -> None:
        self._digest = HTTPDigestAuth(username, password)
        self._basic = HTTPBasicAuth(username, password)
        self.mode = mode  # auto | digest | basic
        self.allowed = allowed

    def __repr__(self) -> str:
        return f"<_ChallengeAuth mode={self.mode}>"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self.allowed(r.url or ""):
            return r
        if self.mode == "basic":
            return self._basic(r)
        before = list(r.hooks["response"])
        r = self._digest(r)
        r.hooks["response"] = before + [self._scoped(h) for h in r.hooks["response"][len(before):]]
        if self.mode == "auto":
            r.register_hook("response", self._maybe_basic)
        return r

    def _scoped(self, hook: Callable[..., requests.Response]) -> Callable[..., requests.Response]:
        """A response hook that answers challenges only from allowed origins (a redirect may leave)."""
        def run(r: requests.Response, **kwargs: Any) -> requests.Response:
            return hook(r, **kwargs) if self.allowed(r.request.url or "") else r
        return run

    def _maybe_basic(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        challenge = r.headers.get("www-authenticate", "").lower()
        if r.status_code != 401 or "basic" not in challenge or "digest" in challenge:
            return r
        if not self.allowed(r.request.url or ""):
            return r
        self.mode = "basic"
        r.content  # noqa: B018 - drain so the connection can be reused
        r.close()
        prep = r.request.copy()
        extract_cookies_to_jar(prep._cookies, r.request, r.raw)  # type: ignore[attr-defined]
        prep.prepare_cookies(prep._cookies)  # type: ignore[attr-defined]
        self._basic(prep)
        retried = r.connection.send(prep, **kwargs)  # type: ignore[attr-defined]
        retried.history.append(r)
        retried.request = prep
        return retried


class RetsSession:
    """A logged-in (lazily) RETS session with counted, limited, retried requests."""

    def __init__(self, login_url: str, username: str, password: str, *, user_agent: str,
                 ua_password: str | None = None, version: str = "RETS/1.7.2", auth: str = "auto",
                 request_id: str | None = None, limiter: RateLimiter | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep, trusted: Iterable[str] = ()) -> None:
        self.login_url = login_url
        self.scope = OriginScope(login_url, trusted)
        self._username = username
        self._password = password
        self.user_agent = user_agent
        self._ua_password = ua_password or None
        self.redact = Masker((password, self._ua_password))
        self.version = normalise_version(version)
        self._auth_mode = auth
        self.request_id = request_id
        self.limiter = limiter or RateLimiter(Budget())
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self._sleep = sleep
        self.http = self._new_http()
        self.capabilities: dict[str, str] = {}
        self.login_info: LoginInfo | None = None
        self.logged_in = False
        self.stats: dict[str, Any] = {"requests": Counter(), "bytes": 0, "retries": 0, "relogins": 0}
        self.last_request: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<RetsSession {self.login_url} user={self._username!r} logged_in={self.logged_in}>"

    # -- plumbing ------------------------------------------------------------------------------
    def _new_http(self) -> requests.Session:
        http = _ScopedSession(self.scope)
        http.auth = _ChallengeAuth(self._username, self._password, self._auth_mode, self.scope)
        http.cookies = RequestsCookieJar(_ScopedCookies(self.scope))
        return http

    def _scrub(self, exc: SourceError) -> SourceError:
        exc.args = tuple(self.redact(str(a)) for a in exc.args)
        if exc.body:
            exc.body = self.redact(exc.body)
        return exc

    def session_id(self) -> str:
        for cookie in self.http.cookies:
            if cookie.name == SESSION_COOKIE:
                return cookie.value or ""
        return ""

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": self.user_agent, "RETS-Version": self.version, "Accept": "*/*"}
        if self.request_id:
            h["RETS-Request-ID"] = self.request_id
        if self._ua_password:
            h["RETS-UA-Authorization"] = ua_digest(self.user_agent, self._ua_password, self.request_id or "",
                                                   self.session_id(), self.version)
        return h

    def retry_sleep(self, seconds: float) -> None:
        """The back-off between two attempts, counted in stats (call_with_retry's `sleep`)."""
        self.stats["retries"] += 1
        self._sleep(seconds)

    def iter_body(self, resp: requests.Response) -> Iterator[bytes]:
        """The body in chunks, counted against stats and the byte budget; network errors mapped."""
        try:
            for chunk in resp.iter_content(CHUNK):
                if chunk:
                    self.stats["bytes"] += len(chunk)
                    self.limiter.record_bytes(len(chunk))
                    yield chunk
        except (requests.RequestException, OSError) as exc:
            raise self._scrub(ServerError(
                f"connection broke while reading the reply: {type(exc).__name__}: {exc}")) from None

    def read_all(self, resp: requests.Response, cap: int = 64 * 1024 * 1024) -> bytes:
        out = bytearray()
        for chunk in self.iter_body(resp):
            out += chunk
            if len(out) > cap:
                raise ServerError(f"reply larger than {cap} bytes where a small one was expected")
        return bytes(out)

    def _send(self, transaction: str, url: str, params: dict[str, Any] | None, method: str,
              headers: dict[str, str] | None = None) -> requests.Response:
        self.limiter.acquire()
        self.stats["requests"][transaction] += 1
        # what a failure reports as the request that failed (credentials travel in headers, not here)
        self.last_request = {"transaction": transaction, "method": method, "url": self.redact(url),
                             "params": {k: self.redact(str(v)) for k, v in (params or {}).items()}}
        log.debug("RETS %s %s %s", method, transaction, params)
        try:
            if method == "POST":
                resp = self.http.post(url, data=params, headers=headers or self.headers(), stream=True,
                                      timeout=self.timeout)
            else:
                resp = self.http.get(url, params=params, headers=headers or self.headers(), stream=True,
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            err = ServerError(f"{transaction}: cannot reach {url}: {type(exc).__name__}: {exc}")
            if isinstance(exc, ValueError):  # InvalidURL, MissingSchema...: a setting, not a blip
                err.retryable = False  # type: ignore[attr-defined]
            raise self._scrub(err) from None
        negotiated = resp.headers.get("RETS-Version")
        if negotiated:
            self.version = normalise_version(negotiated, self.version)
        return resp

    def _status_error(self, resp: requests.Response, transaction: str) -> SourceError:
        body = b""
        with contextlib.suppress(requests.RequestException, OSError):
            body = next(iter(resp.iter_content(2048)), b"")
        text = body.decode("utf-8", "replace")
        code_reply, _ = parse_bytes(body) if body.lstrip().startswith(b"<") else (None, [])
        if code_reply is not None and code_reply.code:
            text = f"ReplyCode {code_reply.code} {code_reply.text}"
        return http_error(resp.status_code, resp.reason or "", transaction, text,
                          retry_after_seconds(resp.headers.get("Retry-After")))

    # -- login / logout ------------------------------------------------------------------------
    def login(self) -> LoginInfo:
        """Log in (through the limiter and the retry policy) and read the capability URLs."""
        return self._retrying(self._login_once, "RETS Login")

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """`fn` under the retry policy; a failure that ends it carries the request that failed."""
        try:
            return call_with_retry(fn, self.policy, what=what, sleep=self.retry_sleep)
        except SourceError as exc:
            if getattr(exc, "request", None) is None:
                exc.request = self.last_request  # type: ignore[attr-defined]
            raise

    def _login_once(self) -> LoginInfo:
        resp = self._send("Login", self.login_url, None, "GET")
        with resp:
            if resp.status_code == 401:
                raise self._scrub(AuthError(
                    f"Login refused by {self.login_url} (HTTP 401): check the username and password "
                    "(and user agent / UA password if the server requires them)", code=401))
            if resp.status_code != 200:
                raise self._scrub(self._status_error(resp, "Login"))
            body = self.read_all(resp, cap=4 * 1024 * 1024)
        info = parse_login(body, self.login_url, charset_of(resp))
        if info.code is None:
            raise self._scrub(ServerError(f"Login: {self.login_url} did not answer with a RETS reply",
                                          body=body[:300].decode("utf-8", "replace")))
        if info.code != 0:
            raise self._scrub(reply_error(info.code, info.text, "", "Login",
                                          retry_after_seconds(resp.headers.get("Retry-After"))))
        if "Search" not in info.capabilities and "GetMetadata" not in info.capabilities:
            raise self._scrub(self._not_login(info))
        self.capabilities = info.capabilities
        self.capabilities.setdefault("Login", self.login_url)
        self.login_info = info
        self.logged_in = True
        elsewhere = sorted(name for name, url in self.capabilities.items() if not self.scope(url))
        if elsewhere:
            log.warning("RETS capabilities %s are not on the login URL's origin; they get no credentials or "
                        "cookies (list their origin in the connection's extra.trusted_origins if the MLS "
                        "serves RETS there)", ", ".join(elsewhere))
        action = info.capabilities.get("Action")
        if action:
            try:  # spec: fetch the Action URL after login; its content does not matter
                with self._send("Action", action, None, "GET") as r:
                    self.read_all(r, cap=1024 * 1024)
            except (SourceError, requests.RequestException, OSError) as exc:
                log.warning("RETS Action URL failed after login (ignored): %s", self.redact(str(exc)))
        log.info("RETS login ok (%s, %s)", self.login_url, self.version)
        return info

    def _not_login(self, info: LoginInfo) -> SourceError:
        """ReplyCode 0 without Search or GetMetadata: usually not the Login URL at all (a Logout or
        another transaction answers 0 too), else an account without those rights."""
        said = f'ReplyCode 0 "{info.text}"'.replace(' ""', "")
        if not info.capabilities:
            hint = ", ".join(f"{k}={v}" for k, v in list(info.info.items())[:4])
            return MismatchError(
                f"{self.login_url} answered {said} but listed no capability URLs"
                f"{f' (it said {hint})' if hint else ''}: this URL is probably not the RETS Login "
                "transaction (a Logout or other transaction URL?); set the connection's login URL to "
                "the Login URL the MLS gave you")
        return AuthError(f"Login at {self.login_url} answered {said} but granted neither Search nor "
                         f"GetMetadata (only {', '.join(sorted(info.capabilities))}): if this is the Login URL, "
                         "ask the MLS to enable them for this account")

    def relogin(self) -> None:
        """A fresh cookie jar and auth state, then log in again."""
        self.stats["relogins"] += 1
        self.logged_in = False
        self.http.close()
        self.http = self._new_http()
        log.info("RETS session expired; logging in again")
        self.login()

    def logout(self) -> None:
        """Best effort: a failing logout never fails a sync."""
        if not self.logged_in:
            self.http.close()
            return
        url = self.capabilities.get("Logout")
        self.logged_in = False
        try:
            if url:
                with self._send("Logout", url, None, "GET") as resp:
                    if resp.status_code != 200:
                        raise self._status_error(resp, "Logout")
                    self.read_all(resp, cap=1024 * 1024)
        except Exception as exc:
            log.warning("RETS logout failed (ignored): %s", self.redact(str(exc)))
        finally:
            self.http.close()

    # -- transactions --------------------------------------------------------------------------
    def call(self, transaction: str, params: dict[str, Any], consume: Callable[[requests.Response], T],
             method: str = "GET", keep_open: bool = False) -> T:
        """Run one transaction; `consume` turns the open 200 response into a result (or raises).

        With keep_open the response stays open for the caller (GetObject streams parts).
        Re-login happens at most once per call, retries follow the policy.
        """
        relogged = False

        def attempt() -> T:
            nonlocal relogged
            while True:
                if not self.logged_in:
                    self.login()
                try:
                    return self._once(transaction, params, consume, method, keep_open)
                except SessionExpired as exc:
                    if relogged:
                        raise self._scrub(AuthError(
                            f"{transaction}: the server rejected the session again right after a fresh "
                            f"login ({exc}); check the account's access and the UA credentials",
                            code=exc.code)) from None
                    relogged = True
                    self.relogin()

        return self._retrying(attempt, f"RETS {transaction}")

    def _once(self, transaction: str, params: dict[str, Any], consume: Callable[[requests.Response], T],
              method: str, keep_open: bool) -> T:
        url = self.capabilities.get(transaction)
        if not url:
            err = ServerError(f"the server offers no {transaction} capability after login "
                              f"(it offers {', '.join(sorted(self.capabilities)) or 'none'})")
            err.retryable = False  # type: ignore[attr-defined]
            raise err
        resp = self._send(transaction, url, params, method)
        handed_over = False
        try:
            if resp.status_code == 401:
                raise SessionExpired(f"{transaction}: HTTP 401", code=401)
            if resp.status_code != 200:
                raise self._status_error(resp, transaction)
            result = consume(resp)
            handed_over = keep_open
            return result
        except SourceError as exc:
            raise self._scrub(exc) from None
        finally:
            if not handed_over:
                resp.close()

    def download(self, url: str) -> tuple[bytes, str | None]:
        """GET a URL a RETS reply pointed to (Location=1 photos), through the limiter and retries."""

        def attempt() -> tuple[bytes, str | None]:
            resp = self._send("Download", url, None, "GET", headers={"User-Agent": self.user_agent})
            with resp:
                if resp.status_code != 200:
                    raise self._scrub(self._status_error(resp, "Download"))
                return self.read_all(resp), resp.headers.get("Content-Type")

        return self._retrying(attempt, "photo download")
