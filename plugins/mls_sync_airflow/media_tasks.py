"""What the media maintenance DAG's tasks run: build the engine's context, call one cleanup.

Kept apart from tasks.py (the sync DAG's functions) but built the same way, through its
`context()` and the hooks' `media_store`, so both DAGs reach the same database and
bucket with the same settings.
"""

from __future__ import annotations

import logging
from typing import Any

from mls_sync import media

from mls_sync_airflow.hooks import media_store
from mls_sync_airflow.tasks import context

log = logging.getLogger(__name__)


def cleanup_removed(provider_id: str) -> dict[str, int]:
    """Delete objects of photos removed longer ago than the provider's grace period."""
    ctx = context(provider_id)
    return media.cleanup_removed(ctx, media_store(ctx.provider.storage))


def orphans(provider_id: str, dry_run: bool = True) -> dict[str, Any]:
    """Objects under the provider's photo folder that no row points at; deleted unless `dry_run`."""
    ctx = context(provider_id)
    cfg = ctx.provider
    result = media.delete_orphans(ctx.db, media_store(cfg.storage), provider_id, cfg.media.prefix,
                                  dry_run=bool(dry_run))
    if result["orphans"] and dry_run:
        log.info("dry run: %d orphans would be deleted for %s, e.g. %s (trigger with dry_run=false)",
                 result["orphans"], provider_id, result["sample"][:5])
    return result
