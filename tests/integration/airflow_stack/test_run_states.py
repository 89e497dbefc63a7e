"""Run states and retries decided by the real scheduler: a failed sync is a failed run with one
alert, failures a retry cannot fix are not retried, server errors are, with exponential backoff."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

import pytest
import requests
import sqlalchemy as sa

from tests.integration.airflow_stack.api import wait_for
from tests.integration.airflow_stack.conftest import WRONG_PASSWORD, Stack
from tests.integration.alert_sinks import text_of

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

NO_PHOTOS = {"include_photos": False}


def _counters(stack: Stack) -> dict:
    return requests.get(f"{stack.mock_url}/_control/counters", timeout=30).json()


def _history(stack: Stack, dag_id: str, run_id: str) -> dict:
    engine = sa.create_engine(stack.topo.properties_db_url)
    try:
        with engine.connect() as c:
            return dict(c.execute(sa.text("SELECT * FROM mls_sync_history WHERE dag_id = :d AND dag_run_id = :r"),
                                  {"d": dag_id, "r": run_id}).mappings().one())
    finally:
        engine.dispose()


def _by_task(stack: Stack, dag_id: str, run_id: str) -> dict[str, dict]:
    return {t["task_id"]: t for t in stack.api.task_instances(dag_id, run_id) if t["map_index"] < 0}


def _alerts_for(stack: Stack, provider: str) -> tuple[list, list]:
    mails = [m for m in stack.inbox.messages if f"({provider})" in m["Subject"]]
    hooks = [h for h in stack.webhook if f"({provider})" in h.get("text", "")]
    return mails, hooks


def test_a_failed_sync_is_a_failed_run_with_one_alert_and_one_login(stack: Stack) -> None:
    api, dag_id = stack.api, "mls_sync__bad_login"
    logins_before = _counters(stack)["requests"].get("rets:login", 0)
    run_id = api.trigger(dag_id, NO_PHOTOS)
    assert api.wait_run(dag_id, run_id) == "failed", api.states(dag_id, run_id)
    tis = _by_task(stack, dag_id, run_id)
    assert tis["fetch"]["state"] == "failed" and tis["fetch"]["try_number"] == 1, tis["fetch"]  # not retried
    assert tis["finalize"]["state"] == "failed" and tis["announce"]["state"] == "upstream_failed"
    assert tis["transform_load"]["state"] == "upstream_failed"
    # one login attempt in the whole run (a challenge and the refused answer): no lock-out by retries
    assert _counters(stack)["requests"].get("rets:login", 0) - logins_before == 2

    row = _history(stack, dag_id, run_id)
    assert row["state"] == "failed" and row["error_summary"].startswith("fetch failed: AuthError"), row

    # the DAG's failure callback (run by the dag-processor) sends exactly one alert per channel
    wait_for("the run's alert", lambda: all(_alerts_for(stack, "bad_login")), stack.topo, 120)
    time.sleep(5)  # nothing else follows
    mails, hooks = _alerts_for(stack, "bad_login")
    assert len(mails) == 1 and len(hooks) == 1, ([m["Subject"] for m in mails], hooks)
    body = text_of(mails[0])
    for needle in ("sync failed", "Task: fetch", "Error category: auth", f"Run: {run_id}",
                   "Detail: fetch failed: AuthError"):
        assert needle in body or needle in mails[0]["Subject"], (needle, body)
    assert WRONG_PASSWORD not in body and WRONG_PASSWORD not in hooks[0]["text"]


def test_a_missing_connection_fails_at_once_and_says_how_to_fix_it(stack: Stack) -> None:
    api, dag_id = stack.api, "mls_sync__no_conn"
    run_id = api.trigger(dag_id, NO_PHOTOS)
    assert api.wait_run(dag_id, run_id) == "failed"
    tis = _by_task(stack, dag_id, run_id)
    assert tis["plan"]["state"] == "success"  # the database-only task runs without the MLS connection
    assert tis["fetch"]["state"] == "failed" and tis["fetch"]["try_number"] == 1
    row = _history(stack, dag_id, run_id)
    summary = row["error_summary"]
    assert "ConnectionNotFound" in summary and "airflow connections add mls_nowhere" in summary, summary


def test_server_errors_are_retried_with_exponential_backoff(stack: Stack) -> None:
    """Two tries of fetch meet a 503 storm (each try makes two requests); the third succeeds."""
    api, dag_id = stack.api, "mls_sync__demo_rets"
    requests.post(f"{stack.mock_url}/_control/fault", json={"kind": "http_error", "status": 503, "count": 4,
                                                            "path": "/rets/search"}, timeout=30).raise_for_status()
    try:
        run_id = api.trigger(dag_id, NO_PHOTOS)
        assert api.wait_run(dag_id, run_id, timeout=300) == "success", api.states(dag_id, run_id)
    finally:
        requests.post(f"{stack.mock_url}/_control/clear_faults", json={}, timeout=30)
    tries = sorted(api.tries(dag_id, run_id, "fetch"), key=lambda t: t["try_number"])
    assert [t["try_number"] for t in tries] == [1, 2, 3], tries
    assert [t["state"] for t in tries] == ["failed", "failed", "success"], tries

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    gaps = [(at(b["start_date"]) - at(a["end_date"])).total_seconds() for a, b in itertools.pairwise(tries)]
    # retry_delay 2 s, exponential: at least 2 s before try 2 and at least 4 s before try 3
    assert gaps[0] >= 2 and gaps[1] >= 4, gaps
    row = _history(stack, dag_id, run_id)
    assert row["state"] == "success" and row["error_summary"] is None and not row["report"].get("failures"), row

    # what an operator reads in the task logs at Airflow's default level: a line per page and batch
    fetch_log = _task_log(stack, dag_id, run_id, "fetch", 3)
    assert "fetch: page 1 landed" in fetch_log and "records/s" in fetch_log, fetch_log[-2000:]
    assert f"landed {row['records_fetched']} records in" in fetch_log
    load_log = _task_log(stack, dag_id, run_id, "transform_load", 1)
    assert "transform_load: batch to key" in load_log and "added" in load_log, load_log[-2000:]
    assert "DeprecationWarning" not in fetch_log + load_log


def _task_log(stack: Stack, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    """A task try's log as the UI shows it, through the REST API."""
    r = stack.api.http.get(f"{stack.api.base}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
                           f"{try_number}", params={"full_content": "true"},
                           headers={"Accept": "application/json"}, timeout=30)
    r.raise_for_status()
    content = r.json()["content"]
    return "\n".join(str(e.get("event", e)) if isinstance(e, dict) else str(e) for e in content)
