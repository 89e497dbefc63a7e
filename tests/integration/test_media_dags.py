"""The media stage inside the real DAGs (`dag.test()`): the sync DAG's mapped `media` task with
readable map indexes, and the maintenance DAG's cleanup and dry-run orphan deletion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import dagrun
from tests.integration.dagrun import point_at, rows, task_states

pytestmark = [pytest.mark.integration, pytest.mark.airflow]


@pytest.fixture
def setup(mock_mls_factory: Any, db: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """demo_reso without its 2 req/s budget and with small batches, so the map has several entries."""
    from devstack import ROOT

    cfg = yaml.safe_load((ROOT / "include" / "mappings" / "demo_reso.yaml").read_text())
    cfg.pop("limits", None)
    cfg["media"] = {"batch_listings": 4}
    cfg["retry"] = {"task_retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2}
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo_reso.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("MLS_MAPPINGS_DIR", str(mappings))
    mls = mock_mls_factory(listings=16, seed=4, photos_per_listing=2)
    point_at(mls, db_url, str(tmp_path / "media"))
    with db.begin() as c:
        c.exec_driver_sql("DELETE FROM property_media_sync")
    return tmp_path / "media"


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    """dagrun.run_dag, or a DAG file named by MLS_TEST_SYNC_DAG (to try a fix of the sync DAG)."""
    import os

    override = os.environ.get("MLS_TEST_SYNC_DAG")
    if override and dag_id.startswith("mls_sync__"):
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=override).get_dag(dag_id).test(run_conf=conf or {})
    return dagrun.run_dag(dag_id, conf)


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
            and not p.relative_to(root).as_posix().startswith((".meta/", ".tmp/"))}


def test_sync_dag_maps_media_batches_and_maintenance_cleans(setup: Path, db: Any) -> None:
    media_root = setup
    dr = run_dag("mls_sync__demo_reso", {})
    states = task_states(dr)
    assert str(dr.state) == "success", states
    mapped = [ti for ti in dr.get_task_instances() if ti.task_id == "media"]
    listings = rows(db, "SELECT count(*) AS n FROM properties")[0]["n"]
    assert len(mapped) == -(-listings // 4) >= 2
    assert all(str(ti.state) == "success" for ti in mapped), states
    labels = [ti.rendered_map_index for ti in mapped]
    assert all(label and label.startswith("demo_reso ") and "listings)" in label for label in labels), labels
    stored = rows(db, "SELECT * FROM property_media WHERE state = 'stored'")
    assert len(stored) == 2 * listings
    run = rows(db, "SELECT * FROM mls_sync_history ORDER BY id DESC LIMIT 1")[0]
    assert run["photos_added"] == len(stored) and run["photo_bytes"] > 0 and "media" in run["stage_timings"]
    owned = files(media_root)
    assert len(owned) == 6 * len(stored)

    stray = "listings/demo_reso/NOBODY/0-0123456789abcdef/large.webp"
    (media_root / stray).parent.mkdir(parents=True)
    (media_root / stray).write_bytes(b"x")
    dr = run_dag("mls_media_maintenance", {})  # dry run by default
    assert str(dr.state) == "success", task_states(dr)
    # one mapped pair per provider with media, labelled by provider
    assert task_states(dr) == {"housekeeping.cleanup_removed[0]": "success", "housekeeping.orphans[0]": "success"}
    assert sorted(ti.rendered_map_index for ti in dr.get_task_instances()) == ["demo_reso", "demo_reso"]
    assert files(media_root) == owned | {stray}
    dr = run_dag("mls_media_maintenance", {"dry_run": False})
    assert str(dr.state) == "success", task_states(dr)
    assert files(media_root) == owned
