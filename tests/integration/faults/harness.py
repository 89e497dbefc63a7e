"""The fault suite's harness: the real CLI and the engine's stage functions in subprocesses, against
the mock MLS over HTTP and the test session's PostgreSQL, and the checks a user relies on after
any fault (`World.check`).

A DAG run is played the way Airflow runs it: `plan` in one process, each stage in its own
process (`World.stages`), a killed stage run again in a new process (Airflow's retry).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from devstack import ROOT, mls_connections

# A DAG task in a process of its own: see `run_stages`.
STAGES_CHILD = "import sys; from tests.integration.faults.harness import child; child(sys.argv[1:])"


def run_stages(ctx: Any, plan: dict[str, Any], names: list[str] | tuple[str, ...]) -> None:
    """Run the named stage functions of a run in order (`media`: every planned batch)."""
    from mls_sync import media, sync
    from mls_sync.objectstore import storage_settings, store_from_settings

    for name in names:
        if name == "media":
            store = store_from_settings(storage_settings(ctx.provider.storage))
            for batch in media.plan_batches(ctx, plan):
                media.run_batch(ctx, plan, batch, store)
        else:
            getattr(sync, name)(ctx, plan)


def child(argv: list[str]) -> None:
    """`provider stages plan slow stop_at`: with `slow` seconds before every upsert of LOAD_BATCH=20
    records and one writer, so that a kill lands inside transform_load; with `stop_at` N, the
    process stops itself (SIGSTOP) before its Nth upsert, when its batch's transaction holds no
    lock yet: a worker frozen mid-load, which `World.wake` continues."""
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env
    from mls_sync.store import properties as prop_store
    from mls_sync.store.db import get_engine

    provider, names, plan = argv[0], argv[1].split(","), json.loads(argv[2])
    slow, stop_at = float(argv[3]), int(argv[4])
    if slow:
        real = prop_store.upsert_rows
        calls = iter(range(1, 1 << 30))

        def upsert(*args: Any, **kwargs: Any) -> Any:
            time.sleep(slow)
            if next(calls) == stop_at:
                os.kill(os.getpid(), signal.SIGSTOP)
            return real(*args, **kwargs)

        prop_store.upsert_rows = upsert
        sync.LOAD_BATCH, sync.WRITERS = 20, 1
    cfg = find_provider(provider)
    run_stages(sync.SyncContext(provider=cfg, db=get_engine(), mls=from_env(cfg.connection_id)), plan, names)


def fast_mappings(target: Path) -> Path:
    """The demo YAMLs with retries that fit a test: 3 attempts, second-long back-offs, no budget,
    small photo batches (several GetObject replies and mapped batches per run)."""
    target.mkdir(parents=True, exist_ok=True)
    for p in (ROOT / "include" / "mappings").glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        data["retry"] = {"task_retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2}
        data["limits"] = {**data.get("limits", {}), "request_attempts": 3, "requests_per_second": None,
                          "requests_per_hour": None, "requests_per_day": None, "max_wait_seconds": 5}
        data["media"] = {**data.get("media", {}), "batch_listings": 10, "sizes": {"thumbnail": 160},
                         "formats": ["jpeg"]}
        if data["protocol"] == "rets":
            data["rets"] = {**data.get("rets", {}), "photos_per_request": 8}
        (target / p.name).write_text(yaml.safe_dump(data))
    return target


@dataclass
class World:
    """A mock MLS, the test database and the environment every child process gets."""

    mls: Any
    db: sa.Engine
    db_url: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = {**os.environ, **mls_connections(self.mls.url, self.mls.credentials),
                    "MLS_DATABASE_URL": self.db_url, "MLS_MAPPINGS_DIR": str(fast_mappings(self.tmp / "mappings")),
                    "MLS_MEDIA_STORAGE": json.dumps({"backend": "local", "root": str(self.tmp / "media")}),
                    "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}

    # -- running things ---------------------------------------------------------------------------
    def spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """A child in a process group of its own (a kill takes its photo workers with it)."""
        proc = subprocess.Popen(args, env=env or self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> Any:
        proc = self.spawn([sys.executable, "-m", "mls_sync.cli", *args], env)
        if not wait:
            return proc
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stages(self, provider: str, plan: dict[str, Any], *names: str, slow: float = 0.0,
               stop_at: int = 0) -> subprocess.Popen:
        return self.spawn([sys.executable, "-c", STAGES_CHILD, provider, ",".join(names), json.dumps(plan),
                           str(slow), str(stop_at)])

    @staticmethod
    def wait_stopped(proc: subprocess.Popen, timeout: float = 60) -> None:
        """Until the child has stopped itself (`child`'s stop_at)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
            if proc.poll() is not None:
                raise AssertionError(f"the child ended instead of stopping: {proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError("the child did not stop")

    def inline(self, provider: str, plan: dict[str, Any], *names: str) -> None:
        """Stages run in this process (a retried task: a process other than the killed one)."""
        run_stages(self.ctx(provider), plan, names)

    def finish(self, proc: subprocess.Popen) -> tuple[int, str]:
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL to the child and everything it started: a worker host dying."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)

    def ctx(self, provider: str) -> Any:
        from mls_sync import sync
        from mls_sync.config import find_provider
        from mls_sync.connections import from_env

        cfg = find_provider(provider)
        return sync.SyncContext(provider=cfg, db=self.db, mls=from_env(cfg.connection_id))

    def dag_plan(self, provider: str, run_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """`plan` as the DAG's first task runs it (this process, which then leaves the run alone)."""
        from mls_sync import sync

        return sync.plan(self.ctx(provider), dag_id=f"mls_sync__{provider}", dag_run_id=run_id,
                         conf=conf or {}, trigger="manual")

    # -- looking ----------------------------------------------------------------------------------
    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.db.connect() as c:
            return [dict(r) for r in c.execute(sa.text(sql), params).mappings()]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.connect() as c:
            return c.execute(sa.text(sql), params).scalar()

    def run(self, sync_id: int) -> dict[str, Any]:
        return self.rows("SELECT * FROM mls_sync_history WHERE id = :s", s=sync_id)[0]

    def last_run(self, provider: str) -> dict[str, Any]:
        return self.rows("SELECT * FROM mls_sync_history WHERE provider_id = :p ORDER BY id DESC LIMIT 1",
                         p=provider)[0]

    def wait_for(self, what: str, sql: str, until: Callable[[Any], bool], proc: subprocess.Popen | None = None,
                 timeout: float = 60, **params: Any) -> Any:
        """Poll a query until `until(value)`; fail early if the child doing the work has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.scalar(sql, **params)
            if until(value):
                return value
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{what}: the child ended first ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"{what}: not reached in {timeout} s (last {value!r})")

    # -- what a user relies on --------------------------------------------------------------------
    def check(self, provider: str, *, photos: bool = False) -> None:
        """After any fault and the runs that follow it:

        - no run is left running and no lease is held;
        - every listing the MLS holds in the sync's scope is stored exactly once, with the MLS's
          current values (price, status, modification time);
        - the watermark is not past any record that is not stored as the MLS has it now;
        - the runs' `added` counts add up to the rows stored;
        - with photos: every photo the MLS lists is stored or in the error table.
        """
        from mls_sync.config import find_provider

        assert self.rows("SELECT id, dag_run_id, stage_timings FROM mls_sync_history WHERE state = 'running'") == []
        assert self.scalar("SELECT count(*) FROM mls_sync_leases") == 0
        cfg = find_provider(provider)
        scope = set(cfg.full_sync_statuses)
        stored = {r["listing_key"]: r for r in self.rows(
            "SELECT * FROM properties WHERE provider_id = :p AND deleted_at IS NULL", p=provider)}
        expected = {k: self.mls.listing(k) for k in self.mls.all_keys()}
        in_scope = {k for k, v in expected.items() if v["StandardStatus"] in scope}
        assert in_scope and in_scope <= set(stored), sorted(in_scope - set(stored))[:5]
        for key, row in stored.items():
            want = expected.get(key)
            assert want is not None, f"{key} stored but not in the MLS"
            assert row["price"] == Decimal(str(want["ListPrice"])).quantize(Decimal("0.01")), key
            assert row["status"] == want["StandardStatus"], key
            assert row["mls_modified_at"] == _ts(want["ModificationTimestamp"]), key
        status = self.rows("SELECT * FROM mls_sync_status WHERE provider_id = :p", p=provider)[0]
        assert status["state"] != "running" and status["current_sync_id"] is None
        assert status["watermark"] is not None
        assert status["watermark"] <= max(r["mls_modified_at"] for r in stored.values())
        added = self.scalar("SELECT sum(added) FROM mls_sync_history WHERE provider_id = :p AND NOT dry_run",
                            p=provider)
        assert added == self.scalar("SELECT count(*) FROM properties WHERE provider_id = :p", p=provider)
        if photos:
            self.check_photos(provider, in_scope)

    def check_photos(self, provider: str, keys: set[str]) -> None:
        media = {(r["listing_key"], r["media_order"]) for r in self.rows(
            "SELECT listing_key, media_order FROM property_media WHERE provider_id = :p AND state = 'stored'",
            p=provider)}
        errors = {r["ref"] for r in self.rows(
            "SELECT ref FROM mls_sync_errors WHERE provider_id = :p AND stage = 'media' AND resolved_at IS NULL",
            p=provider)}
        for key in keys:
            for order in range(self.mls.listing(key)["PhotosCount"]):
                assert (key, order) in media or f"{key}:{order}" in errors, f"photo {key}:{order} lost"


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class PgProxy:
    """A TCP relay in front of PostgreSQL that can cut every connection and refuse new ones: the
    database going away from a run's point of view (a network split, a failover)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _shut(s)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            _shut(s)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()
