"""Scenario 7's figures from task instances (the REST API's form), on made-up runs."""

from __future__ import annotations

from typing import Any

from bench.celery_scale import summarize


def _ti(i: int, host: str, queued: int, start: int, end: int, seconds: float, photos: int) -> dict[str, Any]:
    at = "2026-01-01T00:00:{:02d}Z".format
    return {"task_id": "media", "map_index": i, "state": "success", "hostname": host, "queued_when": at(queued),
            "start_date": at(start), "end_date": at(end), "engine": {"seconds": seconds, "photos_added": photos}}


def test_rate_dispatch_and_overhead_per_task() -> None:
    plan = {"task_id": "plan", "map_index": -1, "state": "success", "hostname": "a",
            "queued_when": "2026-01-01T00:00:00Z", "start_date": "2026-01-01T00:00:03Z",
            "end_date": "2026-01-01T00:00:04Z"}
    tis = [plan, _ti(0, "a", 5, 6, 16, 8.0, 10), _ti(1, "a", 5, 18, 28, 8.5, 10), _ti(2, "b", 5, 7, 17, 8.0, 20)]
    got = summarize("2 workers", "p", "success", tis, {"celery-worker-1": 3.0})
    assert got["photos"] == 40 and got["media_tasks"] == 3 and got["hosts"] == ["a", "b"]
    assert got["media_wall_seconds"] == 22.0 and got["photos_per_second"] == round(40 / 22, 2)
    assert got["queued_to_running_seconds"] == {"median": 2.5, "max": 13.0, "tasks": 4}  # waiting included
    assert got["worker_idle_between_tasks_seconds"] == {"median": 2.0, "max": 2.0}  # a: 16 -> 18
    assert got["task_overhead_seconds"] == {"median": 2.0, "max": 2.0}  # 10 s tasks, 8 s of photos
    assert got["fixed_seconds_per_task"] == 4.0
    assert got["engine_seconds_per_photo"] == 0.8  # median of 0.8, 0.85, 0.4
