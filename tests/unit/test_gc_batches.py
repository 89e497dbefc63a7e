"""The collector's young threshold during batch work: raised, never lowered, restored by the last block out."""

from __future__ import annotations

import gc
import threading

import pytest
from mls_sync.gc_batches import gc_for_batches


def test_gc_for_batches_raises_the_young_threshold_and_restores_it_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), gc_for_batches(young=50_000):
        assert gc.get_threshold() == (50_000, *before[1:])
        raise RuntimeError("stage failed")
    assert gc.get_threshold() == before
    with gc_for_batches(young=10):  # never lowers a higher threshold someone set
        assert gc.get_threshold()[0] == before[0]


def test_overlapping_blocks_on_two_threads_restore_the_threshold_only_when_both_are_out() -> None:
    """A stage's block and its prefetch thread's page blocks overlap in any order; whichever
    leaves last restores the threshold the process had, and none leaves it raised."""
    before = gc.get_threshold()
    inside, leave = threading.Event(), threading.Event()

    def page() -> None:
        with gc_for_batches(young=30_000):
            inside.set()
            leave.wait(5)

    stage = gc_for_batches(young=30_000)
    stage.__enter__()
    worker = threading.Thread(target=page)
    worker.start()
    assert inside.wait(5)
    stage.__exit__(None, None, None)  # the stage ends first (an error) while the page is parsed
    assert gc.get_threshold()[0] == 30_000  # still in use on the other thread
    leave.set()
    worker.join(5)
    assert gc.get_threshold() == before
