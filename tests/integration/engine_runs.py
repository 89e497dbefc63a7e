"""Shared by the engine's integration tests: a provider's sync context against a mock MLS."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from mls_sync import connections, sync
from mls_sync.config import ProviderConfig, find_provider

from devstack import mls_connections


def context(mls: Any, db: sa.Engine, provider: str, **changes: Any) -> sync.SyncContext:
    """The shipped provider YAML (with top-level `changes`), its connection pointed at `mls`."""
    cfg = find_provider(provider)
    if changes:
        cfg = ProviderConfig.model_validate({**cfg.model_dump(by_alias=True), **changes})
    env = mls_connections(mls.url, mls.credentials)
    return sync.SyncContext(provider=cfg, db=db, mls=connections.from_env(cfg.connection_id, env))


def mls_listings_in(mls: Any, statuses: Any) -> dict[str, dict[str, Any]]:
    """The mock's listings (key -> record) whose StandardStatus is one of `statuses`."""
    return {key: rec for key in mls.all_keys() if (rec := mls.listing(key))["StandardStatus"] in statuses}
