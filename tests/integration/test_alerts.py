"""Alerts reach a real SMTP server and a Slack-style webhook, naming provider, run, task, category, link."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from devstack import ROOT
from tests.integration.alert_sinks import alert_connections, smtp_server, text_of, webhook_server
from tests.integration.dagrun import last_run, point_at, run_dag, task_states

pytestmark = [pytest.mark.integration, pytest.mark.airflow]


@pytest.fixture
def smtp_inbox():
    with smtp_server() as (inbox, port):
        yield inbox, port


@pytest.fixture
def webhook():
    with webhook_server() as sink:
        yield sink


@pytest.fixture
def alerting_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_inbox, webhook):
    _, smtp_port = smtp_inbox
    _, hook_url = webhook
    for p in (ROOT / "include" / "mappings").glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        data["alerts"] = {"email": ["oncall@example.com"], "smtp_connection_id": "smtp_test",
                          "slack_connection_id": "slack_test", "stale_after_hours": 1}
        data["retry"] = {"task_retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2}
        data["limits"] = {**data.get("limits", {}), "request_attempts": 1}
        (tmp_path / p.name).write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLS_MAPPINGS_DIR", str(tmp_path))
    for name, value in alert_connections(smtp_port, hook_url).items():
        monkeypatch.setenv(name, value)
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_failed_sync_alerts_email_and_slack(mock_mls_factory, db, db_url, tmp_path, smtp_inbox, webhook,
                                            alerting_providers, monkeypatch) -> None:
    inbox, _ = smtp_inbox
    received, _ = webhook
    mls = mock_mls_factory(listings=50, seed=2, photos_per_listing=1)
    point_at(mls, db_url, str(tmp_path / "media"))
    bad = json.loads(__import__("os").environ["AIRFLOW_CONN_MLS_DEMO_RESO"])
    bad["password"] = "wrong-secret-value"
    monkeypatch.setenv("AIRFLOW_CONN_MLS_DEMO_RESO", json.dumps(bad))

    dr = run_dag("mls_sync__demo_reso", {"include_photos": False})
    states = task_states(dr)
    assert states["fetch"] == "failed" and states["finalize"] == "failed" and states["announce"] == "upstream_failed"
    assert str(dr.state) == "failed"  # the Airflow run says what happened to the sync
    fetch_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "fetch")
    assert fetch_ti.try_number == 1  # credentials refused: not retried (vendors lock accounts)
    run = last_run(db, "demo_reso")
    assert run["state"] == "failed"
    summary = run["error_summary"]
    assert summary.startswith("fetch failed: AuthError (auth): token endpoint refused"), summary

    assert len(inbox.messages) == 1, [m["Subject"] for m in inbox.messages]  # one alert per failed run
    mail = inbox.messages[0]
    body = text_of(mail)
    assert "demo_reso" in mail["Subject"] and "sync failed" in mail["Subject"] and mail["To"] == "oncall@example.com"
    assert mail["From"] == "mls-sync@example.com"  # the SMTP connection's sender, not a made-up one
    for needle in ("Task: fetch", "Error category: auth", "Detail: fetch failed: AuthError", dr.run_id.split("+")[0],
                   "/dags/mls_sync__demo_reso/runs/"):
        assert needle in body, needle
    assert "wrong-secret-value" not in body
    assert len(received) == 1, received
    slack = received[0]["text"]
    assert "Task: fetch" in slack and "Error category: auth" in slack and "wrong-secret-value" not in slack


def test_stale_provider_alerts_once(mock_mls_factory, db, db_url, tmp_path, smtp_inbox, alerting_providers) -> None:
    import sqlalchemy as sa

    inbox, _ = smtp_inbox
    mls = mock_mls_factory(listings=50, seed=2, photos_per_listing=1)
    point_at(mls, db_url, str(tmp_path / "media"))
    run_dag("mls_sync__demo_reso", {"include_photos": False})
    with db.begin() as c:
        c.execute(sa.text("UPDATE mls_sync_status SET last_success_at = now() - interval '2 hours'"))
    inbox.messages.clear()
    run_dag("mls_status__demo_reso")
    run_dag("mls_status__demo_reso")
    stale = [m for m in inbox.messages if "no successful sync" in m["Subject"]]
    assert len(stale) == 1, [m["Subject"] for m in inbox.messages]


def test_drift_above_the_yaml_threshold_alerts(mock_mls_factory, db, db_url, tmp_path, smtp_inbox,
                                               alerting_providers) -> None:
    """A reconciliation that finds more differences than `reconcile.max_drift` allows sends one alert
    naming the figures; the run itself succeeds (it repaired them)."""
    inbox, _ = smtp_inbox
    mls = mock_mls_factory(listings=60, seed=4, photos_per_listing=1)
    point_at(mls, db_url, str(tmp_path / "media"))
    run_dag("mls_sync__demo_reso", {"include_photos": False})
    inbox.messages.clear()
    mls.mutate(backdate=3)  # invisible to an incremental sync: 3 of ~40 in scope is above 1 %
    dr = run_dag("mls_sync__demo_reso", {"include_photos": False, "mode": "reconcile"})
    assert str(dr.state) == "success"
    run = last_run(db, "demo_reso")
    assert run["mode"] == "reconcile" and run["report"]["reconcile"]["stale"] == 3
    drift = [m for m in inbox.messages if "drift" in m["Subject"]]
    assert len(drift) == 1, [m["Subject"] for m in inbox.messages]
    assert "3 stale" in text_of(drift[0]) and "above 1.0%" in drift[0]["Subject"]
