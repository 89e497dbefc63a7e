"""One sync DAG and one status-poll DAG per provider YAML in include/mappings/.

This file only wires engine calls (mls_sync_airflow.tasks) into tasks: no IO at parse time
beyond reading the YAML files.

Nothing a provider YAML holds may raise out of this file: under a real dag-processor any import
error (a raising `DAG.validate()` included) marks every DAG of the file stale, so one bad YAML
would hide every provider. A provider that cannot be built stands in as a DAG of its own that
says why (description, docs, tag `invalid-config`, one task that fails with the reason), and
dags/mls_provider_configs.py lists every broken YAML at once as Airflow's import error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
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
from airflow.sdk.definitions.param import ParamsDict
from mls_sync.config import (
    ConfigError,
    ProviderConfig,
    load_provider,
    load_providers,
    mappings_dir,
    status_dag_id,
    sync_dag_id,
)
from mls_sync.run_options import PARAM_SCHEMAS
from mls_sync_airflow import callbacks
from mls_sync_airflow import tasks as run

START = datetime(2024, 1, 1)
log = logging.getLogger(__name__)
# Airflow checks every Param's schema against its JSON Schema dialect when a scheduled DAG is built;
# against draft 2020-12 (the default) that was 4.5 of the 13 ms one provider's sync DAG cost to parse.
# Draft-07 checks the same keywords (type, enum, items, pattern, maxItems, format) three times faster.
PARAM_DIALECT = "http://json-schema.org/draft-07/schema#"


def run_params() -> dict[str, Param]:
    """The trigger form: one Param per run option (mls_sync.run_options), in the cheaper dialect."""
    return {name: Param(**{"$schema": PARAM_DIALECT, **schema}) for name, schema in PARAM_SCHEMAS.items()}


@functools.cache
def _run_params_valid() -> bool:
    """Every default of the trigger form fits its schema (raises ParamValidationError otherwise).

    Checked once per parse: the form is the same for every provider, and Airflow checking it on
    each scheduled DAG (jsonschema checks the schema itself against its dialect on every call) was
    a fifth of the per-provider parse cost.
    """
    ParamsDict(run_params()).validate()
    return True


def attach_run_params(built: DAG) -> None:
    """The trigger form onto a built DAG, as `built.params = run_params()` would after its check."""
    _run_params_valid()
    # what DAG's own params converter does; the check it skips is the one just made
    object.__setattr__(built, "params", ParamsDict(run_params()))


def properties_asset(provider_id: str) -> Asset:
    return Asset(f"mls://{provider_id}/properties", extra={"provider": provider_id})


def status_asset(provider_id: str) -> Asset:
    return Asset(f"mls://{provider_id}/status", extra={"provider": provider_id})


def _default_args(cfg: ProviderConfig) -> dict[str, Any]:
    # No task-level failure callback in the sync DAG: the DAG's own on_failure_callback alerts
    # once per failed or cancelled run, with the cause finalize recorded.
    return {
        "owner": cfg.owner,
        "retries": cfg.retry.task_retries,
        "retry_delay": timedelta(seconds=cfg.retry.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=cfg.retry.max_retry_delay_seconds),
        "pool": cfg.pool(),
    }


@functools.cache
def _config_defaults() -> dict[str, Any]:
    """The DAG settings Airflow would read from its config for each DAG built (three lookups of its
    layered config per DAG, about 0.2 ms): read once per parse, with the same values."""
    from airflow.sdk.configuration import conf

    return {"max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
            "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
            "disable_bundle_versioning": conf.getboolean("dag_processor", "disable_bundle_versioning")}


def _paused_at_creation(cfg: ProviderConfig) -> bool | None:
    """A disabled provider starts paused; otherwise Airflow's dags_are_paused_at_creation decides."""
    return True if not cfg.enabled else None


def _doc(cfg: ProviderConfig, what: str) -> str:
    return (f"### {cfg.name}: {what}\n\nProvider `{cfg.provider_id}` over **{cfg.protocol.upper()}**, "
            f"MLS connection `{cfg.connection_id}`, pool `{cfg.pool()}` ({cfg.limits.pool_slots} slots; "
            "made or resized from the YAML when a run starts).\n\n"
            "Trigger with config for a manual run: mode full/incremental, partial by listing keys, "
            "postal codes or cities, modified since, include photos, dry run. A run whose sync fails "
            "ends failed here, with the cause in finalize's log and on the MLS Sync view.")


# The sync DAG's tasks, defined once: each finds its provider from the DAG it runs in, so building a
# provider's DAG only instantiates them (defining and introspecting eight decorated functions per
# provider was a fifth of the file's parse time).

def _provider_id() -> str:
    return run.provider_id_of(get_current_context()["dag"].dag_id)


@task
def plan(**context: Any) -> dict[str, Any]:
    return run.plan(_provider_id(), context)


@task
def fetch(plan: dict[str, Any]) -> dict[str, Any]:
    return run.fetch(_provider_id(), plan)


@task
def transform_load(plan: dict[str, Any]) -> dict[str, Any]:
    return run.transform_load(_provider_id(), plan)


@task
def reconcile(plan: dict[str, Any]) -> dict[str, Any]:
    return run.reconcile(_provider_id(), plan)


@task
def sync_roster(plan: dict[str, Any]) -> dict[str, Any]:
    return run.sync_roster(_provider_id(), plan)


@task
def media_batches(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return run.media_batches(_provider_id(), plan)


@task(map_index_template="{{ media_batch_label }}")
def media(plan: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    ctx = get_current_context()
    ctx["media_batch_label"] = batch.get("label", "")
    return run.media_batch(_provider_id(), plan, batch)


# Closes the run whatever happened upstream, then fails when the sync did: the run's state comes
# from its leaves, and announce (all_success) is skipped or upstream_failed.
@task(trigger_rule="all_done")
def finalize(**context: Any) -> dict[str, Any]:
    return run.finalize(_provider_id(), context)


@task(retries=0)
def announce(summary: dict[str, Any]) -> dict[str, Any]:
    return run.announce(_provider_id(), summary)


def _sync_tasks(provider_id: str) -> None:
    p = plan()
    f = fetch(p)
    tl = transform_load(p)
    rc = reconcile(p)
    roster = sync_roster(p)
    batches = media_batches(p)
    m = media.partial(plan=p).expand(batch=batches)
    fin = finalize()
    f >> tl >> rc >> [batches, roster]  # the roster beside the photos, in the provider's pool
    [p, f, tl, rc, roster, batches, m] >> fin
    announce.override(outlets=[properties_asset(provider_id)])(fin)


def build_sync_dag(cfg: ProviderConfig) -> DAG:
    built = dag(
        dag_id=cfg.dag_id(), schedule=cfg.schedule if cfg.enabled else None, start_date=START, catchup=False,
        max_active_runs=1, tags=["mls", "mls-sync", *cfg.tags], doc_md=_doc(cfg, "listing sync"),
        default_args=_default_args(cfg),
        is_paused_upon_creation=_paused_at_creation(cfg), on_failure_callback=run.run_failed,
        dagrun_timeout=timedelta(minutes=cfg.alerts.max_duration_minutes * 8), **_config_defaults(),
    )(functools.partial(_sync_tasks, cfg.provider_id))()
    # The trigger form's Params go on the DAG once its tasks exist: Airflow deep-copies a DAG's
    # params into every task created after them (4 copies per task, 32 per provider: a third of
    # the file's parse time), and tasks read the DAG's params at run time anyway (process_params).
    attach_run_params(built)
    return built


@task
def poll_status(**context: Any) -> dict[str, Any]:
    return run.status_poll(_provider_id(), context)


def build_status_dag(cfg: ProviderConfig) -> DAG:
    pid = cfg.provider_id

    @dag(
        dag_id=cfg.status_dag_id(),
        schedule=cfg.status_poll.schedule if cfg.status_poll.enabled and cfg.enabled else None,
        start_date=START, catchup=False, max_active_runs=1, tags=["mls", "mls-status", *cfg.tags],
        doc_md=_doc(cfg, "status poll (Active -> Pending -> Closed within minutes)"),
        default_args={**_default_args(cfg), "on_failure_callback": callbacks.task_failed},
        is_paused_upon_creation=_paused_at_creation(cfg), **_config_defaults(),
    )
    def status() -> None:
        poll_status.override(outlets=[status_asset(pid)])()

    return status()


def build_invalid_dag(provider_id: str, reason: str) -> DAG:
    """A provider whose YAML cannot be used: a DAG that says why, and fails loudly if triggered."""
    first = reason.strip().splitlines()[0] if reason.strip() else "invalid provider config"

    @dag(
        dag_id=sync_dag_id(provider_id), schedule=None, start_date=START, catchup=False, max_active_runs=1,
        tags=["mls", "mls-sync", "invalid-config"], description=f"INVALID CONFIG: {first}"[:500],
        doc_md=(f"### Provider `{provider_id}`: invalid configuration\n\nThis provider does not sync until "
                f"its YAML is fixed. Other providers are not affected.\n\n```\n{reason}\n```\n"),
        default_args={"owner": "mls-sync", "retries": 0},
    )
    def invalid() -> None:
        @task(retries=0)
        def invalid_config() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(reason)

        invalid_config()

    return invalid()


def _provider_dags(cfg: ProviderConfig | ConfigError, provider_id: str) -> list[DAG]:
    """The provider's DAGs, or the one that explains why there are none; never raises."""
    try:
        if isinstance(cfg, ConfigError):
            raise cfg
        dags = [build_sync_dag(cfg), build_status_dag(cfg)]
        for d in dags:
            d.validate()  # what the DagBag would raise later, as an import error of the whole file
        return dags
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        log.warning("provider %s is not scheduled: %s", provider_id, reason)
        return [build_invalid_dag(provider_id, reason)]


def _configs(wanted: str | None) -> Iterable[tuple[Path, ProviderConfig | ConfigError]]:
    """Every provider's config, or, when a worker parses this file to run one task, only that
    task's provider's: its YAML alone is read, however many providers there are."""
    if not wanted:
        return load_providers()
    pid = run.provider_id_of(wanted)
    path = mappings_dir() / f"{pid}.yaml"
    if wanted not in (sync_dag_id(pid), status_dag_id(pid)) or not path.is_file():
        return ()  # not a DAG of this file
    try:
        return ((path, load_provider(path)),)
    except ConfigError as exc:
        return ((path, exc),)


def _build_all() -> dict[str, DAG]:
    wanted = get_parsing_context().dag_id
    out: dict[str, DAG] = {}
    for path, cfg in _configs(wanted):
        pid = path.stem
        if not ProviderConfig.valid_id(pid):
            continue  # no usable DAG id: dags/mls_provider_configs.py reports the file
        for d in _provider_dags(cfg, pid):
            out[d.dag_id] = d
    return out


globals().update(_build_all())
