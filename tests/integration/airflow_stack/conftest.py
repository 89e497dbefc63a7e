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
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import ROOT, mls_connections, pg_reachable
from devstack.topology import PG_ADMIN_URL, REDIS_URL, Topology, pid_alive, topology
from tests.integration.airflow_stack.api import Api
from tests.integration.alert_sinks import Inbox, alert_connections, smtp_server, webhook_server

LISTINGS = 60
WORKERS = 2
ALERTS = {"email": ["oncall@example.com"], "smtp_connection_id": "smtp_test", "slack_connection_id": "slack_test"}
# seconds, so retry paths finish in a test: 2 s, then 4 s (exponential, capped at 8 s)
FAST_RETRY = {"task_retries": 2, "retry_delay_seconds": 2, "max_retry_delay_seconds": 8}


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


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
    if not pg_reachable(PG_ADMIN_URL):
        pytest.skip(f"needs PostgreSQL at {PG_ADMIN_URL} (trust auth) for the Airflow metadata DB "
                    "(Debian: apt-get install postgresql)")
    if not _redis_up():
        pytest.skip(f"needs Redis at {REDIS_URL} for the Celery broker (Debian: apt-get install redis-server)")
    mappings = Path(tempfile.mkdtemp(prefix="mls_stack_mappings_"))
    write_yaml(mappings, provider_yaml("demo_rets"))
    write_yaml(mappings, provider_yaml("demo_reso"))
    write_yaml(mappings, provider_yaml("demo_rets", provider_id="bad_login", name="Wrong password",
                                       connection_id="mls_bad_login"))
    write_yaml(mappings, provider_yaml("demo_reso", provider_id="no_conn", name="No connection",
                                       connection_id="mls_nowhere"))
    write_yaml(mappings, {**provider_yaml("demo_rets"), "provider_id": "broken_schema", "limits": {"pool_slots": "x"}})
    (mappings / "broken_syntax.yaml").write_text("provider_id: broken_syntax\nfields: [unclosed\n")
    try:
        with smtp_server() as (inbox, smtp_port), webhook_server() as (received, hook_url):
            extra = alert_connections(smtp_port, hook_url)
            with topology(listings=LISTINGS, photos_per_listing=1, workers=WORKERS, worker_concurrency=1,
                          mappings_dir=mappings, extra_env=extra, mock_env=_wrong_password,
                          parse_interval=10) as topo:
                started = dict(topo.pids)
                yield Stack(topo=topo, api=Api(topo), mappings=mappings, inbox=inbox, webhook=received)
    finally:
        shutil.rmtree(mappings, ignore_errors=True)
    left = {name: pid for name, pid in locals().get("started", {}).items() if pid_alive(pid)}
    assert not left, f"still running after the stack was stopped: {left}"
