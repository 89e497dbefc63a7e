"""RateLimiter windows with a fake clock; retry classification and backoff."""

from __future__ import annotations

import pytest
import requests
from mls_sync.limits import (
    ARRIVAL_MARGIN_SECONDS,
    Budget,
    BudgetExhausted,
    RateLimiter,
    RetryPolicy,
    call_with_retry,
    is_retryable,
    retry_after_seconds,
)
from mls_sync.sources.base import AuthError, QueryError, RateLimitError, ServerError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(**budget: float) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(Budget(**budget), clock=clock, sleep=clock.sleep), clock


def test_per_second_window() -> None:
    rl, clock = limiter(per_second=2)
    for _ in range(6):
        rl.acquire()
    # 2 per (1 s + arrival margin): three windows of two requests
    assert rl.requests == 6 and clock.now - 1000.0 == pytest.approx(2 * (1.0 + ARRIVAL_MARGIN_SECONDS))


def test_fractional_per_second_never_exceeds_floor() -> None:
    rl, clock = limiter(per_second=2.5)
    for _ in range(3):
        rl.acquire()
    assert clock.now > 1000.0  # the third request had to wait: 2.5/s allows 2 in any second


def test_slow_rate_spacing() -> None:
    rl, clock = limiter(per_second=0.5)
    rl.acquire()
    rl.acquire()
    assert clock.slept == [pytest.approx(2.0 + ARRIVAL_MARGIN_SECONDS)]


def test_hourly_budget_and_max_wait() -> None:
    rl, clock = limiter(per_hour=3, max_wait_seconds=10)
    for _ in range(3):
        rl.acquire()
    with pytest.raises(BudgetExhausted) as info:
        rl.acquire()
    assert isinstance(info.value, RateLimitError) and not is_retryable(info.value)
    clock.now += 3600
    rl.acquire()


def test_byte_budget() -> None:
    rl, clock = limiter(bytes_per_hour=100, max_wait_seconds=7200)
    rl.acquire()
    rl.record_bytes(150)
    rl.acquire()  # waits for the hour to pass
    assert clock.now == pytest.approx(1000.0 + 3600)
    assert rl.bytes == 150


@pytest.mark.parametrize(("exc", "retry"), [
    (ServerError("503"), True), (RateLimitError("429"), True), (AuthError("no"), False),
    (QueryError("bad"), False), (requests.ConnectionError("reset"), True), (requests.Timeout("slow"), True),
    (TimeoutError(), True), (requests.exceptions.InvalidURL("x"), False),
    (requests.exceptions.MissingSchema("x"), False), (FileNotFoundError("x"), False), (ValueError("x"), False),
    (KeyError("x"), False)])
def test_classification(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_opt_out_attribute() -> None:
    exc = ServerError("404")
    exc.retryable = False  # type: ignore[attr-defined]
    assert not is_retryable(exc)


@pytest.mark.parametrize(("value", "want"), [("5", 5.0), (" 2.5 ", 2.5), ("-3", 0.0), ("nan", None),
                                            ("inf", None), ("soon", None), ("", None), (None, None),
                                            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after(value: str | None, want: float | None) -> None:
    assert retry_after_seconds(value) == want


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=5, base_delay=1, max_delay=8)
    for attempt, cap in ((1, 1), (2, 2), (3, 4), (4, 8), (9, 8)):
        assert all(0 <= policy.delay(attempt) <= cap for _ in range(50))
    assert policy.delay(1, retry_after=7) == 7 and policy.delay(1, retry_after=999) == 40


def test_call_with_retry_retries_then_raises_last() -> None:
    clock = FakeClock()
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            err = ServerError("503")
            err.retry_after = 2  # type: ignore[attr-defined]
            raise err
        return "ok"

    assert call_with_retry(flaky, RetryPolicy(attempts=3), what="t", sleep=clock.sleep) == "ok"
    assert clock.slept == [2, 2]
    with pytest.raises(QueryError):
        call_with_retry(lambda: (_ for _ in ()).throw(QueryError("bad")), RetryPolicy(), what="t",
                        sleep=clock.sleep)

    def always() -> None:
        raise RateLimitError("busy")

    with pytest.raises(RateLimitError):
        call_with_retry(always, RetryPolicy(attempts=2, base_delay=0), what="t", sleep=clock.sleep)


def test_per_second_window_keeps_an_arrival_margin() -> None:
    """2/s means 2 per 1.1 s here: requests spaced exactly 1 s apart can arrive inside one window."""
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 3))
        now[0] += s

    limiter = RateLimiter(Budget(per_second=2), clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert slept == [1.0 + ARRIVAL_MARGIN_SECONDS] * 2
