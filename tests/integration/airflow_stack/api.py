"""Driving the real stack as an operator would: its REST API with a JWT, waiting on what it says."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from devstack.topology import Topology


def wait_for(what: str, check: Callable[[], Any], stack: Topology, timeout: float = 180, every: float = 1.0,
             detail: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy; fail with the logs if a service died or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        dead = {name: p.returncode for name, p in stack.processes.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            pytest.fail(f"{name} exited ({dead[name]}) while waiting for {what}:\n{stack.log(name)[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s; {detail()}\nlogs in {stack.home}; "
                        f"scheduler log:\n{stack.log('scheduler')[-2000:]}\n"
                        f"dag-processor log:\n{stack.log('dag-processor')[-2000:]}")
        time.sleep(every)


class Api:
    """The stack's /api/v2 with an admin bearer token."""

    def __init__(self, stack: Topology) -> None:
        self.stack = stack
        self.base = f"{stack.api_url}/api/v2"
        self.http = stack.session("admin")

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(f"{self.base}{path}", params=params, timeout=30)

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        r = self.get(f"/dags/{dag_id}")
        return r.json() if r.status_code == 200 else None

    def dag_ids(self, prefix: str = "mls_") -> dict[str, dict[str, Any]]:
        """DAGs Airflow lists now (stale ones are not listed by default)."""
        r = self.get("/dags", limit=200, dag_id_pattern=prefix)
        r.raise_for_status()
        return {d["dag_id"]: d for d in r.json()["dags"]}

    def import_errors(self) -> list[dict[str, Any]]:
        r = self.get("/importErrors", limit=100)
        r.raise_for_status()
        return r.json()["import_errors"]

    def wait_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        return wait_for(f"DAG {dag_id} serialized by the dag-processor", lambda: self.dag(dag_id), self.stack,
                        timeout)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.wait_dag(dag_id)
        r = self.http.patch(f"{self.base}/dags/{dag_id}", json={"is_paused": False}, timeout=30)
        assert r.status_code == 200 and r.json()["is_paused"] is False, r.text
        r = self.http.post(f"{self.base}/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}},
                           timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        r = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=200)
        r.raise_for_status()
        return r.json()["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        r = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        r.raise_for_status()
        return r.json()["task_instances"]

    def states(self, dag_id: str, run_id: str) -> str:
        return ", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']} (try {t['try_number']})"
                         for t in self.task_instances(dag_id, run_id))

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        def finished() -> str | None:
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return wait_for(f"run {run_id} of {dag_id} to finish", finished, self.stack, timeout, every=2,
                        detail=lambda: self.states(dag_id, run_id))

    def mapped_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        """Every try of one mapped task instance, oldest first."""
        r = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries")
        r.raise_for_status()
        return sorted(r.json()["task_instances"], key=lambda t: t["try_number"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        """A task's XCom value as the API returns it (deserialized), or None when there is none."""
        r = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                     map_index=map_index, deserialize=True)
        return r.json()["value"] if r.status_code == 200 else None
