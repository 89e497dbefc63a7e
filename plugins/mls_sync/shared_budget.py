"""A provider's request budget shared by every task, worker and run that talks to its MLS.

An MLS counts the requests of an account, not of a task: a sliding window kept in one process
forgets, when the task ends, what it spent, so the next task (the status poll every few
minutes, a retry, a photo batch on another worker) starts a fresh hour and together they can
overrun the hourly and daily budgets that get accounts suspended. Splitting the budget between
the pool's slots instead wastes most of it while one task runs alone (the fetch stage, which
waits on it). So the windows live in PostgreSQL (`mls_rate_permits`): each request takes a
permit there, under a per-provider lock, and every task gets the whole budget while it is free.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from mls_sync.limits import Budget, RateLimiter
from mls_sync.store import permits
from mls_sync.store.tables import Tables

FORGET_EVERY = 500  # takes tried by one limiter between deletions of day-old rows


class SharedRateLimiter(RateLimiter):
    """`RateLimiter` whose windows are the provider's permits in the store, not this process's.

    A provider without a budget costs no database round trip.
    """

    def __init__(self, budget: Budget, db: Engine, t: Tables, provider_id: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(budget, sleep=sleep)
        self.db, self.t, self.provider_id = db, t, provider_id
        self._tries = 0  # takes tried (a wait retries): every FORGET_EVERY-th also deletes day-old rows

    def _try_take(self) -> float:
        windows = self._windows()
        if not windows and not self.budget.bytes_per_hour:
            return 0.0
        with self._lock:
            forget = self._tries % FORGET_EVERY == 0
            self._tries += 1
        with self.db.begin() as c:
            if forget:
                permits.forget_old(c, self.t, self.provider_id)
            return permits.take(c, self.provider_id, windows, self.budget.bytes_per_hour)

    def record_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n
        if self.budget.bytes_per_hour and n > 0:
            with self.db.begin() as c:
                permits.add_bytes(c, self.t, self.provider_id, n)
