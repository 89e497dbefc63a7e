"""Peak resident memory of the bench process, its children and other watched processes (the mock).

The sampling runs in a process of its own: walking /proc ten times a second costs CPU, and on a
thread of the bench process it also held the GIL against the sync being measured (whose fetch
and write stages run threads of their own).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

import psutil

MB = 1024 * 1024


class _Sampler:
    """The monitor process's state: roles by pid and the peak RSS seen per pid."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.me = os.getpid()
        self.roles: dict[int, str] = {root: "bench"}
        self.peaks: dict[int, tuple[str, int]] = {}

    def _procs(self) -> list[tuple[psutil.Process, str]]:
        out: list[tuple[psutil.Process, str]] = []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.root)
            out.append((root, "bench"))
            out += [(c, self.roles.get(c.pid, "child")) for c in root.children(recursive=True) if c.pid != self.me]
        known = {p.pid for p, _ in out}
        for pid, role in list(self.roles.items()):
            if pid not in known:
                try:
                    out.append((psutil.Process(pid), role))
                except psutil.Error:
                    continue
        return out

    def sample(self) -> None:
        for proc, role in self._procs():
            try:
                rss = proc.memory_info().rss
                name = role if role != "child" else f"child:{proc.name()}"
            except psutil.Error:
                continue
            prev = self.peaks.get(proc.pid)
            if prev is None or rss > prev[1]:
                self.peaks[proc.pid] = (name, rss)

    def peak(self) -> dict[str, Any]:
        self.sample()
        if not self.peaks:
            return {"process": None, "pid": None, "rss_mb": 0.0, "by_process": {}}
        pid, (name, rss) = max(self.peaks.items(), key=lambda kv: kv[1][1])
        by: dict[str, float] = {}
        for n, r in self.peaks.values():
            by[n] = max(by.get(n, 0.0), round(r / MB, 1))
        return {"process": name, "pid": pid, "rss_mb": round(rss / MB, 1), "by_process": by}


def _serve(conn: Connection, root: int, interval: float) -> None:
    s = _Sampler(root)
    while True:
        if not conn.poll(interval):
            s.sample()
            continue
        cmd, *args = conn.recv()
        if cmd == "watch":
            s.roles[args[0]] = args[1]
        elif cmd == "reset":
            s.peaks = {}
        elif cmd == "peak":
            conn.send(s.peak())
        elif cmd == "stop":
            return


class RssMonitor:
    """Samples RSS every `interval` seconds in a child process; `peak()` names the largest seen.

    Watches this process, all its descendants (Airflow task runners, the photo pool, peer
    subprocesses) and any extra pid registered with `watch(pid, role)` (the mock MLS).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None

    def _send(self, *msg: Any) -> None:
        if self._conn is None:
            raise RuntimeError("RssMonitor.start() first")
        self._conn.send(msg)

    def watch(self, pid: int, role: str) -> None:
        self._send("watch", pid, role)

    def reset(self) -> None:
        self._send("reset")

    def peak(self) -> dict[str, Any]:
        """{"process", "pid", "rss_mb", "by_process": {name: mb}} for the samples since `reset()`."""
        self._send("peak")
        assert self._conn is not None
        return self._conn.recv()

    def start(self) -> RssMonitor:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, os.getpid(), self.interval), name="rss-monitor",
                                 daemon=True)
        self._proc.start()
        child.close()
        return self

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._send("stop")
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
