"""`mls_metadata_cache`: a source's server metadata kept between runs (see 004_metadata_cache.sql).

Keys carry the server's announced metadata version, so a hit is never stale by the server's own
account; a day's age limit covers servers that change metadata without saying so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from mls_sync.store.bulk import encode_json
from mls_sync.store.tables import Tables

MAX_AGE = timedelta(days=1)
_decode = msgspec.json.Decoder().decode


class DbMetadataCache:
    """The store's implementation of `sources.base.MetadataCache` for one provider."""

    def __init__(self, engine: Engine, t: Tables, provider_id: str, max_age: timedelta = MAX_AGE) -> None:
        self.engine, self.table, self.provider_id, self.max_age = engine, t.mls_metadata_cache, provider_id, max_age

    def get(self, key: str) -> Any | None:
        m = self.table
        with self.engine.connect() as c:
            body = c.execute(sa.select(sa.cast(m.c.body, sa.Text)).where(
                m.c.provider_id == self.provider_id, m.c.cache_key == key,
                m.c.fetched_at > sa.func.now() - self.max_age)).scalar()
        return None if body is None else _decode(body)

    def put(self, key: str, value: Any) -> None:
        """Store `value` under `key` and drop this provider's entries for other metadata versions."""
        m = self.table
        version = key.rpartition("|")[2]
        stmt = pg_insert(m).values(provider_id=self.provider_id, cache_key=key,
                                   body=sa.cast(sa.literal(encode_json(value)), m.c.body.type))
        with self.engine.begin() as c:
            c.execute(m.delete().where(m.c.provider_id == self.provider_id,
                                       sa.not_(m.c.cache_key.endswith("|" + version))))
            c.execute(stmt.on_conflict_do_update(index_elements=["provider_id", "cache_key"], set_={
                "body": stmt.excluded.body, "fetched_at": sa.func.now()}))
