"""Rate limiting and retry classification, in one place for every protocol.

Providers publish budgets (MLS Grid: 2 req/s, 7,200/h, 40,000/day, 4 GB/h) and suspend
accounts that exceed them, so every request a source makes first takes a permit here, and
every failure is classified here: retried with backoff (network, 5xx, rate limit), or not
(auth after one re-login, data errors).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TypeVar

from mls_sync.sources.base import AuthError, QueryError, RateLimitError, ServerError, SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")

# HTTP statuses worth another try; everything else 4xx is our fault and is not retried.
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# RETS reply codes meaning "too busy / over quota, come back later".
RETS_RATE_LIMIT_CODES = frozenset({20050, 20209, 20210, 20211, 20212})


ARRIVAL_MARGIN_SECONDS = 0.1


class BudgetExhausted(RateLimitError):
    """Our own budget says no for longer than we may wait: retrying inside the task only burns
    time (the next permit is further away than any backoff), so this is never retried here."""

    retryable = False


@dataclass(frozen=True)
class Budget:
    """A provider's published limits; None means unlimited."""

    per_second: float | None = None
    per_hour: int | None = None
    per_day: int | None = None
    bytes_per_hour: int | None = None
    # How long a caller may be made to wait for a permit before we give up with RateLimitError.
    max_wait_seconds: float = 900.0


class RateLimiter:
    """Sliding-window limiter shared by every thread of one task's client.

    Sliding windows (not token buckets) because providers count requests in the last hour,
    and a burst allowed by a bucket refill is exactly what gets an account suspended.
    """

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.budget = budget
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()  # request times within the last day
        self._bytes: deque[tuple[float, int]] = deque()
        self.requests = 0
        self.bytes = 0
        self.waited = 0.0

    def _windows(self) -> list[tuple[float, float]]:
        b = self.budget
        out: list[tuple[float, float]] = []
        if b.per_second:
            # Express "n per second" as a minimum spacing when n < 1, else a 1-second window
            # holding at most floor(n) requests (2.5/s must never let a third one through).
            # The provider counts requests when they *arrive*; a few ms of jitter lands a request
            # spaced exactly 1/n s apart inside its window, so the window carries a margin.
            if b.per_second >= 1:
                out.append((1.0 + ARRIVAL_MARGIN_SECONDS, math.floor(b.per_second)))
            else:
                out.append((1.0 / b.per_second + ARRIVAL_MARGIN_SECONDS, 1))
        if b.per_hour:
            out.append((3600.0, b.per_hour))
        if b.per_day:
            out.append((86400.0, b.per_day))
        return out

    def _delay_for_request(self, now: float) -> float:
        horizon = max((w for w, _ in self._windows()), default=0.0)
        while self._recent and self._recent[0] <= now - horizon:
            self._recent.popleft()
        delay = 0.0
        for window, limit in self._windows():
            inside = [t for t in self._recent if t > now - window] if window < horizon else self._recent
            if len(inside) >= limit:
                # The request that must leave the window before one more fits in it.
                oldest = inside[len(inside) - int(limit)]
                delay = max(delay, oldest + window - now)
        return delay

    def _delay_for_bytes(self, now: float) -> float:
        cap = self.budget.bytes_per_hour
        if not cap:
            return 0.0
        while self._bytes and self._bytes[0][0] <= now - 3600:
            self._bytes.popleft()
        used = sum(n for _, n in self._bytes)
        if used < cap or not self._bytes:
            return 0.0
        return self._bytes[0][0] + 3600 - now

    def _try_take(self) -> float:
        """Take a permit now (0.0), or say how many seconds until one fits."""
        with self._lock:
            now = self._clock()
            delay = max(self._delay_for_request(now), self._delay_for_bytes(now))
            if delay <= 0:
                self._recent.append(now)
                return 0.0
            return delay

    def acquire(self) -> None:
        """Block until one more request fits every window; raise if that is too far away."""
        waited = 0.0
        while True:
            delay = self._try_take()
            if delay <= 0:
                with self._lock:
                    self.requests += 1
                    self.waited += waited
                return
            if waited + delay > self.budget.max_wait_seconds:
                raise BudgetExhausted(
                    f"provider request budget exhausted: next request allowed in {delay:.0f}s, "
                    f"more than max_wait_seconds={self.budget.max_wait_seconds:.0f}; "
                    "the run will resume from its checkpoint on retry"
                )
            self._sleep(delay)
            waited += delay

    def record_bytes(self, n: int) -> None:
        """Count downloaded bytes against the hourly byte budget."""
        with self._lock:
            self.bytes += n
            if self.budget.bytes_per_hour:
                self._bytes.append((self._clock(), n))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter, honouring Retry-After."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 5)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


# OSErrors that are about this machine or a wrong setting, not about a flaky network.
_LOCAL_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                    NotADirectoryError)


def is_retryable(exc: BaseException) -> bool:
    """Network trouble and rate limits are retried; auth and data errors never are.

    An exception may opt out with a false `retryable` attribute (e.g. a 404 on a capability URL,
    our own exhausted budget). Errors that are also ValueErrors (requests' InvalidURL,
    MissingSchema, InvalidHeader; ssl certificate verification) are configuration mistakes that
    no retry fixes, although requests makes them OSErrors.
    """
    if getattr(exc, "retryable", None) is False:
        return False
    if isinstance(exc, (AuthError, QueryError)):
        return False
    if isinstance(exc, (RateLimitError, ServerError)):
        return True
    if isinstance(exc, SourceError):
        return exc.category in ("network", "rate_limit")
    if isinstance(exc, (ValueError, _LOCAL_OS_ERRORS)):
        return False
    # requests/urllib3 connection problems (all OSErrors) without importing requests here
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "nan"/"inf" parse as floats but would make time.sleep fail or hang.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *, what: str,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `fn`, retrying retryable failures; the last failure propagates unchanged."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc) or attempt >= policy.attempts:
                raise
            wait = policy.delay(attempt, getattr(exc, "retry_after", None))
            log.warning("%s failed (attempt %d/%d, %s: %s); retrying in %.1fs",
                        what, attempt, policy.attempts, type(exc).__name__, exc, wait)
            sleep(wait)
