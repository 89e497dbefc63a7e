"""Processes killed (SIGKILL) and database connections lost mid-run: the retry or the next run
finishes the job, nothing is stored twice or lost, counts add up, no run is left running."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.integration.faults.harness import PgProxy, World

pytestmark = pytest.mark.integration
NO_PHOTOS = {"include_photos": False}
HISTORY = "SELECT {col} FROM mls_sync_history WHERE id = :s"


def test_sigkill_in_fetch_in_transform_load_and_in_media_then_the_retries_finish_the_run(world) -> None:
    """A DAG run whose worker is killed in each stage; Airflow runs the stage again in a new process."""
    w: World = world(listings=100, seed=25, photos_per_listing=1, row_cap=10)
    plan = w.dag_plan("demo_rets", "scheduled__killed")
    sid = plan["sync_id"]

    w.mls.configure(latency=0.2)
    fetch = w.stages("demo_rets", plan, "fetch")
    w.wait_for("fetch landing pages", HISTORY.format(col="pages_fetched"), lambda v: v >= 2, fetch, s=sid)
    w.kill(fetch)
    w.mls.configure(latency=0)
    w.inline("demo_rets", plan, "fetch")  # Airflow's retry, in another process
    assert w.run(sid)["report"]["fetch_resumed"] is True

    load = w.stages("demo_rets", plan, "transform_load", slow=0.3)
    w.wait_for("load committing batches", HISTORY.format(col="added"), lambda v: v >= 20, load, s=sid)
    w.kill(load)
    w.inline("demo_rets", plan, "transform_load", "reconcile")

    photos = w.stages("demo_rets", plan, "media")
    w.wait_for("photos stored", "SELECT count(*) FROM property_media", lambda v: v >= 6, photos)
    w.kill(photos)
    w.inline("demo_rets", plan, "media", "finalize")

    run = w.run(sid)
    assert run["state"] == "success" and run["photos_failed"] == 0
    assert run["photos_added"] == w.scalar("SELECT count(*) FROM property_media WHERE state = 'stored'")
    # every MLS request of every attempt, the killed ones' included (at most the few in flight
    # at each kill are missing); a Digest login is two HTTP requests to one transaction of ours
    served = w.mls.counters()["requests"]
    transactions = sum(served.values()) - served.get("rets:login", 0) // 2 - served.get("rets:logout", 0)
    assert transactions - 3 * 3 <= run["requests"] <= transactions, (run["requests"], served)
    w.check("demo_rets", photos=True)


def test_a_killed_cli_run_is_closed_by_the_status_poll_and_the_next_run_gets_everything(world) -> None:
    from mls_sync import sync

    w: World = world(listings=160, seed=26, photos_per_listing=1, max_page_size=20)
    assert w.cli("sync", "--provider", "demo_reso", "--no-photos").returncode == 0
    changed = w.mls.mutate(price=8, status=4)
    w.mls.configure(latency=0.3)
    killed = w.cli("sync", "--provider", "demo_reso", "--no-photos", wait=False)
    w.wait_for("the second run planned", "SELECT count(*) FROM mls_sync_history WHERE state = 'running'",
               lambda v: v == 1, killed)
    w.kill(killed)  # while it logs in and fetches (every request takes 0.3 s)
    w.mls.configure(latency=0)
    dead = w.last_run("demo_reso")
    assert dead["state"] == "running"

    polled = sync.status_poll(w.ctx("demo_reso"))  # every few minutes, whether a run comes or not
    assert polled["abandoned_closed"] == 1
    dead = w.run(dead["id"])
    assert dead["state"] == "failed" and f"process {killed.pid} on " in dead["error_summary"]
    status = w.rows("SELECT * FROM mls_sync_status")[0]
    assert status["state"] == "failed" and status["last_error"] == dead["error_summary"]

    after = w.cli("sync", "--provider", "demo_reso", "--no-photos")
    assert after.returncode == 0, after.stderr
    result = json.loads(after.stdout.splitlines()[-1])
    assert result["mode"] == "incremental" and result["updated"] >= len(changed["price"])
    w.check("demo_reso")


def test_database_lost_mid_run_is_one_line_exit_6_and_the_run_is_closed_once_it_is_back(world) -> None:
    w: World = world(listings=160, seed=27, photos_per_listing=1, row_cap=10)
    url = sa.engine.make_url(w.db_url)
    if not url.host or url.host.startswith("/"):
        pytest.skip("the test database is not on TCP")
    proxy = PgProxy(url.host, url.port or 5432)
    env = {**w.env, "MLS_DATABASE_URL": url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)}
    try:
        w.mls.configure(latency=0.3)
        run = w.cli("sync", "--provider", "demo_rets", "--no-photos", wait=False, env=env)
        w.wait_for("the run fetching", "SELECT max(pages_fetched) FROM mls_sync_history", lambda v: (v or 0) >= 1,
                   run)
        proxy.cut()
        code, err = w.finish(run)
        assert code == 6, err
        assert err.startswith("mls-sync: database error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert w.last_run("demo_rets")["state"] == "running"  # nobody could close it: the database was away

        proxy.restore()
        w.mls.configure(latency=0)
        after = w.cli("sync", "--provider", "demo_rets", "--no-photos", env=env)
        assert after.returncode == 0, after.stderr
        lost, done = w.rows("SELECT * FROM mls_sync_history ORDER BY id")
        assert lost["state"] == "failed" and "abandoned" in lost["error_summary"]
        assert done["mode"] == "full"
        w.check("demo_rets")
    finally:
        proxy.close()


def test_a_connection_terminated_mid_load_fails_the_task_and_its_retry_finishes_the_run(world) -> None:
    w: World = world(listings=200, seed=28, photos_per_listing=1)
    plan = w.dag_plan("demo_reso", "scheduled__terminated", NO_PHOTOS)
    sid = plan["sync_id"]
    w.inline("demo_reso", plan, "fetch")
    load = w.stages("demo_reso", plan, "transform_load", slow=0.4)
    w.wait_for("load committing batches", HISTORY.format(col="added"), lambda v: v >= 20, load, s=sid)
    w.wait_for("a batch inside its transaction",
               "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
               "AND application_name = 'mls_sync' AND state = 'idle in transaction'", lambda v: v >= 1, load)
    code, err = w.finish(load)
    assert code != 0 and "terminating connection" in err
    failure = w.rows("SELECT * FROM mls_sync_errors WHERE ref = :r", r=f"sync:{sid}")
    assert [(f["stage"], f["category"], f["resolved_at"]) for f in failure] == [("transform_load", "network", None)]

    w.inline("demo_reso", plan, "transform_load", "reconcile", "finalize")
    run = w.run(sid)
    assert run["state"] == "success" and run["added"] == w.scalar("SELECT count(*) FROM properties")
    resolved = w.rows("SELECT resolution FROM mls_sync_errors WHERE ref = :r", r=f"sync:{sid}")
    assert resolved == [{"resolution": "succeeded"}]  # the retry that worked resolved it
    w.check("demo_reso")


def test_runs_left_running_by_older_code_are_closed_when_no_dag_run_can_still_be_alive(world) -> None:
    """Rows `running` since before leases existed (a killed `mls-sync sync` of older code) made the
    overdue alert fire for ever; once older than the DAG run timeout they are closed as failed."""
    from mls_sync import sync

    w: World = world(listings=20, seed=29, photos_per_listing=1)
    ctx = w.ctx("demo_reso")
    hours = ctx.provider.alerts.max_duration_minutes * 8 / 60
    with w.db.begin() as c:
        c.execute(sa.text("INSERT INTO mls_sync_status (provider_id, state, current_sync_id) VALUES "
                          "('demo_reso', 'running', 1)"))
        ids = c.execute(sa.text(
            "INSERT INTO mls_sync_history (provider_id, dag_id, dag_run_id, mode, state, started_at) VALUES "
            "('demo_reso', 'mls_sync__demo_reso', 'cli__old', 'full', 'running', now() - make_interval(hours => :h)),"
            "('demo_reso', 'mls_sync__demo_reso', 'cli__recent', 'full', 'running', now() - interval '5 minutes') "
            "RETURNING id"), {"h": int(hours) + 1}).scalars().all()
    assert sync.close_abandoned(ctx) and [r["state"] for r in map(w.run, ids)] == ["failed", "running"]
    assert "started before leases existed" in w.run(ids[0])["error_summary"]
