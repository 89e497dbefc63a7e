"""Overlap waiting with work: one stage's I/O runs in a thread while the caller does the next step.

A sync alternates between Python work (parsing a page, mapping records) and waiting (on the MLS,
on PostgreSQL). On two cores, letting PostgreSQL write batch N while Python maps batch N+1, or
letting the next page download while this one is landed, takes the wait off the critical path.
Order is kept and at most one item is in flight ahead of the caller, so memory stays bounded and
checkpoints still commit in sequence; an error on either side stops both and is raised to the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


@contextmanager
def prefetched(items: Iterable[T], depth: int = 1, name: str = "prefetch") -> Iterator[Iterator[T]]:
    """Iterate `items` in a background thread, `depth` items ahead of the consumer.

    Leaving the block early (break or error) stops the producer at its next item and closes it.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((True, item)):
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None and stop.is_set():
                close()
        put((True, _DONE))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()

    def consume() -> Iterator[T]:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item

    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


class Writer:
    """Runs write steps one at a time, in order, in a background thread.

    `submit` first waits for the previous step (raising its error), so the caller is never more
    than one step ahead; `close` waits for the last one.
    """

    def __init__(self, name: str = "writer") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[Any] | None = None

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._pending is not None:
                self._pending.cancel()
                self._pending.exception()  # let a running step finish before the pool goes
        finally:
            self._pool.shutdown(wait=True)
