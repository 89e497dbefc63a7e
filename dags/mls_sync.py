"""One sync DAG and one status-poll DAG per provider YAML in include/mappings/.

This file only wires engine calls (mls_sync_airflow.tasks) into tasks: no IO at parse time
beyond reading the YAML files. A YAML that fails validation stands in as a DAG whose validation
fails with the reason, so `airflow dags list-import-errors` names the file, key and fix while
every other provider's DAGs still load.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import (
    DAG,
    Asset,
    Param,
    dag,
    get_current_context,
    get_parsing_context,
    task,
)
from mls_sync.config import ConfigError, ProviderConfig, load_provider, provider_paths, status_dag_id, sync_dag_id
from mls_sync.run_options import PARAM_SCHEMAS
from mls_sync_airflow import callbacks
from mls_sync_airflow import tasks as run

START = datetime(2024, 1, 1)


def properties_asset(provider_id: str) -> Asset:
    return Asset(f"mls://{provider_id}/properties", extra={"provider": provider_id})


def status_asset(provider_id: str) -> Asset:
    return Asset(f"mls://{provider_id}/status", extra={"provider": provider_id})


def _default_args(cfg: ProviderConfig) -> dict[str, Any]:
    return {
        "owner": cfg.owner,
        "retries": cfg.retry.task_retries,
        "retry_delay": timedelta(seconds=cfg.retry.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=cfg.retry.max_retry_delay_seconds),
        "pool": cfg.pool(),
        "on_failure_callback": callbacks.task_failed,
    }


def _doc(cfg: ProviderConfig, what: str) -> str:
    return (f"### {cfg.name}: {what}\n\nProvider `{cfg.provider_id}` over **{cfg.protocol.upper()}**, "
            f"connection `{cfg.connection_id}`, pool `{cfg.pool()}`.\n\n"
            "Trigger with config for a manual run: mode full/incremental, partial by listing keys, "
            "postal codes or cities, include photos, dry run. Counts and errors: the MLS Sync view.")


def build_sync_dag(cfg: ProviderConfig) -> DAG:
    pid = cfg.provider_id

    @dag(
        dag_id=cfg.dag_id(), schedule=cfg.schedule, start_date=START, catchup=False, max_active_runs=1,
        tags=["mls", "mls-sync", *cfg.tags], doc_md=_doc(cfg, "listing sync"), default_args=_default_args(cfg),
        params={name: Param(**schema) for name, schema in PARAM_SCHEMAS.items()},
        is_paused_upon_creation=not cfg.enabled, on_failure_callback=run.run_failed,
        dagrun_timeout=timedelta(minutes=cfg.alerts.max_duration_minutes * 8),
    )
    def sync() -> None:
        @task
        def plan(**context: Any) -> dict[str, Any]:
            return run.plan(pid, context)

        @task
        def fetch(plan: dict[str, Any]) -> dict[str, Any]:
            return run.fetch(pid, plan)

        @task
        def transform_load(plan: dict[str, Any]) -> dict[str, Any]:
            return run.transform_load(pid, plan)

        @task
        def reconcile(plan: dict[str, Any]) -> dict[str, Any]:
            return run.reconcile(pid, plan)

        @task
        def media_batches(plan: dict[str, Any]) -> list[dict[str, Any]]:
            return run.media_batches(pid, plan)

        @task(map_index_template="{{ media_batch_label }}")
        def media(plan: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
            get_current_context()["media_batch_label"] = batch.get("label", "")
            return run.media_batch(pid, plan, batch)

        @task(trigger_rule="all_done")
        def finalize(**context: Any) -> dict[str, Any]:
            return run.finalize(pid, context)

        @task(outlets=[properties_asset(pid)], trigger_rule="all_done", retries=0)
        def announce(summary: dict[str, Any]) -> dict[str, Any]:
            return run.announce(pid, summary)

        p = plan()
        f = fetch(p)
        tl = transform_load(p)
        rc = reconcile(p)
        batches = media_batches(p)
        m = media.partial(plan=p).expand(batch=batches)
        fin = finalize()
        f >> tl >> rc >> batches
        [p, f, tl, rc, batches, m] >> fin
        announce(fin)

    return sync()


def build_status_dag(cfg: ProviderConfig) -> DAG:
    pid = cfg.provider_id

    @dag(
        dag_id=cfg.status_dag_id(), schedule=cfg.status_poll.schedule if cfg.status_poll.enabled else None,
        start_date=START, catchup=False, max_active_runs=1, tags=["mls", "mls-status", *cfg.tags],
        doc_md=_doc(cfg, "status poll (Active -> Pending -> Closed within minutes)"),
        default_args=_default_args(cfg), is_paused_upon_creation=not cfg.enabled,
    )
    def status() -> None:
        @task(outlets=[status_asset(pid)])
        def poll_status(**context: Any) -> dict[str, Any]:
            return run.status_poll(pid, context)

        poll_status()

    return status()


class InvalidProviderDag(DAG):
    """Stands in for a provider whose YAML is invalid: its validation fails with the reason."""

    def validate(self) -> None:
        raise ConfigError(self.doc_md or "invalid provider config")


def _build_all() -> dict[str, DAG]:
    wanted = get_parsing_context().dag_id
    out: dict[str, DAG] = {}
    for path in provider_paths():
        ids = (sync_dag_id(path.stem), status_dag_id(path.stem))
        if wanted and wanted not in ids:
            continue  # a worker running one task parses only that DAG
        try:
            cfg = load_provider(path)
        except ConfigError as exc:
            out[ids[0]] = InvalidProviderDag(dag_id=ids[0], schedule=None, start_date=START, doc_md=str(exc),
                                             tags=["mls", "invalid-config"])
            continue
        out[ids[0]] = build_sync_dag(cfg)
        out[ids[1]] = build_status_dag(cfg)
    return out


globals().update(_build_all())
