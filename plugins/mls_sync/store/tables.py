"""SQLAlchemy Core views of the tables the migrations create.

The SQL files are the source of truth; these Table objects are reflected from the live database
once per engine, so a column added by a migration never has to be declared twice.
"""

from __future__ import annotations

from functools import cache

import sqlalchemy as sa
from sqlalchemy.engine import Engine

TABLES = ("properties", "property_media", "property_status_history", "property_conflicts",
          "mls_sync_status", "mls_sync_history", "mls_sync_errors", "mls_raw_records", "property_media_sync",
          "mls_metadata_cache", "mls_sync_leases", "mls_reconcile_keys", "members", "offices", "open_houses",
          "mls_resource_sync", "mls_rate_permits")


class Tables:
    """Attribute access to the reflected tables: `t.properties.c.price`."""

    def __init__(self, metadata: sa.MetaData) -> None:
        for name in TABLES:
            setattr(self, name, metadata.tables[name])

    properties: sa.Table
    property_media: sa.Table
    property_status_history: sa.Table
    property_conflicts: sa.Table
    mls_sync_status: sa.Table
    mls_sync_history: sa.Table
    mls_sync_errors: sa.Table
    mls_raw_records: sa.Table
    property_media_sync: sa.Table
    mls_metadata_cache: sa.Table
    mls_reconcile_keys: sa.Table
    mls_rate_permits: sa.Table
    mls_sync_leases: sa.Table
    members: sa.Table
    offices: sa.Table
    open_houses: sa.Table
    mls_resource_sync: sa.Table


@cache
def _tables_for(url: str, engine_id: int, engine: Engine) -> Tables:
    md = sa.MetaData()
    md.reflect(bind=engine, only=list(TABLES))
    return Tables(md)


def tables(engine: Engine) -> Tables:
    return _tables_for(str(engine.url), id(engine), engine)
