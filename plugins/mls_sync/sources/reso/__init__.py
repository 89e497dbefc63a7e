"""RESO Web API (OData v4) replication client: the engine's `protocol: reso` source.

Connection convention (Airflow connection or AIRFLOW_CONN_<ID>):
- `conn.url()`: the OData service root, e.g. `https://api.mlsgrid.com/v2` or
  `http://127.0.0.1:PORT/reso/odata` (host holding the full URL, or host/port/schema).
- OAuth2 client credentials: `extra.token_url`; client id = `login` (or `extra.client_id`),
  secret = `password` (or `extra.client_secret`); optional `extra.scope`. Tokens are cached
  until shortly before `expires_in` and renewed once per request on 401/403.
- Or a static bearer token in `extra.access_token` (no renewal).
- Optional `extra.user_agent` (default `mls-sync/0.1`).

Behaviour in brief (details in the modules):
- What the server is comes from its `$metadata` (metadata.py): the resource's entity set, each
  field's type (every `$filter` literal is typed by it: odata.Dialect), enum members, and the
  OData version (4.0: `or` chains instead of `in`). `reso.field_types` overrides wrong metadata.
- `pages()` pages by keyset on (ModificationTimestamp, ListingKey), or follows
  `@odata.nextLink` when `reso.paging: nextlink` (page size asked with Prefer); a walk is bounded
  by the newest modification time at its start; Page.cursor is
  {"v": 1, "mode", "chunk", "page", "modified", "key"[, "next"][, "done"][, "cut"][, "lists"]}.
  `expected_count()` is the server's `$count` at that bound, which the engine checks.
- Removals stay in the page, marked `record["__deleted__"] = True` (MlgCanView=false with
  `reso.mlg_can_view`, or StandardStatus Delete).
- `keys()` streams the keys still visible, `media_refs()` the photos without bytes,
  `photos()` downloads them on `media.concurrency` threads; `stats` counts requests, bytes,
  retries, token_refreshes, pages, rate_limited and the last quota headers.

Modules: odata (typed query text and escaping), http (auth, limiter, retries, errors), source
(ResoSource), media (refs and downloads), metadata (tolerant CSDL parsing, the service model).
"""

from mls_sync.sources.reso.source import DELETED, ResoSource

__all__ = ["DELETED", "ResoSource"]
