"""The DAG files import cleanly, every DAG is production-shaped, a bad YAML fails only itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack import ROOT

pytestmark = [pytest.mark.airflow]

MAPPINGS = ROOT / "include" / "mappings"


def _bag(monkeypatch: pytest.MonkeyPatch | None = None, mappings: Path | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if monkeypatch is not None and mappings is not None:
        monkeypatch.setenv("MLS_MAPPINGS_DIR", str(mappings))
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors_and_production_defaults() -> None:
    bag = _bag()
    assert bag.import_errors == {}
    providers = sorted(p.stem for p in MAPPINGS.glob("*.yaml"))
    for pid in providers:
        assert f"mls_sync__{pid}" in bag.dags and f"mls_status__{pid}" in bag.dags
    assert "mls_media_maintenance" in bag.dags
    for dag_id, dag in bag.dags.items():
        assert dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.max_active_runs == 1, dag_id
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", (dag_id, t.task_id)
            if t.task_id != "announce":  # announce only emits an Asset event; nothing to retry
                assert t.retries >= 2, (dag_id, t.task_id)


def test_sync_dag_shape_and_trigger_form() -> None:
    dag = _bag().dags["mls_sync__demo_rets"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[:4] == ["plan", "fetch", "transform_load", "reconcile"]
    # the roster beside the photos, after the listings' reconciliation
    assert set(order[4:6]) == {"media_batches", "sync_roster"}
    assert dag.get_task("sync_roster").upstream_task_ids == {"plan", "reconcile"}
    assert "sync_roster" in dag.get_task("finalize").upstream_task_ids
    assert dag.get_task("finalize").trigger_rule == "all_done"
    assert dag.get_task("fetch").pool == "mls_demo_rets"
    assert dag.get_task("fetch").retry_exponential_backoff
    assert {"mode", "listing_keys", "postal_codes", "dry_run", "include_photos"} <= set(dag.params.keys())
    media = dag.get_task("media")
    assert media.map_index_template
    # the MLS Sync view labels task instances by these ids (`media[3]`): they must be the DAG's
    from mls_sync_airflow.tasks import SYNC_TASKS

    assert set(SYNC_TASKS) == set(order), (SYNC_TASKS, order)


def _broken_mappings(dest: Path) -> dict[str, str]:
    """The demo YAMLs plus several broken ones, each broken differently; {file: what names the fault}."""
    for p in MAPPINGS.glob("*.yaml"):
        shutil.copy(p, dest / p.name)
    base = yaml.safe_load((MAPPINGS / "demo_rets.yaml").read_text())
    bad_value = {**base, "provider_id": "broken_mls", "limits": {**base["limits"], "requests_per_hour": "lots"}}
    (dest / "broken_mls.yaml").write_text(yaml.safe_dump(bad_value))
    (dest / "broken_syntax.yaml").write_text("provider_id: broken_syntax\nfields: [unclosed\n")
    (dest / "broken_cron.yaml").write_text(yaml.safe_dump({**base, "provider_id": "broken_cron",
                                                           "schedule": "every four hours"}))
    (dest / "Demo-Upper.yaml").write_text(yaml.safe_dump({**base, "provider_id": "demo_upper"}))
    return {"broken_mls.yaml": "limits.requests_per_hour", "broken_syntax.yaml": "not valid YAML",
            "broken_cron.yaml": "every four hours", "Demo-Upper.yaml": "rename the file"}


def test_bad_yamls_fail_only_their_own_dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _broken_mappings(tmp_path)
    bag = _bag(monkeypatch, tmp_path)
    # healthy providers keep both DAGs; mls_sync.py itself has no import error
    for pid in ("demo_rets", "demo_reso"):
        assert f"mls_sync__{pid}" in bag.dags and f"mls_status__{pid}" in bag.dags
    assert not any(path.endswith("mls_sync.py") for path in bag.import_errors), bag.import_errors
    # each broken provider with a usable id has a DAG that says why and fails if triggered
    for pid, needle in (("broken_mls", "limits.requests_per_hour"), ("broken_syntax", "not valid YAML"),
                        ("broken_cron", "every four hours")):
        d = bag.dags[f"mls_sync__{pid}"]
        assert "invalid-config" in d.tags and d.schedule is None
        assert needle in (d.doc_md or "") and d.description.startswith("INVALID CONFIG")
        assert [t.task_id for t in d.tasks] == ["invalid_config"]
        assert f"mls_status__{pid}" not in bag.dags
    # and every broken file is named at once in one import error of the reporting file
    (path, err), = bag.import_errors.items()
    assert path.endswith("mls_provider_configs.py")
    assert "4 provider config(s) invalid" in err
    for name, needle in broken.items():
        assert name in err and needle in err, (name, needle)


def test_cli_list_import_errors_reports_none() -> None:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "airflow", "dags", "list-import-errors", "--local"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(f in out.stdout for f in ("mls_sync.py", "mls_media_maintenance.py")), out.stdout


def _bag_for_task(mappings: Path, dag_id: str, tmp_path: Path) -> dict:
    """What dags/mls_sync.py defines when a worker parses it to run a task of `dag_id` (Airflow
    sets the parsing context), in a process of its own: DAG ids, their docs, and the
    provider YAMLs it read."""
    code = ("import json, pathlib, sys\n"
            "read, plain = [], pathlib.Path.read_text\n"
            "def spy(self, *a, **k):\n"
            "    if self.suffix in ('.yaml', '.yml'):\n"
            "        read.append(self.name)\n"
            "    return plain(self, *a, **k)\n"
            "pathlib.Path.read_text = spy\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag(dag_folder=sys.argv[1])\n"
            "print('BAG ' + json.dumps({'dags': {k: d.doc_md for k, d in sorted(bag.dags.items())},\n"
            "                           'errors': sorted(bag.import_errors), 'read': read}))\n")
    env = {**os.environ, "MLS_MAPPINGS_DIR": str(mappings), "_AIRFLOW_PARSING_CONTEXT_DAG_ID": dag_id,
           "MLS_CONFIG_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "dags" / "mls_sync.py")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("BAG "))
    return json.loads(line[4:])


def test_a_worker_reads_only_its_own_providers_yaml(tmp_path: Path) -> None:
    """With hundreds of providers, each task start on a worker parses this file; it reads the
    task's provider's YAML alone (a broken one of another provider is not even opened)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    _broken_mappings(mappings)
    bag = _bag_for_task(mappings, "mls_sync__demo_rets", tmp_path)
    assert sorted(bag["dags"]) == ["mls_status__demo_rets", "mls_sync__demo_rets"] and bag["errors"] == []
    assert bag["read"] == ["demo_rets.yaml"]
    bag = _bag_for_task(mappings, "mls_status__demo_reso", tmp_path)
    assert sorted(bag["dags"]) == ["mls_status__demo_reso", "mls_sync__demo_reso"]
    assert bag["read"] == ["demo_reso.yaml"]
    # the task's own provider broken: the DAG that says why, as in a full parse
    bag = _bag_for_task(mappings, "mls_sync__broken_cron", tmp_path)
    assert list(bag["dags"]) == ["mls_sync__broken_cron"] and bag["read"] == ["broken_cron.yaml"]
    assert "every four hours" in bag["dags"]["mls_sync__broken_cron"]
    # not a DAG of this file (the maintenance DAG, a provider with no YAML): nothing read, nothing built
    for other in ("mls_media_maintenance", "mls_sync__nobody"):
        assert _bag_for_task(mappings, other, tmp_path) == {"dags": {}, "errors": [], "read": []}
    # without a parsing context (the dag-processor) every YAML is read, as before
    full = subprocess.run([sys.executable, "-c", "import mls_sync.config as c; print(len(c.load_providers()))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "MLS_MAPPINGS_DIR": str(mappings)})
    assert full.stdout.strip() == str(len(list(mappings.glob("*.y*ml"))))
