"""The bench's resource monitor keeps sampling while PostgreSQL backends come and go."""

from __future__ import annotations

import psutil
import pytest

from bench import monitor


class _Proc:
    def __init__(self, cmdline: list[str] | Exception) -> None:
        self._cmdline = cmdline

    def cmdline(self) -> list[str]:
        if isinstance(self._cmdline, Exception):
            raise self._cmdline
        return self._cmdline


class _Postmaster:
    def __init__(self, *children: _Proc) -> None:
        self._children = list(children)

    def children(self) -> list[_Proc]:
        return self._children


def test_an_exiting_backend_with_no_command_line_is_skipped_not_fatal() -> None:
    """A backend between losing its memory and becoming a zombie has an empty /proc cmdline; it once
    killed the monitor process, and the bench's next reset failed with a broken pipe."""
    ours = _Proc(["postgres: postgres mls_bench 127.0.0.1(5432) idle"])
    other = _Proc(["postgres: postgres test 127.0.0.1(5433) idle"])
    exiting = _Proc([])
    gone = _Proc(psutil.NoSuchProcess(1))
    found = monitor._backends_of(_Postmaster(exiting, ours, gone, other), "mls_bench")  # type: ignore[arg-type]
    assert found == [ours]


def test_a_dead_monitor_is_named_in_the_error() -> None:
    m = monitor.RssMonitor(interval=0.05).start()
    try:
        assert m._proc is not None
        m._proc.kill()
        m._proc.join(5)
        with pytest.raises(RuntimeError, match="RSS monitor process is gone"):
            for _ in range(50):  # the pipe's buffer takes a few messages before it breaks
                m.reset()
    finally:
        m.stop()
