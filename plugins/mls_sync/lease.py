"""One writing run per provider at a time, whoever starts it (DAG, CLI, dashboard).

A run takes a lease in `plan` (a `mls_sync_leases` row, in the transaction that opens its
history row) and gives it back in `finalize`. Every stage refreshes it (host, pid, heartbeat),
in the transaction of each page or batch it commits and from a thread every HEARTBEAT_SECONDS,
so the stages of one run may run as separate processes on separate hosts (Airflow tasks) and a
run that lost its lease can never commit another batch. A second writer is refused at once
with `RunConflict`, naming the holder; a dry run takes a lease of its own that claims nothing, so
it runs beside a writer and touches no provider state.

A lease whose holder is gone is taken over, and its run closed as failed, by the next `plan`
(or the status poll): a process-bound holder (the CLI runs every stage in one process) is gone
when its process is dead on this host or silent for PROCESS_STALE_SECONDS; a DAG run only when
silent for longer than Airflow may leave between two of its tasks (retry back-off included),
since a killed task is retried by Airflow and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mls_sync.store import errors as err_store
from mls_sync.store import leases, runs
from mls_sync.store.tables import Tables

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 20.0
PROCESS_STALE_SECONDS = 120
# Airflow may leave this long between two tasks of a run besides the retry back-off (scheduling,
# a pool slot, a worker starting).
DAG_GAP_SECONDS = 900


class RunConflict(RuntimeError):
    """Another run holds the provider, or this run lost its lease: never worth a retry now."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def me() -> tuple[str, int]:
    """(host, pid) of this process, asked each time (a forked child is another process)."""
    return socket.gethostname(), os.getpid()


def dag_stale_seconds(provider: ProviderConfig) -> int:
    """Silence after which a DAG run's lease may be taken: the longest retry back-off plus a gap."""
    return int(provider.retry.max_retry_delay_seconds) + DAG_GAP_SECONDS


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def gone_reason(row: dict[str, Any]) -> str | None:
    """Why the lease's holder is gone, or None while it may still be alive."""
    host, _ = me()
    if row["process_bound"] and row["pid"] and row["host"] == host and not pid_alive(int(row["pid"])):
        return f"its process {row['pid']} on {host} is gone"
    silent = (row["now"] - row["heartbeat_at"]).total_seconds()
    if silent > row["stale_after_seconds"]:
        return f"no heartbeat since {_at(row['heartbeat_at'])} ({silent / 60:.0f} min)"
    return None


def _at(dt: datetime) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def describe(provider_id: str, row: dict[str, Any]) -> str:
    """`demo_rets is being synced by run X (DAG mls_sync__demo_rets) since ...` with where and when."""
    host = f" on {row['host']}" + (f" pid {row['pid']}" if row["pid"] else "") if row["host"] else ""
    where = f"stage {row['stage']}{host}" if row["stage"] else f"between tasks, last{host}"
    beat = (row["now"] - row["heartbeat_at"]).total_seconds()
    return (f"{provider_id} is being synced by run {row['run_label'] or row['sync_id']} ({row['holder']}) "
            f"since {_at(row['acquired_at'])} ({where}, last heartbeat {beat:.0f} s ago); "
            "try again when it has finished")


def holder_name(dag_id: str | None, process_bound: bool) -> str:
    return "CLI mls-sync sync" if process_bound else f"DAG {dag_id}" if dag_id else "engine"


def take(conn: Connection, t: Tables, provider: ProviderConfig, run: dict[str, Any], *, process_bound: bool,
         stage: str) -> None:
    """Give `run` its lease (the caller holds the status row lock and checked `check_free`)."""
    host, pid = me()
    leases.put(conn, t, sync_id=run["id"], provider_id=provider.provider_id, writer=not run["dry_run"],
               holder=holder_name(run["dag_id"], process_bound), run_label=run["dag_run_id"], host=host,
               pid=pid, process_bound=process_bound, stage=stage,
               stale_after_seconds=PROCESS_STALE_SECONDS if process_bound else dag_stale_seconds(provider))


def check_free(conn: Connection, t: Tables, provider: ProviderConfig, sync_id: int | None = None) -> None:
    """Raise RunConflict when a writer other than `sync_id` holds the provider (after `sweep`)."""
    other = leases.writer_of(conn, t, provider.provider_id)
    if other is not None and other["sync_id"] != sync_id:
        raise RunConflict(describe(provider.provider_id, other), other)


def sweep(conn: Connection, t: Tables, provider: ProviderConfig) -> list[dict[str, Any]]:
    """Close the provider's abandoned runs as failed and free their leases; returns what was closed.

    Abandoned: a lease whose holder is gone (`gone_reason`), or a history row left `running`
    without any lease (written before leases existed) older than a DAG run may live.
    """
    closed = []
    for row in leases.of_provider(conn, t, provider.provider_id):
        reason = gone_reason(row)
        if reason:
            closed.append(_close_abandoned(conn, t, provider, row["sync_id"], f"{row['holder']}: {reason}",
                                           touch_status=row["writer"]))
    h, le = t.mls_sync_history, t.mls_sync_leases
    legacy_after = max(dag_stale_seconds(provider), provider.alerts.max_duration_minutes * 8 * 60)
    legacy = conn.execute(sa.select(h.c.id).where(
        h.c.provider_id == provider.provider_id, h.c.state == "running",
        h.c.started_at < sa.func.now() - timedelta(seconds=legacy_after),
        ~sa.exists().where(le.c.sync_id == h.c.id))).all()
    for (sid,) in legacy:
        closed.append(_close_abandoned(conn, t, provider, sid, f"running over {legacy_after // 60} min with no "
                                       "lease: started before leases existed", touch_status=False))
    return closed


def _close_abandoned(conn: Connection, t: Tables, provider: ProviderConfig, sync_id: int, why: str,
                     touch_status: bool) -> dict[str, Any]:
    summary = f"abandoned ({why}); closed as failed by the next run"
    run = runs.get_run(conn, t, sync_id)
    if run["state"] == "running":
        # the status shows the provider's current run: only its own writer lease may change it
        run = runs.close_run(conn, t, sync_id, state="failed", error_summary=summary, watermark_after=None,
                             move_watermark=False, touch_status=touch_status and not run["dry_run"],
                             unresolved_errors=err_store.unresolved_count(conn, t, provider.provider_id))
    leases.release(conn, t, sync_id)
    log.warning("%s: run %s %s", provider.provider_id, sync_id, summary)
    return {"sync_id": sync_id, "dag_run_id": run["dag_run_id"], "reason": summary}


def hold(engine: Engine, t: Tables, provider: ProviderConfig, plan: dict[str, Any], stage: str) -> None:
    """At the start of a stage: this run's lease, refreshed; or taken back when it was freed.

    A DAG run whose lease was freed (its run finished, or was closed as abandoned, and an
    operator or Airflow runs one of its tasks again) takes it back when no other writer holds
    the provider, and its history row is running again. A CLI run never does: its lease left
    only with its process. Otherwise RunConflict.
    """
    sid = plan["sync_id"]
    host, pid = me()
    with engine.begin() as c:
        if leases.beat(c, t, sid, host=host, pid=pid, stage=stage):
            return
        runs.lock_status(c, t, provider.provider_id)
        if leases.beat(c, t, sid, host=host, pid=pid, stage=stage):
            return
        run = runs.get_run(c, t, sid)
        if plan.get("process_bound"):
            raise RunConflict(f"run {run['dag_run_id'] or sid} of {provider.provider_id} lost its lease "
                              f"({run['error_summary'] or 'freed'}); start a new run")
        sweep(c, t, provider)
        if not run["dry_run"]:
            check_free(c, t, provider, sid)
        runs.reopen(c, t, sid)
        take(c, t, provider, run, process_bound=False, stage=stage)
        log.warning("%s: run %s took its lease back for %s", provider.provider_id, sid, stage)


def beat(conn: Connection, t: Tables, plan: dict[str, Any], stage: str | None = None) -> None:
    """The heartbeat inside a stage's own transaction: a run that lost its lease commits nothing."""
    host, pid = me()
    if not leases.beat(conn, t, plan["sync_id"], host=host, pid=pid, stage=stage):
        raise RunConflict(f"run {plan['sync_id']} of {plan.get('provider_id', '?')} lost its lease "
                          "(another run took the provider over); this batch was not committed")


def park(engine: Engine, t: Tables, plan: dict[str, Any]) -> None:
    """At the end of a DAG task: no process works for the run until its next task starts."""
    if plan.get("process_bound"):
        return
    host, _ = me()
    with engine.begin() as c:
        leases.beat(c, t, plan["sync_id"], host=host, pid=None, stage="")


class _Heartbeat(threading.Thread):
    def __init__(self, engine: Engine, t: Tables, sync_id: int) -> None:
        super().__init__(name=f"lease-heartbeat-{sync_id}", daemon=True)
        self.engine, self.t, self.sync_id = engine, t, sync_id
        self.stop = threading.Event()
        self.users = 1

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            host, pid = me()
            try:
                with self.engine.begin() as c:
                    alive = leases.beat(c, self.t, self.sync_id, host=host, pid=pid)
            except Exception as exc:  # the database is away: the stage's own writes will say so
                log.warning("lease heartbeat of run %s failed: %s", self.sync_id, exc)
                continue
            if not alive:
                log.warning("run %s lost its lease; its next commit will fail", self.sync_id)
                return


_beating: dict[int, _Heartbeat] = {}
_beating_lock = threading.Lock()


@contextmanager
def keep_alive(engine: Engine, t: Tables, sync_id: int) -> Iterator[None]:
    """Heartbeat the run's lease from a thread while the block runs (nested blocks share one)."""
    with _beating_lock:
        hb = _beating.get(sync_id)
        if hb is not None and hb.is_alive():
            hb.users += 1
        else:
            hb = _beating[sync_id] = _Heartbeat(engine, t, sync_id)
            hb.start()
    try:
        yield
    finally:
        with _beating_lock:
            hb.users -= 1
            if hb.users == 0:
                hb.stop.set()
                _beating.pop(sync_id, None)
