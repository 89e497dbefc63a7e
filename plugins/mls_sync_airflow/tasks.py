"""What each DAG task runs: build the engine's context from Airflow connections, call one stage.

Kept out of the DAG file so that parsing a DAG does no IO (the DAG processor parses often) and
so the engine stays free of Airflow: everything Airflow-specific ends here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from mls_sync import sync
from mls_sync.config import ProviderConfig, find_provider
from mls_sync.failures import needs_operator
from mls_sync.store.db import migrate

from mls_sync_airflow.hooks import MlsHook, PropertiesStoreHook

log = logging.getLogger(__name__)
T = TypeVar("T")
SYNC_TASKS = ("plan", "fetch", "transform_load", "reconcile", "sync_roster", "media_batches", "media", "finalize",
              "announce")


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
                            mls=MlsHook(cfg.connection_id).get_mls_connection)


def guarded(call: Callable[[], T]) -> T:
    """Run one stage (which records its own failure on the run) and fail the task at once, without
    retries, when a retry cannot help (credentials refused, missing connection, invalid config,
    refused query, the provider held by another run): an account is not locked by repeated logins.
    Everything else keeps Airflow's retries with exponential backoff."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return call()
    except Exception as exc:
        if needs_operator(exc):
            raise AirflowFailException(f"{type(exc).__name__}: {exc} (not retried: a retry cannot fix this; "
                                       "fix it and trigger the sync again)") from exc
        raise


def trigger_of(ctx: dict[str, Any]) -> str:
    run = ctx.get("dag_run")
    run_type = str(getattr(run, "run_type", "") or "")
    return "scheduled" if "scheduled" in run_type.lower() else "manual"


def triggered_by(ctx: dict[str, Any]) -> str | None:
    """Who triggered a manual run (Airflow records the user), for the run's history."""
    return getattr(ctx.get("dag_run"), "triggering_user_name", None) or None


def plan(provider_id: str, ctx: dict[str, Any]) -> dict[str, Any]:
    run = ctx["dag_run"]
    conf = dict(ctx.get("params") or {})
    conf.update(getattr(run, "conf", None) or {})
    return guarded(lambda: sync.plan(
        context(provider_id), dag_id=run.dag_id, dag_run_id=run.run_id, conf=conf, trigger=trigger_of(ctx),
        triggered_by=triggered_by(ctx)))


def fetch(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return guarded(lambda: sync.fetch(context(provider_id), plan))


def transform_load(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return guarded(lambda: sync.transform_load(context(provider_id), plan))


def reconcile(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    return guarded(lambda: sync.reconcile(context(provider_id), plan))


def sync_roster(provider_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Members, offices and open houses, when the YAML names them; skipped at once otherwise."""
    if not provider(provider_id).resources:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{provider_id}: the provider YAML names no resources (members, offices, "
                                   "open houses) to sync")
    from mls_sync.roster import sync_roster as run_roster

    return guarded(lambda: run_roster(context(provider_id), plan))


def task_label(key: str, task_ids: tuple[str, ...] = SYNC_TASKS) -> str:
    """Airflow names a mapped instance `<task_id>_<map_index>`: show it as `media[3]`."""
    if key in task_ids:
        return key
    head, _, index = key.rpartition("_")
    return f"{head}[{index}]" if head in task_ids and index.isdigit() else key


def failed_tasks(ctx: dict[str, Any]) -> list[str]:
    """Tasks of this run that failed themselves (asked of Airflow, not guessed); the ones that only
    could not run because of them (upstream_failed) are consequences, not causes."""
    ti, run = ctx["ti"], ctx["dag_run"]
    try:
        states = ti.get_task_states(dag_id=run.dag_id, run_ids=[run.run_id])
    except Exception as exc:  # finalize must still close the run
        log.warning("could not read task states (%s); judging by recorded stages", exc)
        return []
    per_run = states.get(run.run_id, {}) if isinstance(states, dict) else {}
    return sorted(task_label(str(k)) for k, v in per_run.items()
                  if str(getattr(v, "value", v)) == "failed" and str(k) != ti.task_id)


def finalize(provider_id: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """Close the run, then fail this task when the sync failed: the run's state in Airflow (grid,
    REST API, `dags list-runs`, callbacks) must say what happened, not that closing it worked."""
    from airflow.sdk.exceptions import AirflowFailException

    from mls_sync_airflow import callbacks

    plan = ctx["ti"].xcom_pull(task_ids="plan")
    result = sync.finalize(context(provider_id), plan, failed_tasks(ctx))
    if result["state"] != "success":
        raise AirflowFailException(f"sync {result.get('sync_id', '-')} of {provider_id} {result['state']}: "
                                   f"{result.get('error_summary') or 'see the failed tasks'}")
    for message in result.get("alerts", []):
        callbacks.alert(provider(provider_id), message, ctx, category="threshold")
    return result


def run_failed(ctx: dict[str, Any]) -> None:
    """DAG-level failure callback, once per failed run: close a run that never reached finalize
    (stopped from the UI, timed out) and send the one alert, with the cause finalize recorded."""
    from mls_sync_airflow import callbacks

    run = ctx.get("dag_run")
    dag_id = getattr(run, "dag_id", None) or getattr(ctx.get("dag"), "dag_id", "")
    run_id = getattr(run, "run_id", None) or ctx.get("run_id")
    if not dag_id or not run_id:
        return
    pid = provider_id_of(dag_id)
    sctx = context(pid)
    if sync.mark_cancelled_if_running(sctx, dag_id, run_id):
        log.info("run %s of %s marked cancelled; watermark unchanged", run_id, dag_id)
    outcome = sync.run_outcome(sctx, dag_id, run_id) or {}
    state = outcome.get("state") or "failed"
    cause = outcome.get("failure") or {}
    reason = ctx.get("reason")
    detail = outcome.get("error_summary") or (f"Airflow: {reason}" if reason else None)
    callbacks.alert(provider(pid), f"sync {state}", ctx, detail=detail,
                    category=cause.get("category") or ("operator" if state == "cancelled" else None),
                    task=cause.get("task"))


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

    return guarded(lambda: media.plan_batches(context(provider_id), plan))


def media_batch(provider_id: str, plan: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    from mls_sync import media

    from mls_sync_airflow.hooks import media_store

    cfg = provider(provider_id)
    return guarded(lambda: media.run_batch(context(provider_id), plan, batch, media_store(cfg.storage)))


def announce(provider_id: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Emit the provider's properties Asset only when the run changed something (skip otherwise)."""
    from airflow.sdk.exceptions import AirflowSkipException

    summary = summary or {}
    changed = {k: summary.get(k, 0) for k in ("added", "updated", "deleted", "status_changes",
                                              "photos_added", "photos_removed")}
    if summary.get("state") != "success" or summary.get("dry_run") or not any(changed.values()):
        raise AirflowSkipException(f"nothing to announce for {provider_id}: {changed}")
    return changed
