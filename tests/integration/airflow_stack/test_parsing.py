"""What the real dag-processor makes of the provider YAMLs: a broken one hides no other provider,
every broken one is named at once, and a new one starts paused and gets its pool."""

from __future__ import annotations

import pytest
import yaml

from tests.integration.airflow_stack.api import wait_for
from tests.integration.airflow_stack.conftest import Stack, provider_yaml, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

HEALTHY = ("demo_rets", "demo_reso", "bad_login", "no_conn")


def _listed(stack: Stack, dag_ids: set[str]) -> dict | None:
    dags = stack.api.dag_ids()
    return dags if dag_ids <= set(dags) else None


def _config_errors(stack: Stack, *names: str) -> str | None:
    """The one import error that names every broken YAML, once it names all of `names`."""
    errors = stack.api.import_errors()
    ours = [e for e in errors if e["filename"].endswith("mls_provider_configs.py")]
    if len(ours) == 1 and all(n in ours[0]["stack_trace"] for n in names):
        return ours[0]["stack_trace"]
    return None


def test_broken_yamls_hide_no_provider(stack: Stack) -> None:
    api = stack.api
    healthy = {f"{kind}__{pid}" for pid in HEALTHY for kind in ("mls_sync", "mls_status")}
    broken = {"mls_sync__broken_schema", "mls_sync__broken_syntax"}
    dags = wait_for("every provider's DAGs listed", lambda: _listed(stack, healthy | broken), stack.topo, 240)
    for dag_id in broken:
        assert "invalid-config" in {t["name"] for t in dags[dag_id]["tags"]}, dags[dag_id]
        assert dags[dag_id]["description"].startswith("INVALID CONFIG"), dags[dag_id]
    trace = wait_for("one import error naming both broken YAMLs",
                     lambda: _config_errors(stack, "broken_schema.yaml", "broken_syntax.yaml"), stack.topo, 120)
    assert "limits.pool_slots" in trace and "not valid YAML" in trace
    assert not [e for e in api.import_errors() if e["filename"].endswith("mls_sync.py")]

    # break one more while it runs: it joins the list, and no healthy DAG goes stale
    write_yaml(stack.mappings, {**provider_yaml("demo_reso"), "provider_id": "broken_later", "schedule": "daily"})
    wait_for("the third broken YAML reported", lambda: _config_errors(
        stack, "broken_schema.yaml", "broken_syntax.yaml", "broken_later.yaml"), stack.topo, 120)
    wait_for("a DAG that says why for broken_later", lambda: api.dag("mls_sync__broken_later"), stack.topo, 120)
    still = api.dag_ids()
    assert healthy <= set(still), sorted(healthy - set(still))
    for dag_id in healthy:
        assert not still[dag_id]["is_stale"] and not still[dag_id]["has_import_errors"], still[dag_id]

    # fixing a YAML brings the provider's real DAGs back
    (stack.mappings / "broken_later.yaml").unlink()
    write_yaml(stack.mappings, provider_yaml("demo_reso", provider_id="broken_later", name="Fixed"))

    def fixed() -> bool:
        d = api.dag("mls_sync__broken_later")
        tags = {t["name"] for t in d["tags"]} if d else {"invalid-config"}
        return "invalid-config" not in tags and api.dag("mls_status__broken_later") is not None

    wait_for("the fixed provider's DAGs", fixed, stack.topo, 120)
    wait_for("its import error gone", lambda: _config_errors(stack, "broken_schema.yaml") and
             "broken_later" not in (_config_errors(stack, "broken_schema.yaml") or "x"), stack.topo, 120)


def test_a_new_provider_starts_paused_and_gets_its_pool(stack: Stack) -> None:
    """A YAML added to a running deployment: its DAGs honour Airflow's dags_are_paused_at_creation,
    its pool does not exist until its first run starts, and then that run is not stuck."""
    api = stack.api
    data = provider_yaml("demo_reso", provider_id="late_reso", name="Added later")
    data["limits"]["pool_slots"] = 3
    write_yaml(stack.mappings, data)
    dag = api.wait_dag("mls_sync__late_reso", timeout=180)
    assert dag["is_paused"] is True  # the stack runs with dags_are_paused_at_creation = True
    assert api.get("/pools/mls_late_reso").status_code == 404  # nobody ran a setup step for it

    run_id = api.trigger("mls_sync__late_reso", {"include_photos": False})
    state = api.wait_run("mls_sync__late_reso", run_id, timeout=240)
    assert state == "success", api.states("mls_sync__late_reso", run_id)
    pool = api.get("/pools/mls_late_reso").json()
    assert pool["slots"] == 3, pool  # made from the YAML by the scheduler as the run started
    assert {t["pool"] for t in api.task_instances("mls_sync__late_reso", run_id)} == {"mls_late_reso"}

    # a provider switched off in its YAML starts paused and has no schedule
    off = provider_yaml("demo_reso", provider_id="off_reso", name="Switched off", enabled=False)
    write_yaml(stack.mappings, off)
    dag = api.wait_dag("mls_sync__off_reso", timeout=180)
    assert dag["is_paused"] is True and dag["timetable_summary"] in (None, "None"), dag
    assert yaml.safe_load((stack.mappings / "off_reso.yaml").read_text())["enabled"] is False
