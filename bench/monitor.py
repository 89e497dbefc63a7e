"""Peak resident memory and CPU seconds of the bench process, its children, other watched processes
(the mock, the S3 endpoint) and the PostgreSQL server.

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


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _server_cpu(postmaster: psutil.Process) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live processes, and every process
    of it that has exited, however briefly it lived (the postmaster reaps its backends, so their
    time is in its children's times)."""
    t = postmaster.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for proc in postmaster.children():
        with contextlib.suppress(psutil.Error):
            total += _cpu(proc)
    return total


def _backends_of(postmaster: psutil.Process, database: str) -> list[psutil.Process]:
    """The server's processes working for `database` (their title names it: `postgres: USER DB ...`)."""
    out = []
    for proc in postmaster.children():
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()  # [] while a backend is exiting (its memory gone, not yet a zombie)
            if cmdline and database in cmdline[0].split():
                out.append(proc)
    return out


def _postmasters() -> list[psutil.Process]:
    """The PostgreSQL servers' main processes (a `postgres` whose parent is not one)."""
    out = []
    for proc in psutil.process_iter(["name", "ppid"]):
        if not (proc.info.get("name") or "").startswith("postgres"):
            continue
        with contextlib.suppress(psutil.Error):
            if not psutil.Process(proc.info["ppid"]).name().startswith("postgres"):
                out.append(proc)
    return out


class _Sampler:
    """The monitor process's state: roles by pid, the peak RSS seen per pid, and CPU seconds per
    pid since the last reset (a process that started since then counts from zero)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.me = os.getpid()
        self.roles: dict[int, str] = {root: "bench"}
        self.peaks: dict[int, tuple[str, int]] = {}
        self.cpu_start: dict[int, float] = {}
        self.cpu_seen: dict[int, tuple[str, float]] = {}
        self.postmasters: list[psutil.Process] = []
        self.database: str | None = None  # the bench's database: its backends' CPU is `postgres:db`

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
                self.cpu_seen[proc.pid] = (name, _cpu(proc))
            except psutil.Error:
                continue
            prev = self.peaks.get(proc.pid)
            if prev is None or rss > prev[1]:
                self.peaks[proc.pid] = (name, rss)

    def sample_postgres(self) -> None:
        """The server with its backends, live and exited, as one figure per server; and, when the
        bench's database is known, the backends serving it (`postgres:db`). The server may be the
        machine's, shared with other work (tests, another bench): only the second is the bench's
        alone. A backend that started and ended between two samples is missing from it; the
        engine's and the floor's connections are pooled and live through a run."""
        for pm in self.postmasters:
            with contextlib.suppress(psutil.Error):
                self.cpu_seen[pm.pid] = ("postgres", _server_cpu(pm))
                if self.database:
                    for proc in _backends_of(pm, self.database):
                        with contextlib.suppress(psutil.Error):
                            self.cpu_seen[proc.pid] = ("postgres:db", _cpu(proc))

    def reset(self) -> None:
        self.peaks = {}
        self.cpu_seen = {}
        self.postmasters = _postmasters()
        self.sample()
        self.sample_postgres()
        self.cpu_start = {pid: cpu for pid, (_, cpu) in self.cpu_seen.items()}

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) per role since the last reset; exited processes count up to
        their last sample."""
        self.sample_postgres()
        by: dict[str, float] = {}
        for pid, (name, cpu) in self.cpu_seen.items():
            by[name] = by.get(name, 0.0) + cpu - self.cpu_start.get(pid, 0.0)
        return {k: round(v, 3) for k, v in sorted(by.items())}

    def peak(self) -> dict[str, Any]:
        self.sample()
        if not self.peaks:
            return {"process": None, "pid": None, "rss_mb": 0.0, "by_process": {}, "cpu_seconds": self.cpu()}
        pid, (name, rss) = max(self.peaks.items(), key=lambda kv: kv[1][1])
        by: dict[str, float] = {}
        for n, r in self.peaks.values():
            by[n] = max(by.get(n, 0.0), round(r / MB, 1))
        return {"process": name, "pid": pid, "rss_mb": round(rss / MB, 1), "by_process": by,
                "cpu_seconds": self.cpu()}


POSTGRES_EVERY = 5  # samples: the server's process list costs a /proc walk


def _serve(conn: Connection, root: int, interval: float) -> None:
    s = _Sampler(root)
    ticks = 0
    while True:
        if not conn.poll(interval):
            s.sample()
            ticks += 1
            if ticks % POSTGRES_EVERY == 0:
                s.sample_postgres()
            continue
        cmd, *args = conn.recv()
        if cmd == "watch":
            s.roles[args[0]] = args[1]
        elif cmd == "database":
            s.database = args[0]
        elif cmd == "reset":
            s.reset()
        elif cmd == "peak":
            conn.send(s.peak())
        elif cmd == "stop":
            return


class RssMonitor:
    """Samples RSS every `interval` seconds in a child process; `peak()` names the largest seen
    and gives each role's CPU seconds since `reset()`.

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
        try:
            self._conn.send(msg)
        except OSError as exc:
            raise RuntimeError(f"the RSS monitor process is gone (exit code {self._proc and self._proc.exitcode}); "
                               "its traceback is on the bench's stderr") from exc

    def watch(self, pid: int, role: str) -> None:
        self._send("watch", pid, role)

    def reset(self) -> None:
        self._send("reset")

    def database(self, name: str) -> None:
        """Count the CPU of the PostgreSQL backends serving database `name` as `postgres:db`."""
        self._send("database", name)

    def peak(self) -> dict[str, Any]:
        """{"process", "pid", "rss_mb", "by_process": {name: mb}, "cpu_seconds": {name: s}} since `reset()`."""
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
            with contextlib.suppress(RuntimeError):  # already gone
                self._send("stop")
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
