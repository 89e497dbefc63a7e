"""The cyclic garbage collector's young threshold, raised while batches of records are built."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()


@contextmanager
def gc_for_batches(young: int = 20_000) -> Iterator[None]:
    """Let the cyclic collector run every `young` allocations instead of every 700 inside a block.

    A stage allocates hundreds of thousands of dicts, lists and strings per 10,000 records (parsed
    rows, mapped rows, batches), which refcounting frees once a batch is written; with the default
    threshold the collector stops every 700 of them, scans the batches still in flight and promotes
    them into older generations, whose collections then also walk every object an Airflow task
    process holds (about 170,000 after its imports). Measured on a 10k transform_load in such a
    process: 10-25 % of its CPU. A RETS search page (2,500 rows held until the page is complete)
    raises it too: 36 young collections in a 10k walk, 4-5 ms of its 67 ms of CPU, without.

    The threshold is process-wide, and blocks nest and overlap across threads (a stage, and the
    page parse on its prefetch thread): the first block in sets it, the last one out restores it.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(max(young, _saved[0]), *_saved[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
