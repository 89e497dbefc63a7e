"""Links into Airflow's UI: by path on the admin pages, whole URLs in alerts, ids quoted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mls_sync.config import find_provider
from mls_sync_airflow import callbacks, links

from devstack import ROOT


@pytest.mark.parametrize(("base", "page", "alert"), [
    ("", "/dags/mls_sync__a%2Fb/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00",
     "http://localhost:8080/dags/mls_sync__a%2Fb/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"),
    ("https://airflow.example.com/team/", "/team/dags/mls_sync__a%2Fb/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00",
     "https://airflow.example.com/team/dags/mls_sync__a%2Fb/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"),
])
def test_run_links_follow_base_url(monkeypatch, base: str, page: str, alert: str) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base)
    run_id = "manual__2026-01-01T00:00:00+00:00"
    assert links.run_url("mls_sync__a/b", run_id) == page
    assert links.run_url("mls_sync__a/b", run_id, absolute=True) == alert
    assert links.run_url("mls_sync__a/b", None) is None
    assert links.dag_url("mls_sync__a/b", absolute=True) == alert.split("/runs/")[0]


def test_an_alert_links_the_run_by_its_whole_url_or_the_dag_without_one(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    cfg = find_provider("demo_rets", ROOT / "include" / "mappings")
    run = SimpleNamespace(dag_id=cfg.dag_id(), run_id="scheduled__2026-11-28T00:00:00+00:00")
    _, text = callbacks.compose(cfg, event="sync task failed", context={"dag_run": run})
    assert ("Link: https://airflow.example.com/dags/mls_sync__demo_rets/runs/"
            "scheduled__2026-11-28T00%3A00%3A00%2B00%3A00") in text.splitlines()
    _, text = callbacks.compose(cfg, event="no successful sync for 2 days")
    assert "Link: https://airflow.example.com/dags/mls_sync__demo_rets" in text.splitlines()
