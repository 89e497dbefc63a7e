"""A provider's request budget is the account's, whichever task spends it (`shared_budget`)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from mls_sync.limits import Budget, BudgetExhausted, RateLimiter
from mls_sync.shared_budget import SharedRateLimiter
from mls_sync.store.tables import tables


def _limiter(db, budget: Budget, provider: str = "p1") -> SharedRateLimiter:
    return SharedRateLimiter(budget, db, tables(db), provider)


def _permit_times(db, provider: str = "p1") -> list[float]:
    with db.connect() as c:
        rows = c.execute(sa.text("SELECT extract(epoch FROM at) FROM mls_rate_permits "
                                 "WHERE provider_id = :p AND requests > 0 ORDER BY at"), {"p": provider}).scalars()
        return [float(x) for x in rows]


def test_two_tasks_at_once_stay_within_the_per_second_budget_together(db) -> None:
    """Each task used to get its own window (a share of the budget, or the whole of it in a
    process that did not know of the other); the MLS sees their sum."""
    a, b = _limiter(db, Budget(per_second=8)), _limiter(db, Budget(per_second=8))
    threads = [threading.Thread(target=lambda lim=lim: [lim.acquire() for _ in range(12)]) for lim in (a, b, a)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    times = _permit_times(db)
    assert len(times) == 36 and a.requests == 24 and b.requests == 12
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= 8, f"{busiest} requests inside one second against a budget of 8"
    assert a.waited + b.waited > 0  # they waited for each other, not only for themselves


def test_a_new_task_sees_what_earlier_tasks_spent_this_hour(db) -> None:
    """The status poll every few minutes, a retried task, a photo batch on another worker: each
    a new process. With windows in memory each started a fresh hour."""
    earlier = _limiter(db, Budget(per_hour=3, max_wait_seconds=5))
    for _ in range(3):
        earlier.acquire()
    later = _limiter(db, Budget(per_hour=3, max_wait_seconds=5))
    with pytest.raises(BudgetExhausted, match=r"next request allowed in 3\d\d\ds"):
        later.acquire()
    in_memory = RateLimiter(Budget(per_hour=3, max_wait_seconds=5))  # what each task had before
    in_memory.acquire()
    _limiter(db, Budget(per_hour=3), provider="p2").acquire()  # another account is not charged


def test_downloaded_bytes_count_across_tasks(db) -> None:
    first = _limiter(db, Budget(bytes_per_hour=1000, max_wait_seconds=5))
    first.acquire()
    first.record_bytes(600)
    second = _limiter(db, Budget(bytes_per_hour=1000, max_wait_seconds=5))
    second.acquire()  # 600 of 1,000 used: room left
    second.record_bytes(600)
    assert first.bytes == 600 and second.bytes == 600
    with pytest.raises(BudgetExhausted):
        _limiter(db, Budget(bytes_per_hour=1000, max_wait_seconds=5)).acquire()


def test_no_budget_costs_no_round_trip_and_old_permits_are_forgotten(db) -> None:
    free = _limiter(db, Budget())
    for _ in range(5):
        free.acquire()
    assert free.requests == 5 and _permit_times(db) == []
    with db.begin() as c:
        c.execute(sa.text("INSERT INTO mls_rate_permits (provider_id, at) VALUES ('p1', now() - :d)"),
                  {"d": timedelta(hours=26)})
        c.execute(sa.text("INSERT INTO mls_rate_permits (provider_id, at) VALUES ('p1', now() - :d)"),
                  {"d": timedelta(hours=2)})
    _limiter(db, Budget(per_day=100)).acquire()
    assert len(_permit_times(db)) == 2  # the day-old one is gone; two hours ago is still in the day
