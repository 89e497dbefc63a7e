"""Each provider's Airflow pool, made from its YAML when one of its runs starts.

The scheduler never queues a task whose pool does not exist: it stays `scheduled` without a word
in the UI. A pool made by a setup step is a step a user can forget when adding a provider, so the
scheduler makes it (or resizes it to the YAML's `limits.pool_slots`) the moment a run of the
provider's DAGs starts running,
before any of its tasks is scheduled. `python -m mls_sync_airflow.setup` does the same up front.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl
from mls_sync.config import ConfigError, ProviderConfig, find_provider

log = logging.getLogger(__name__)
DAG_PREFIXES = ("mls_sync__", "mls_status__")


def describe(cfg: ProviderConfig) -> str:
    return f"MLS provider {cfg.name}: concurrent tasks against its servers (from {cfg.provider_id}.yaml)"


def ensure_pool(session: Any, cfg: ProviderConfig) -> str | None:
    """Create the provider's pool or set its slots from the YAML, in `session` (the caller commits).
    Returns what it did, or None when the pool was already right."""
    from airflow.models.pool import Pool
    from sqlalchemy import select

    name, slots = cfg.pool(), cfg.limits.pool_slots
    pool = session.scalar(select(Pool).where(Pool.pool == name))
    if pool is None:
        session.add(Pool(pool=name, slots=slots, description=describe(cfg), include_deferred=False))
        return f"created pool {name} with {slots} slots"
    if pool.slots != slots:
        old, pool.slots = pool.slots, slots
        return f"resized pool {name} from {old} to {slots} slots (limits.pool_slots in {cfg.provider_id}.yaml)"
    return None


def provider_of(dag_id: str) -> str | None:
    for prefix in DAG_PREFIXES:
        if dag_id.startswith(prefix):
            return dag_id[len(prefix):]
    return None


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    """Runs in the scheduler, inside its transaction, as a run of ours starts."""
    pid = provider_of(getattr(dag_run, "dag_id", "") or "")
    if pid is None:
        return
    try:
        cfg = find_provider(pid)
    except ConfigError:
        return  # its DAG says what is wrong; it has no tasks in the pool
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is None:
        from airflow.utils.session import create_session

        with create_session() as own:
            done = ensure_pool(own, cfg)
    else:
        done = ensure_pool(session, cfg)
        session.flush()
    if done:
        log.info("MLS sync: %s", done)
