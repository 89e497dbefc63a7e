"""Who may take a provider's lease over: the policy, without a database."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

from mls_sync import lease

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _row(**kw) -> dict:
    host, pid = lease.me()
    row = {"sync_id": 7, "provider_id": "demo_rets", "writer": True, "holder": "CLI mls-sync sync",
           "run_label": "cli__x", "host": host, "pid": pid, "process_bound": True, "stage": "fetch",
           "stale_after_seconds": lease.PROCESS_STALE_SECONDS, "acquired_at": NOW - timedelta(minutes=3),
           "heartbeat_at": NOW - timedelta(seconds=5), "now": NOW}
    return {**row, **kw}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_keeps_its_lease() -> None:
    assert lease.gone_reason(_row()) is None


def test_a_cli_run_is_gone_with_its_process_on_this_host_at_once() -> None:
    pid = _dead_pid()
    assert lease.gone_reason(_row(pid=pid)) == f"its process {pid} on {lease.me()[0]} is gone"
    assert lease.gone_reason(_row(pid=pid, host="another-host")) is None  # not ours to ask: wait for silence


def test_a_dag_runs_dead_task_process_is_not_the_end_of_the_run() -> None:
    """Airflow retries a killed task and it resumes: only silence past the retry back-off counts."""
    row = _row(pid=_dead_pid(), process_bound=False, holder="DAG mls_sync__demo_rets", stale_after_seconds=2700)
    assert lease.gone_reason(row) is None
    assert lease.gone_reason({**row, "heartbeat_at": NOW - timedelta(minutes=44)}) is None
    assert "no heartbeat since" in lease.gone_reason({**row, "heartbeat_at": NOW - timedelta(minutes=46)})


def test_a_silent_cli_run_elsewhere_is_gone_after_two_minutes() -> None:
    row = _row(host="another-host", heartbeat_at=NOW - timedelta(seconds=lease.PROCESS_STALE_SECONDS + 1))
    assert "no heartbeat since" in lease.gone_reason(row)


def test_the_refusal_names_the_run_where_and_since_when() -> None:
    text = lease.describe("demo_rets", _row(run_label="manual__1", holder="DAG mls_sync__demo_rets", pid=4711,
                                            host="worker-2"))
    assert text.startswith("demo_rets is being synced by run manual__1 (DAG mls_sync__demo_rets) since ")
    assert "(stage fetch on worker-2 pid 4711, last heartbeat 5 s ago)" in text
    between = lease.describe("demo_rets", _row(stage="", pid=None, host="worker-2"))
    assert "(between tasks, last on worker-2, last heartbeat 5 s ago)" in between
