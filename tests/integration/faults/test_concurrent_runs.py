"""Two runs of one provider at once: only one writes, the other is refused at once (naming the
holder) or, for a dry run, runs beside it without touching it; a holder that is gone is taken
over and its run closed as failed, and can commit nothing more."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.integration.faults.harness import World

pytestmark = pytest.mark.integration
NO_PHOTOS = {"include_photos": False}


def test_a_second_cli_run_is_refused_while_the_first_lives_and_takes_over_once_it_is_killed(world) -> None:
    w: World = world(listings=300, seed=21, photos_per_listing=1, row_cap=20)
    w.mls.configure(latency=0.3)  # a dozen pages: the first run is still fetching when the second starts
    first = w.cli("sync", "--provider", "demo_rets", "--no-photos", wait=False)
    w.wait_for("the first run going", "SELECT count(*) FROM mls_sync_history", lambda v: v == 1, first)
    second = w.cli("sync", "--provider", "demo_rets", "--no-photos")
    assert second.returncode == 5 and second.stdout == ""
    assert second.stderr.startswith("mls-sync: demo_rets is being synced by run cli__"), second.stderr
    assert "(CLI mls-sync sync) since " in second.stderr and f"pid {first.pid}" in second.stderr
    assert second.stderr.count("\n") == 1
    assert w.scalar("SELECT count(*) FROM mls_sync_history") == 1  # the refused run opened nothing

    w.kill(first)
    w.mls.configure(latency=0)
    third = w.cli("sync", "--provider", "demo_rets", "--no-photos")
    assert third.returncode == 0, third.stderr
    killed, done = w.rows("SELECT * FROM mls_sync_history ORDER BY id")
    assert killed["state"] == "failed" and f"process {first.pid} on " in killed["error_summary"]
    assert "abandoned" in killed["error_summary"] and killed["watermark_after"] is None
    assert done["state"] == "success" and done["mode"] == "full"  # the killed run never moved the watermark
    w.check("demo_rets")


def test_the_cli_is_refused_while_a_dag_run_holds_the_provider_during_and_between_its_tasks(world) -> None:
    w: World = world(listings=200, seed=22, photos_per_listing=1)
    plan = w.dag_plan("demo_reso", "manual__first", NO_PHOTOS)
    between = w.cli("sync", "--provider", "demo_reso", "--no-photos")  # plan's task has ended
    assert between.returncode == 5
    assert between.stderr.startswith("mls-sync: demo_reso is being synced by run manual__first "
                                     "(DAG mls_sync__demo_reso) since "), between.stderr
    assert "between tasks" in between.stderr

    w.mls.configure(latency=0.3, max_page_size=20)  # still fetching when the CLI starts
    fetch = w.stages("demo_reso", plan, "fetch")
    w.wait_for("fetch landing pages", "SELECT pages_fetched FROM mls_sync_history WHERE id = :s",
               lambda v: v >= 1, fetch, s=plan["sync_id"])
    during = w.cli("sync", "--provider", "demo_reso", "--no-photos")
    assert during.returncode == 5 and "stage fetch on " in during.stderr and f"pid {fetch.pid}" in during.stderr
    w.mls.configure(latency=0)
    assert w.finish(fetch)[0] == 0
    w.inline("demo_reso", plan, "transform_load", "reconcile", "finalize")

    w.mls.mutate(price=5)
    after = w.cli("sync", "--provider", "demo_reso", "--no-photos")  # the DAG run has finished: free
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout.splitlines()[-1])["mode"] == "incremental"
    w.check("demo_reso")


def test_a_dry_run_beside_a_real_run_takes_none_of_its_records_and_leaves_its_state_alone(world) -> None:
    """The attack that lost 10 of 10 changes: a dry-run partial sync of the changed listings ran
    between a real incremental run's fetch and load, took over the rows it had landed, and the
    real run then skipped them, reported success and moved its watermark past them."""
    w: World = world(listings=200, seed=23, photos_per_listing=1)
    assert w.cli("sync", "--provider", "demo_reso", "--no-photos").returncode == 0
    changed = w.mls.mutate(price=10)["price"]
    plan = w.dag_plan("demo_reso", "scheduled__incremental", NO_PHOTOS)
    assert plan["mode"] == "incremental"
    w.inline("demo_reso", plan, "fetch")

    dry = w.cli("sync", "--provider", "demo_reso", "--dry-run", "--no-photos",
                *[arg for key in changed for arg in ("--listing", key)])
    assert dry.returncode == 0, dry.stderr
    preview = json.loads(dry.stdout.splitlines()[-1])
    assert preview["dry_run"] and preview["mode"] == "partial" and preview["updated"] == len(changed)
    status = w.rows("SELECT state, current_sync_id, current_stage FROM mls_sync_status")[0]

    w.inline("demo_reso", plan, "transform_load", "reconcile", "finalize")
    run = w.run(plan["sync_id"])
    assert run["state"] == "success" and run["updated"] == len(changed)
    w.check("demo_reso")
    # the dashboard showed the real run going on all along
    assert status == {"state": "running", "current_sync_id": plan["sync_id"], "current_stage": "fetch"}


def test_a_silent_holder_is_taken_over_and_its_run_commits_nothing_more(world) -> None:
    """A DAG run whose worker froze (no heartbeat for longer than Airflow may leave between tasks)
    is taken over by the next run; the old worker, waking up mid-load, cannot commit."""
    w: World = world(listings=240, seed=24, photos_per_listing=1)
    old = w.dag_plan("demo_reso", "scheduled__old", NO_PHOTOS)
    w.inline("demo_reso", old, "fetch")
    # its worker freezes before its fourth batch, between two statements, holding no lock
    load = w.stages("demo_reso", old, "transform_load", slow=0.05, stop_at=4)
    w.wait_stopped(load)
    with w.db.begin() as c:  # as if it had been silent for two hours
        c.exec_driver_sql("UPDATE mls_sync_leases SET heartbeat_at = now() - interval '2 hours'")
    new = w.dag_plan("demo_reso", "scheduled__new", NO_PHOTOS)
    os.kill(load.pid, signal.SIGCONT)

    code, err = w.finish(load)
    assert code != 0 and "RunConflict" in err and "lost its lease" in err
    taken = w.run(old["sync_id"])
    assert taken["state"] == "failed" and "no heartbeat since" in taken["error_summary"]
    stored = w.scalar("SELECT count(*) FROM properties")
    # the three batches committed before the takeover, counted; not the one it woke up in, nor any after
    assert stored == taken["added"] == 60

    w.inline("demo_reso", new, "fetch", "transform_load", "reconcile", "finalize")
    assert w.run(new["sync_id"])["mode"] == "full"  # the old run's watermark never moved
    w.check("demo_reso")
