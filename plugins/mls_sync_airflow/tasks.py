"""What each DAG task runs: build the engine's context from Airflow connections, call one stage.

Kept out of the DAG file so that parsing a DAG does no IO (the DAG processor parses often) and
so the engine stays free of Airflow: everything Airflow-specific ends here.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from mls_sync import sync
from mls_sync.config import ProviderConfig, find_provider
from mls_sync.store.db import migrate

from mls_sync_airflow.hooks import MlsHook, PropertiesStoreHook

log = logging.getLogger(__name__)


@cache
def provider(provider_id: str) -> ProviderConfig:
    return find_provider(provider_id)


@cache
def _db(conn_id: str) -> Any:
    engine = PropertiesStoreHook(conn_id).get_conn()
    migrate(engine)  # cheap when current; makes a fresh database usable on the first run
    return engine


def provider_id_of(dag_id: str) -> str:
    """`mls_sync__<id>` / `mls_status__<id>` -> `<id>` (the factory's naming, in one place)."""
    return dag_id.split("__", 1)[-1]


def context(provider_id: str) -> sync.SyncContext:
    cfg = provider(provider_id)
    return sync.SyncContext(provider=cfg, db=_db(PropertiesStoreHook.default_conn_name),
                            mls=MlsHook(cfg.connection_id).get_conn)


def trigger_of(ctx: dict[str, Any]) -> str:
    run = ctx.get("dag_run")
    run_type = str(getattr(run, "run_type", "") or "")
    return "scheduled" if "scheduled" in run_type.lower() else "manual"


def plan(provider_id: str, ctx: dict[str, Any]) -> dict[str, Any]:
    run = ctx["dag_run"]
    conf = dict(ctx.get("params") or {})
    conf.update(getattr(run, "conf", None) or {})
    return sync.plan(context(provider_id), dag_id=run.dag_id, dag_run_id=run.run_id, conf=conf,
                     trigger=trigger_of(ctx))


def fetch(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return sync.fetch(context(provider_id), plan)


def transform_load(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return sync.transform_load(context(provider_id), plan)


def reconcile(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return sync.reconcile(context(provider_id), plan)


def failed_tasks(ctx: dict[str, Any]) -> list[str]:
    """Upstream tasks of this run that did not succeed (asked of Airflow, not guessed)."""
    ti, run = ctx["ti"], ctx["dag_run"]
    try:
        states = ti.get_task_states(dag_id=run.dag_id, run_ids=[run.run_id])
    except Exception as exc:  # the API is new; finalize must still close the run
        log.warning("could not read task states (%s); judging by recorded stages", exc)
        return []
    per_run = states.get(run.run_id, {}) if isinstance(states, dict) else {}
    bad = {"failed", "upstream_failed"}
    # mapped instances come back as "<task_id>_<map_index>"
    return sorted(str(k) for k, v in per_run.items()
                  if str(getattr(v, "value", v)) in bad and str(k) != ti.task_id)


def finalize(provider_id: str, ctx: dict[str, Any]) -> dict[str, Any]:
    from mls_sync_airflow import callbacks

    plan = ctx["ti"].xcom_pull(task_ids="plan")
    result = sync.finalize(context(provider_id), plan, failed_tasks(ctx))
    for message in result.get("alerts", []):
        callbacks.alert(provider(provider_id), message, ctx, category="threshold")
    return result


def run_failed(ctx: dict[str, Any]) -> None:
    """DAG-level failure callback: a run stopped from the UI never reached finalize."""
    run = ctx.get("dag_run")
    if run is None:
        return
    if sync.mark_cancelled_if_running(context(provider_id_of(run.dag_id)), run.dag_id, run.run_id):
        log.info("run %s of %s marked cancelled; watermark unchanged", run.run_id, run.dag_id)


def status_poll(provider_id: str, ctx: dict[str, Any]) -> dict[str, Any]:
    from mls_sync_airflow import callbacks

    sctx = context(provider_id)
    result = sync.status_poll(sctx)
    alerts = [("stale", sync.stale_alert_due(sctx))] + [("duration", m) for m in sync.overdue_alerts_due(sctx)]
    for category, message in alerts:
        if message:
            callbacks.alert(provider(provider_id), message, ctx, category=category)
    result["alerts"] = [m for _, m in alerts if m]
    return result


def media_batches(provider_id: str, plan: dict[str, Any]) -> list[dict[str, Any]]:
    if not plan.get("include_photos"):
        return []
    from mls_sync import media

    return media.plan_batches(context(provider_id), plan)


def media_batch(provider_id: str, plan: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    from mls_sync import media

    from mls_sync_airflow.hooks import media_store

    cfg = provider(provider_id)
    return media.run_batch(context(provider_id), plan, batch, media_store(cfg.storage))


def announce(provider_id: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Emit the provider's properties Asset only when the run changed something (skip otherwise)."""
    from airflow.sdk.exceptions import AirflowSkipException

    summary = summary or {}
    changed = {k: summary.get(k, 0) for k in ("added", "updated", "deleted", "status_changes",
                                              "photos_added", "photos_removed")}
    if summary.get("state") != "success" or summary.get("dry_run") or not any(changed.values()):
        raise AirflowSkipException(f"nothing to announce for {provider_id}: {changed}")
    return changed
