"""`make airflow`: Airflow's UI on the demo's data, a sync under its LocalExecutor, Ctrl-C stops all.

Run as a user runs it (`python -m devstack.run airflow`, what the make target calls) on a data
folder of its own: it must print the UI's address and a login that works, parse the provider
DAGs, run a demo sync with photos into the demo's stores (the embedded PostgreSQL and the local
photo folder), and leave no process behind after SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from devstack import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]


def _read_until(proc: subprocess.Popen, pattern: str, out: list[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        out.append(line)
        if m := re.search(pattern, line):
            return m
    pytest.fail(f"no {pattern!r} from make airflow in {timeout:.0f}s:\n{''.join(out)[-3000:]}")


def test_make_airflow_shows_the_demo_data_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLS_"))}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "devstack.run", "airflow", "--data-dir", str(tmp_path),
                             "--listings", "40", "--photos-per-listing", "2", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    children: list[psutil.Process] = []
    try:
        m = _read_until(proc, r"Airflow UI: (http://127\.0\.0\.1:(\d+))\s+\(login (\w+) / (\S+)\)", out, 400)
        url, user, password = m.group(1), m.group(3), m.group(4)
        assert int(m.group(2)) == port
        children = psutil.Process(proc.pid).children(recursive=True)
        r = requests.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30)
        assert r.status_code in (200, 201), r.text
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        api, dag = f"{url}/api/v2", "mls_sync__demo_rets"
        deadline = time.monotonic() + 240
        while http.get(f"{api}/dags/{dag}", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the demo DAG was not parsed"
            time.sleep(2)
        # unpausing also starts the scheduled run of the DAG's last interval, which goes first
        http.patch(f"{api}/dags/{dag}", json={"is_paused": False}, timeout=30).raise_for_status()
        r = http.post(f"{api}/dags/{dag}/dagRuns", json={"logical_date": None, "conf": {"include_photos": True}},
                      timeout=30)
        assert r.status_code == 200, r.text

        def runs() -> list[dict]:
            return http.get(f"{api}/dags/{dag}/dagRuns", timeout=30).json()["dag_runs"]

        deadline = time.monotonic() + 500
        while any(x["state"] not in ("success", "failed") for x in runs()):
            assert time.monotonic() < deadline, f"the syncs did not finish: {runs()}"
            time.sleep(3)
        added = 0
        for x in runs():
            base = f"{api}/dags/{dag}/dagRuns/{x['dag_run_id']}"
            tis = http.get(f"{base}/taskInstances", timeout=30).json()["task_instances"]
            assert x["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
            assert {t["executor"] for t in tis if t["state"] == "success"} <= {None, "LocalExecutor"}
            media = [t for t in tis if t["task_id"] == "media"]
            assert {t["state"] for t in media} <= {"success", "skipped"}  # the photo pool works in a task
            summary = http.get(f"{base}/taskInstances/finalize/xcomEntries/return_value",
                               params={"deserialize": True}, timeout=30).json()["value"]
            assert summary["state"] == "success", summary
            added += summary["photos_added"]
        # every photo in the demo's own folder, as make demo leaves them
        stored = list((tmp_path / "media" / "listings" / "demo_rets").rglob("large.jpg"))
        assert len(stored) == added >= 20
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            rest, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        out.append(rest or "")
    assert proc.returncode == 0, "".join(out)[-3000:]
    assert "stopped." in "".join(out)
    time.sleep(1)
    left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name()) for p in left]
