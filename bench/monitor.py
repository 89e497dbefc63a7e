"""Peak resident memory of the bench process, its children and other watched processes (the mock)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import psutil

MB = 1024 * 1024


class RssMonitor:
    """Samples RSS every `interval` seconds on a thread; `peak()` names the largest process seen.

    Watches this process, all its descendants (Airflow task runners, the photo pool, peer
    subprocesses) and any extra pid registered with `watch(pid, role)` (the mock MLS).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.roles: dict[int, str] = {os.getpid(): "bench"}
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, pid: int, role: str) -> None:
        with self._lock:
            self.roles[pid] = role

    def reset(self) -> None:
        with self._lock:
            self.peaks = {}

    def _procs(self) -> list[tuple[psutil.Process, str]]:
        me = psutil.Process()
        out: list[tuple[psutil.Process, str]] = [(me, "bench")]
        with contextlib.suppress(psutil.Error):
            out += [(c, self.roles.get(c.pid, "child")) for c in me.children(recursive=True)]
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
            with self._lock:
                prev = self.peaks.get(proc.pid)
                if prev is None or rss > prev[1]:
                    self.peaks[proc.pid] = (name, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> RssMonitor:
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def peak(self) -> dict[str, Any]:
        """{"process", "pid", "rss_mb", "by_process": {name: mb}} for the samples since `reset()`."""
        self.sample()
        with self._lock:
            peaks = dict(self.peaks)
        if not peaks:
            return {"process": None, "pid": None, "rss_mb": 0.0, "by_process": {}}
        pid, (name, rss) = max(peaks.items(), key=lambda kv: kv[1][1])
        by: dict[str, float] = {}
        for n, r in peaks.values():
            by[n] = max(by.get(n, 0.0), round(r / MB, 1))
        return {"process": name, "pid": pid, "rss_mb": round(rss / MB, 1), "by_process": by}
