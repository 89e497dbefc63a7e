"""Scenario 7: the media stage of a photo-heavy sync through the Celery stack, one worker then two.

The distributed stack of docker-compose.yaml runs as processes (devstack.topology): scheduler, API
server, Redis, PostgreSQL, moto S3, the mock MLS serving stored photos, and two Celery workers of
concurrency 1, each pinned to a CPU of its own so that a worker stands for a one-core host (the
shared services are not pinned). Two providers sync the same feed (copies of demo_rets):
`scale_1w` while the second worker is stopped, then `scale_2w` with both. For each, from the real
task instances: photos stored / media wall (first media task start to last end), and what a task
costs besides its photos: queued -> running (queued_when to start_date) and in-task overhead (the
task's duration minus the seconds the engine reports for its batch) and a worker's idle time
between two of its tasks (dispatch), so `media.batch_listings` can be sized. CPU seconds per
service during each run say where the machine's two cores went (PostgreSQL is the machine's,
shared, and not counted).
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
import yaml

from bench.scenarios import Bench, _base, guarded, ratio, target

PROVIDERS = {"1 worker": "scale_1w", "2 workers": "scale_2w"}
WORKER_2 = "celery-worker-2"


def _mappings(dest: Path, batch_listings: int) -> Path:
    from devstack import ROOT

    base = yaml.safe_load((ROOT / "include" / "mappings" / "demo_rets.yaml").read_text())
    for name, pid in PROVIDERS.items():
        data = {**base, "provider_id": pid, "name": f"Scaling, {name}",
                "media": {**base.get("media", {}), "batch_listings": batch_listings}}
        (dest / f"{pid}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, those already reaped included."""
    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _cpu_by_service(topo: Any) -> dict[str, float]:
    pids = {name: p.pid for name, p in topo.processes.items()}
    pids.update({"mock-mls": topo.pids["mock-mls"], "s3 (moto)": topo.pids["s3"]})
    return {name: _tree_cpu(pid) for name, pid in pids.items()}


def _run(topo: Any, dag_id: str, timeout: float) -> tuple[str, list[dict[str, Any]], dict[str, float]]:
    """Trigger a run with photos, wait for it; its state, task instances and CPU seconds per service."""
    http = topo.session()
    base = f"{topo.api_url}/api/v2"
    deadline = time.monotonic() + 300
    while http.get(f"{base}/dags/{dag_id}", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} was not parsed in 300 s")
        time.sleep(2)
    http.patch(f"{base}/dags/{dag_id}", json={"is_paused": False}, timeout=30).raise_for_status()
    before = _cpu_by_service(topo)
    r = http.post(f"{base}/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {"include_photos": True}},
                  timeout=30)
    r.raise_for_status()
    run_id = r.json()["dag_run_id"]
    deadline = time.monotonic() + timeout
    while True:
        state = http.get(f"{base}/dags/{dag_id}/dagRuns/{run_id}", timeout=30).json()["state"]
        if state in ("success", "failed") or time.monotonic() > deadline:
            break
        time.sleep(3)
    after = _cpu_by_service(topo)
    tis = http.get(f"{base}/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500},
                   timeout=30).json()["task_instances"]
    for ti in tis:
        if ti["task_id"] == "media" and ti["state"] == "success":
            x = http.get(f"{base}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/media/xcomEntries/return_value",
                         params={"map_index": ti["map_index"], "deserialize": True}, timeout=30)
            ti["engine"] = x.json().get("value") if x.status_code == 200 else None
    cpu = {k: round(after.get(k, 0) - before.get(k, 0), 1) for k in after}
    return state, tis, cpu


def _phase(topo: Any, name: str, provider: str, timeout: float) -> dict[str, Any]:
    return summarize(name, provider, *_run(topo, f"mls_sync__{provider}", timeout))


def summarize(name: str, provider: str, state: str, tis: list[dict[str, Any]], cpu: dict[str, float]) -> dict[str, Any]:
    """One phase's figures from its run's task instances (REST API form, media ones with the
    engine's counts under "engine")."""
    media = [t for t in tis if t["task_id"] == "media" and t["start_date"] and t["end_date"]]
    if state != "success" or not media:
        raise RuntimeError(f"{name}: run {state}, {len(media)} media tasks finished")
    start = min(_at(t["start_date"]) for t in media)
    end = max(_at(t["end_date"]) for t in media)
    wall = (end - start).total_seconds()
    photos = sum(int((t.get("engine") or {}).get("photos_added") or 0) for t in media)
    def queued(t: dict[str, Any]) -> float:
        return (_at(t["start_date"]) - _at(t["queued_when"])).total_seconds()

    waits = [queued(t) for t in tis if t.get("queued_when") and t.get("start_date")]
    media_waits = [queued(t) for t in media if t.get("queued_when")]
    done = [t for t in media if t.get("engine")]
    overhead = [(_at(t["end_date"]) - _at(t["start_date"])).total_seconds() - t["engine"]["seconds"] for t in done]
    per_photo = [t["engine"]["seconds"] / t["engine"]["photos_added"] for t in done if t["engine"]["photos_added"]]
    gaps = []  # a worker's idle time between one media task's end and its next one's start
    for host in {t["hostname"] for t in media}:
        mine = sorted((_at(t["start_date"]), _at(t["end_date"])) for t in media if t["hostname"] == host)
        gaps += [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(mine)]
    fixed = statistics.median(gaps) + statistics.median(overhead) if overhead and gaps else None
    return {
        "provider": provider, "state": state, "media_tasks": len(media), "photos": photos,
        "media_wall_seconds": round(wall, 1), "photos_per_second": round(photos / wall, 2) if wall else None,
        "photos_per_task": round(photos / len(media), 1), "hosts": sorted({t["hostname"] for t in media}),
        "queued_to_running_seconds": {"median": round(statistics.median(waits), 2), "max": round(max(waits), 2),
                                      "tasks": len(waits)},
        "media_queued_to_running_seconds": {"median": round(statistics.median(media_waits), 2)} if media_waits else {},
        "worker_idle_between_tasks_seconds": {"median": round(statistics.median(gaps), 2),
                                              "max": round(max(gaps), 2)} if gaps else {},
        "task_overhead_seconds": {"median": round(statistics.median(overhead), 2) if overhead else None,
                                  "max": round(max(overhead), 2) if overhead else None},
        "fixed_seconds_per_task": round(fixed, 2) if fixed is not None else None,
        "engine_seconds_per_photo": round(statistics.median(per_photo), 3) if per_photo else None,
        "cpu_seconds_by_service": cpu,
    }


def celery_media_scale(b: Bench, listings: int, per_listing: int, batch_listings: int) -> dict[str, Any]:
    res = _base("7", f"media stage via Celery, {listings} listings x {per_listing} photos, 1 vs 2 workers",
                "demo_rets", "celery", listings)

    def body() -> None:
        from devstack import control
        from devstack.topology import topology, worker_hostnames

        cpus = sorted(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory(prefix="mls_bench_celery_") as tmp:
            maps = Path(tmp) / "mappings"
            maps.mkdir()
            with topology(listings=listings, photos_per_listing=per_listing, providers=(),
                          mappings_dir=_mappings(maps, batch_listings), workers=2, worker_concurrency=1,
                          worker_cpus=[{c} for c in cpus[:2]], mock_extra_args=("--photo-dir", f"{tmp}/photos"),
                          scheduled=False) as topo:
                started = time.monotonic()
                res["mock_photos_prerendered"] = control(topo.mock_url, "prerender")["photos"]
                res["mock_prerender_seconds"] = round(time.monotonic() - started, 1)
                topo.stop(WORKER_2)
                phases = {"1 worker": _phase(topo, "1 worker", PROVIDERS["1 worker"], timeout=3600)}
                topo.start(WORKER_2)
                deadline = time.monotonic() + 120
                while not topo.worker_answers(worker_hostnames(2)[1]):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the second worker did not come up")
                    time.sleep(2)
                phases["2 workers"] = _phase(topo, "2 workers", PROVIDERS["2 workers"], timeout=3600)
                with sa.create_engine(topo.properties_db_url).connect() as c:
                    res["history"] = {p: dict(c.execute(sa.text(
                        "SELECT photos_added, photos_failed, state FROM mls_sync_history WHERE provider_id = :p"
                        " ORDER BY id DESC LIMIT 1"), {"p": p}).mappings().one()) for p in PROVIDERS.values()}
        res["phases"] = phases
        one, two = phases["1 worker"], phases["2 workers"]
        res["photos"] = two["photos"]
        res["photos_per_second"] = two["photos_per_second"]
        res["wall_seconds"] = two["media_wall_seconds"]
        r = ratio(two["photos_per_second"], one["photos_per_second"])
        res["ratios"]["two_vs_one_worker"] = r
        res["targets"].append(target("photos/s, 2 workers vs 1 (one core each)", r is not None and r >= 1.6, r,
                                     ">= 1.6 (about 1.8 expected)"))
        res["cpu_seconds_by_process"] = two["cpu_seconds_by_service"]
        for name, ph in phases.items():
            q, o = ph["queued_to_running_seconds"], ph["task_overhead_seconds"]
            res["notes"].append(
                f"{name}: {ph['photos']} photos in {ph['media_wall_seconds']} s = {ph['photos_per_second']} ph/s, "
                f"{ph['media_tasks']} media tasks of {ph['photos_per_task']} photos on {', '.join(ph['hosts'])}; "
                f"queued->running median {q['median']} s (max {q['max']}, waiting for a free worker included); "
                f"a worker idle between two tasks median {ph['worker_idle_between_tasks_seconds'].get('median')} s, "
                f"in-task overhead median {o['median']} s (max {o['max']}): "
                f"{ph['fixed_seconds_per_task']} s per task besides its photos, "
                f"{ph['engine_seconds_per_photo']} s per photo in a task")
            res["notes"].append(f"{name}: CPU seconds during the run: " + ", ".join(
                f"{k} {v}" for k, v in sorted(ph["cpu_seconds_by_service"].items(), key=lambda kv: -kv[1])))
        counts = {p: h["photos_added"] for p, h in res["history"].items()}
        if len(set(counts.values())) != 1:
            res["notes"].append(f"the two runs stored different photo counts: {counts}")

    return guarded(res, body)
