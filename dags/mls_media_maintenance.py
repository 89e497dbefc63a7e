"""Daily photo housekeeping per provider: delete removed photos after their grace period, then
find (and, when the run says so, delete) objects no row points at.

Orphan deletion is a dry run unless triggered with `dry_run=false`: the first look at what
would go is a report, not a loss. Parsing reads the provider YAMLs only; a YAML that fails
validation is left out here (its own sync DAG reports it in list-import-errors).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task, task_group
from mls_sync.config import ProviderConfig, load_providers

START = datetime(2024, 1, 1)


def _providers() -> list[ProviderConfig]:
    # a broken YAML is reported by its own sync DAG
    return [cfg for _, cfg in load_providers() if isinstance(cfg, ProviderConfig) and cfg.media.enabled]


def _label(provider_id: str) -> None:
    """The mapped instance's label in the grid: its provider, not a number."""
    get_current_context()["provider_label"] = provider_id


@task(map_index_template="{{ provider_label }}")
def cleanup_removed(provider_id: str) -> dict[str, int]:
    from mls_sync_airflow import media_tasks

    _label(provider_id)
    return media_tasks.cleanup_removed(provider_id)


@task(map_index_template="{{ provider_label }}")
def orphans(provider_id: str, **context: Any) -> dict[str, Any]:
    from mls_sync_airflow import media_tasks

    _label(provider_id)
    return media_tasks.orphans(provider_id, dry_run=context["params"]["dry_run"])


@task_group
def housekeeping(provider_id: str) -> None:
    cleanup_removed(provider_id) >> orphans(provider_id)


# One mapped pair of tasks for all providers (one instance pair per provider, each provider's
# orphan search after its own cleanup): two task objects per provider made this DAG a fifth of a
# provider's parse cost. The params go on once the tasks exist: tasks read the DAG's params at
# run time.
@dag(
    dag_id="mls_media_maintenance", schedule="@daily", start_date=START, catchup=False, max_active_runs=1,
    tags=["mls", "mls-media", "maintenance"],
    default_args={"owner": "mls-sync", "retries": 2, "retry_delay": timedelta(minutes=5),
                  "retry_exponential_backoff": True, "max_retry_delay": timedelta(hours=1)},
    doc_md=__doc__,
)
def mls_media_maintenance() -> None:
    housekeeping.expand(provider_id=[cfg.provider_id for cfg in _providers()])


maintenance = mls_media_maintenance()
maintenance.params = {"dry_run": Param(True, type="boolean",
                                       description="Only list orphaned objects; trigger with false to delete them.")}
