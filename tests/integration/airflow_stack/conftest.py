"""One real Airflow for every test in this package, started once and stopped after the last of them.

The docker-compose topology as native processes (devstack.topology): api-server, scheduler,
dag-processor and triggerer on 127.0.0.1, CeleryExecutor with two workers (Redis broker,
PostgreSQL metadata and result backend), moto's S3 server, the mock MLS, a properties database.
What only a real Airflow shows is tested here: a dag-processor parsing the DAG files (stale DAGs,
import errors), a scheduler deciding run states, retries and pools, workers on two hosts.

The provider YAMLs live in a directory the tests may change while the stack runs:
    demo_rets, demo_reso   healthy; alerts to a loopback SMTP server and webhook; fast retries
    bad_login              RETS with a wrong password (its connection points at the same mock)
    no_conn                RESO whose connection is not defined anywhere
    broken_schema, broken_syntax   invalid YAMLs
    worker_loss            demo RETS again, one listing per GetObject, no roster (test_workers kills
                           a worker)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import ROOT, mls_connections
from devstack.topology import Topology, Unavailable, pid_alive, topology
from tests.integration.airflow_stack.api import Api
from tests.integration.alert_sinks import Inbox, alert_connections, smtp_server, webhook_server

LISTINGS = 60
WORKERS = 2
ALERTS = {"email": ["oncall@example.com"], "smtp_connection_id": "smtp_test", "slack_connection_id": "slack_test"}
# seconds, so retry paths finish in a test: 2 s, then 4 s (exponential, capped at 8 s)
FAST_RETRY = {"task_retries": 2, "retry_delay_seconds": 2, "max_retry_delay_seconds": 8}
# A task whose worker died stops heartbeating: the scheduler fails that try after 20 s (default
# 300) and retries it elsewhere; tasks report every 2 s so a busy machine does not trip it.
HEARTBEATS = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
              "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
              "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2"}


def provider_yaml(base: str, **changes: Any) -> dict[str, Any]:
    """A demo provider's YAML with the stack's alerts, fast retries and small media batches."""
    data = yaml.safe_load((ROOT / "include" / "mappings" / f"{base}.yaml").read_text())
    data.update(alerts=ALERTS, retry=FAST_RETRY)
    data["limits"] = {**data.get("limits", {}), "request_attempts": 2}
    data.setdefault("media", {})["batch_listings"] = 10
    data.update(changes)
    return data


def write_yaml(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / f"{data['provider_id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


WRONG_PASSWORD = "wrong-secret-value"


def _wrong_password(mock_url: str, credentials: dict[str, str]) -> dict[str, str]:
    """bad_login's connection: the demo RETS login with a wrong password, against the same mock."""
    rets = json.loads(mls_connections(mock_url, credentials)["AIRFLOW_CONN_MLS_DEMO_RETS"])
    return {"AIRFLOW_CONN_MLS_BAD_LOGIN": json.dumps({**rets, "password": WRONG_PASSWORD})}


@dataclass
class Stack:
    topo: Topology
    api: Api
    mappings: Path
    inbox: Inbox
    webhook: list[dict]

    @property
    def mock_url(self) -> str:
        return self.topo.mock_url


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    mappings = Path(tempfile.mkdtemp(prefix="mls_stack_mappings_"))
    write_yaml(mappings, provider_yaml("demo_rets"))
    write_yaml(mappings, provider_yaml("demo_reso"))
    write_yaml(mappings, provider_yaml("demo_rets", provider_id="bad_login", name="Wrong password",
                                       connection_id="mls_bad_login"))
    write_yaml(mappings, provider_yaml("demo_reso", provider_id="no_conn", name="No connection",
                                       connection_id="mls_nowhere"))
    write_yaml(mappings, {**provider_yaml("demo_rets"), "provider_id": "broken_schema", "limits": {"pool_slots": "x"}})
    (mappings / "broken_syntax.yaml").write_text("provider_id: broken_syntax\nfields: [unclosed\n")
    rets = provider_yaml("demo_rets")
    rets.pop("resources")  # listings and photos only: its roster task has nothing to do and skips
    write_yaml(mappings, {**rets, "provider_id": "worker_loss", "name": "Worker loss",
                          "rets": {**rets["rets"], "photos_per_request": 1}})
    try:
        with ExitStack() as es:
            inbox, smtp_port = es.enter_context(smtp_server())
            received, hook_url = es.enter_context(webhook_server())
            extra = alert_connections(smtp_port, hook_url)
            try:
                topo = es.enter_context(topology(
                    listings=LISTINGS, photos_per_listing=1, workers=WORKERS, worker_concurrency=1,
                    mappings_dir=mappings, extra_env={**extra, **HEARTBEATS}, mock_env=_wrong_password,
                    parse_interval=10))
            except Unavailable as exc:  # PostgreSQL or Redis could not be had here
                pytest.skip(f"the Airflow stack cannot start: {exc}")
            started = dict(topo.pids)
            yield Stack(topo=topo, api=Api(topo), mappings=mappings, inbox=inbox, webhook=received)
    finally:
        shutil.rmtree(mappings, ignore_errors=True)
    left = {name: pid for name, pid in locals().get("started", {}).items() if pid_alive(pid)}
    assert not left, f"still running after the stack was stopped: {left}"
