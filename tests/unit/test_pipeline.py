"""pipeline: background prefetch and writes keep order, bound memory and surface errors."""

from __future__ import annotations

import threading
import time

import pytest
from mls_sync.pipeline import EarlierStepFailed, Turn, Writer, prefetched


def test_prefetched_keeps_order_and_runs_ahead_by_one() -> None:
    produced: list[int] = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    got = []
    with prefetched(items(), depth=1) as it:
        for x in it:
            time.sleep(0.02)
            # the producer is at most the queued item plus the one it holds ahead of us
            assert len(produced) <= x + 3
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetched_raises_the_producers_error_after_its_items() -> None:
    def items():
        yield 1
        raise ConnectionError("MLS went away")

    got = []
    with pytest.raises(ConnectionError, match="went away"), prefetched(items()) as it:
        for x in it:
            got.append(x)
    assert got == [1]


def test_leaving_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    with pytest.raises(RuntimeError), prefetched(items()) as it:
        for x in it:
            if x == 2:
                raise RuntimeError("landing failed")
    assert closed.is_set()


def test_writer_runs_steps_in_order_one_at_a_time() -> None:
    log: list[str] = []
    running = threading.Lock()

    def step(n: int, turn: Turn) -> None:
        assert running.acquire(blocking=False), "two steps ran at once"
        try:
            time.sleep(0.01)
            log.append(f"w{n}")
        finally:
            running.release()

    with Writer() as w:
        for n in range(4):
            w.submit(step, n)
            log.append(f"m{n}")
    assert [x for x in log if x[0] == "w"] == ["w0", "w1", "w2", "w3"]
    # the caller never ran more than one step ahead of the writes
    assert log.index("w0") < log.index("m2") and log.index("w1") < log.index("m3")


def test_writer_error_reaches_the_caller_and_stops_further_steps() -> None:
    done: list[int] = []

    def step(n: int, turn: Turn) -> None:
        if n == 1:
            raise ValueError("constraint violated")
        done.append(n)

    with pytest.raises(ValueError, match="constraint"), Writer() as w:
        for n in range(5):
            w.submit(step, n)
    assert done == [0]


def test_parallel_writer_overlaps_steps_but_finishes_them_in_order() -> None:
    log: list[str] = []
    lock = threading.Lock()
    both_running = threading.Event()
    running = [0]

    def step(n: int, turn: Turn) -> None:
        with lock:
            running[0] += 1
            if running[0] == 2:
                both_running.set()
        # the later step's slow part runs while the earlier one is still in its own
        time.sleep(0.05 if n % 2 == 0 else 0.01)
        turn.wait()
        with lock:
            running[0] -= 1
            log.append(f"done{n}")

    with Writer(parallel=2) as w:
        for n in range(6):
            w.submit(step, n)
    assert both_running.is_set()
    assert log == [f"done{n}" for n in range(6)]


def test_parallel_writer_rolls_back_the_step_after_a_failure_and_raises_the_first_error() -> None:
    finished: list[int] = []
    refused: list[int] = []

    def step(n: int, turn: Turn) -> None:
        if n == 1:
            time.sleep(0.02)
            raise ValueError("constraint violated")
        try:
            turn.wait()
        except EarlierStepFailed:
            refused.append(n)
            raise
        finished.append(n)

    with pytest.raises(ValueError, match="constraint"), Writer(parallel=2) as w:
        for n in range(6):
            w.submit(step, n)
    assert finished == [0]
    assert refused == [2]  # in flight beside the failing step; nothing later was started


def test_prompt_handoffs_shortens_the_switch_interval_and_restores_it_even_on_error() -> None:
    import sys

    from mls_sync.pipeline import prompt_handoffs

    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError), prompt_handoffs(0.001):
        assert sys.getswitchinterval() == pytest.approx(0.001)
        raise RuntimeError("stage failed")
    assert sys.getswitchinterval() == before
    with prompt_handoffs(1.0):  # never lengthens a shorter interval someone set
        assert sys.getswitchinterval() == before
