"""ResoSource: replication of a RESO Web API resource, key walks, metadata and the service check.

What the server is, as far as query text goes, comes from its `$metadata` (read once per source,
and kept per provider in PostgreSQL through `metadata_cache` when the engine gives one): where the
resource lives (a set `Properties` of type `PropertyResi`), each field's type (so literals are
typed), enum members (compared by their declared names, read back as what they mean), and the
OData version (4.0: `or` chains instead of `in`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from mls_sync.limits import RateLimiter, RetryPolicy
from mls_sync.sources.base import (
    Masker,
    MetadataCache,
    Page,
    PhotoObject,
    PhotoRef,
    QueryError,
    SearchCriteria,
    ServerError,
    Source,
    SourceFields,
)
from mls_sync.sources.reso import odata
from mls_sync.sources.reso.http import ODataClient, TokenSource
from mls_sync.sources.reso.media import MediaDownloader, media_refs
from mls_sync.sources.reso.metadata import (
    EntityType,
    FieldType,
    Resource,
    ServiceModel,
    parse_csdl,
)

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig
    from mls_sync.connections import Connection

log = logging.getLogger(__name__)

DELETED = "__deleted__"
DEFAULT_USER_AGENT = "mls-sync/0.1"
PROBE_TEXT = "mls-sync-probe"


class ResoSource(Source):
    """A RESO Web API (OData v4) provider; see the package docstring for the connection form."""

    protocol = "reso"

    def __init__(self, provider: ProviderConfig, conn: Connection, limiter: RateLimiter, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if provider.reso is None:
            raise ValueError(f"provider {provider.provider_id!r} has no reso settings")
        self.provider = provider
        self.settings = provider.reso
        self.roles = provider.roles()
        extra = conn.extra or {}
        tokens = TokenSource(
            token_url=extra.get("token_url"),
            client_id=extra.get("client_id") or conn.login,
            client_secret=extra.get("client_secret") or conn.password,
            scope=extra.get("scope"),
            static_token=extra.get("access_token"),
            clock=clock,
        )
        self.client = ODataClient(
            conn.url(), tokens, limiter, RetryPolicy(attempts=provider.limits.request_attempts),
            user_agent=str(extra.get("user_agent") or DEFAULT_USER_AGENT),
            timeout=self.settings.timeout_seconds,
            masker=Masker(conn.secret_values()),
            pool_size=provider.media.concurrency,
            sleep=sleep,
        )
        self.media_concurrency = provider.media.concurrency
        self.metadata_cache: MetadataCache | None = None  # the engine's per-provider store, if any
        self._model: ServiceModel | None = None
        self._resources: dict[str, Resource] = {}
        self._dialects: dict[str, odata.Dialect] = {}
        self._use_in: bool | None = None
        self._borrowed = False  # a view of another source's client (for_resource): close() leaves it

    def for_resource(self, resource: str, class_: str | None, fields: SourceFields) -> ResoSource:
        """Replication of another resource (Member, Office, OpenHouse) through this client: one
        token, one rate limiter, one request count; $metadata read once serves both."""
        if self.settings.use_metadata:
            self.model()  # read now, so the view shares it rather than reading it again
        view = copy.copy(self)  # shares the client, the model and the per-resource caches
        view.settings = self.settings.model_copy(update={"resource": resource})
        view.roles = fields
        view._borrowed = True
        return view

    @classmethod
    def from_config(cls, provider: ProviderConfig, conn: Connection, limiter: RateLimiter) -> ResoSource:
        """Build without any IO; the token is fetched on the first request."""
        return cls(provider, conn, limiter)

    def __repr__(self) -> str:
        return f"ResoSource({self.provider.provider_id!r}, {self.client.root!r})"

    @property
    def stats(self) -> dict[str, Any]:
        """requests, bytes, retries, token_refreshes, pages, rate_limited, quota (last headers)."""
        return self.client.stats

    # ---- what the server is --------------------------------------------------------------
    def _cache_key(self, what: str) -> str:
        """Per provider and service root: pointing the provider elsewhere reads the new server's."""
        return f"reso|{what}|{hashlib.sha256(self.client.root.encode()).hexdigest()[:16]}"

    def _cached(self, what: str) -> Any | None:
        return self.metadata_cache.get(self._cache_key(what)) if self.metadata_cache is not None else None

    def _keep(self, what: str, value: Any) -> None:
        if self.metadata_cache is not None:
            self.metadata_cache.put(self._cache_key(what), value)

    def _fetch_model(self) -> ServiceModel:
        resp = self.client.get(self.client.url("$metadata"), headers={"Accept": "application/xml"},
                               what="$metadata")
        return parse_csdl(resp.content)

    def model(self) -> ServiceModel:
        """The server's `$metadata`: once per source, and from the provider's cache when it has one."""
        if self._model is None:
            cached = self._cached("$metadata")
            model = ServiceModel.from_json(cached) if cached is not None else None
            if model is None:
                model = self._fetch_model()
                self._keep("$metadata", model.to_json())
            self._model = model
        return self._model

    def resource(self, name: str) -> Resource:
        """Where `name` (Property, Media) is served and what its fields are."""
        if name not in self._resources:
            if not self.settings.use_metadata:
                res = Resource(name, name, EntityType(name, name, (), {}, {}))
            else:
                model = self.model()
                res = model.resource(name)
                note = model.resolution_note(res)
                if note:
                    log.info("$metadata: %s", note)
            self._resources[name] = res
        return self._resources[name]

    def _field_types(self, name: str) -> dict[str, FieldType]:
        """`name`'s field types: $metadata's, with reso.field_types over them."""
        fields = dict(self.resource(name).type.fields)
        fields.update({f: FieldType(edm) for f, edm in self.settings.field_types.items()})
        return fields

    def dialect(self, name: str) -> odata.Dialect:
        """Literal types of `name`'s fields and its list form (decided when a list is first written)."""
        if name not in self._dialects:
            self._dialects[name] = odata.Dialect(self._field_types(name), use_in=self._in_supported)
        return self._dialects[name]

    def _in_supported(self) -> bool:
        """Whether `F in (...)` may be sent: the YAML's odata_version, else $metadata's (4.0: no),
        else one probe of the server (kept with the metadata), which may answer 400 to `in`."""
        if self._use_in is None:
            version = self.settings.odata_version
            if version == "auto" and self.settings.use_metadata and self.model().version == "4.0":
                version = "4.0"
            if version != "auto":
                self._use_in = version == "4.01"
            else:
                cached = self._cached("in")
                self._use_in = bool(cached) if cached is not None else self._probe_in()
                if cached is None:
                    self._keep("in", self._use_in)
            if not self._use_in:
                log.info("OData 4.0 server: value lists are sent as `or` chains, not `in`")
        return self._use_in

    def _probe_in(self) -> bool:
        """One `key in (x)` query; a 400 to it where `key eq x` is answered means no `in`."""
        res = self.resource(self.settings.resource)
        key = self.roles.key
        lists = odata.Dialect(self._field_types(self.settings.resource), use_in=True)
        ft = lists.type_of(key)
        probe: Any = 0 if ft.edm in odata.INTEGER_TYPES | odata.DECIMAL_TYPES else PROBE_TEXT
        if ft.enum is not None and ft.enum.members:
            probe = ft.enum.members[0].name
        params = {"$top": "1", "$select": odata.ident(key)}
        try:
            self.client.get_json(res.path, {**params, "$filter": lists.any_of(key, [probe])}, what="`in` probe")
            return True
        except QueryError as exc:
            if exc.code != 400:
                raise
            refused = exc
        self.client.get_json(res.path, {**params, "$filter": lists.compare(key, "eq", probe)}, what="`eq` probe")
        log.warning("the server answers 400 to `in` (%s); value lists are sent as `or` chains", refused)
        return False

    # ---- paging --------------------------------------------------------------------------
    def _page_params(self, walk: odata.Walk, after: list[Any] | None) -> tuple[dict[str, str], dict]:
        """Query options and headers of one page.

        Keyset walks ask each query for `$top` rows: whether a server reads $top as OData does (a
        limit on the result) or as a page size, a query after the last row gets the next rows.
        nextLink walks ask the page size with `Prefer: odata.maxpagesize` only: under OData, $top
        would end the nextLink chain at $top rows (1,000 of 1,200, silently). Where a vendor reads
        $top as a page size and wants it, `reso.top_is_page_size` sends it.
        """
        params: dict[str, str] = {}
        where = walk.filter
        if after is not None:
            lits = [(f, walk.dialect.literal(f, v)) for f, v in zip(walk.order, after, strict=True)]
            where = odata.and_all([walk.filter, odata.after_filter(lits)])
        if where:
            params["$filter"] = where
        params["$orderby"] = ",".join(odata.ident(f) for f in walk.order)
        if walk.select:
            params["$select"] = walk.select
        if walk.expand:
            params["$expand"] = walk.expand
        headers: dict[str, str] = {}
        size = walk.page_size or self.settings.page_size
        if self.settings.paging == "nextlink":
            headers["Prefer"] = f"odata.maxpagesize={size}"
            if self.settings.top_is_page_size:
                params["$top"] = str(size)
        elif self.settings.max_page_size_header:
            headers["Prefer"] = f"odata.maxpagesize={size}"
        else:
            params["$top"] = str(size)
        return params, headers

    def walk(self, walk: odata.Walk, position: dict[str, Any] | None) -> Iterator[tuple[list[dict], dict]]:
        """Yield (records, position after them); position is {"after": [...]} or {"next": url}.

        Keyset: re-query `after` the last row until a page without nextLink that is short (OData
        says a server that caps the page must send nextLink) or follows pages that had one.
        nextLink: follow the server's links; only to the service's own host, since the bearer
        token goes with every request. Enum values come back as what they mean (Dialect.decode).
        """
        nextlink = self.settings.paging == "nextlink"
        params, headers = self._page_params(walk, None)
        if position and position.get("done"):
            return
        after = position.get("after") if position else None
        url = position.get("next") if position and nextlink else None
        size = walk.page_size or self.settings.page_size
        saw_link = False
        decode = walk.dialect.decode if walk.dialect.decoders else None
        while True:
            if nextlink:
                url = url or self.client.url(walk.path, params)
            else:
                params, headers = self._page_params(walk, after)
                url = self.client.url(walk.path, params)
            body = self.client.get_json(url, headers=headers, what=f"{walk.path} page")
            self.client.count("pages")
            records = body.get("value")
            if not isinstance(records, list):
                raise ServerError(f"{walk.path}: answer has no 'value' array")
            if decode:
                decode(records)
            link = body.get("@odata.nextLink")
            if nextlink:
                nxt = urljoin(url, link) if link else None
                if nxt and not self.client.same_origin(nxt):
                    raise ServerError(f"{walk.path}: nextLink points to another host; refusing to send "
                                      "the access token there")
                yield records, ({"next": nxt} if nxt else {"done": True})
                if not nxt:
                    return
                url = nxt
                continue
            if not records:
                return
            last = records[-1]
            new_after = [last.get(f) for f in walk.order]
            if any(v is None for v in new_after):
                raise ServerError(f"{walk.path}: a record lacks {list(walk.order)}; keyset "
                                  "paging needs them (select them, or use paging: nextlink)")
            if new_after == after:
                raise ServerError(f"{walk.path}: the server ignored the keyset filter (page repeats)")
            after = new_after
            # No nextLink ends the walk if the page is short, or if this server has shown it sends
            # nextLinks when more rows exist (saves one empty request per walk).
            done = not link and (len(records) < size or saw_link)
            saw_link = saw_link or bool(link)
            yield records, ({"after": after, "done": True} if done else {"after": after})
            if done:
                return

    def _is_deleted(self, rec: dict[str, Any]) -> bool:
        if self.settings.mlg_can_view:
            v = rec.get("MlgCanView")
            if v is False or (isinstance(v, str) and v.lower() == "false"):
                return True
        return bool(self.roles.status and rec.get(self.roles.status) == "Delete")

    def _deletion_fields(self) -> list[str | None]:
        return [self.roles.status, "MlgCanView" if self.settings.mlg_can_view else None]

    def _cut(self, path: str, where: str | None) -> Any | None:
        """The newest modification timestamp matching `where` now: the walk's upper bound (None:
        nothing matches). Bounding the walk and the closing $count by one cut is what makes them
        comparable; what changes meanwhile moves past it and is the next run's."""
        r = self.roles
        params = {"$orderby": f"{odata.ident(r.modified)} desc", "$top": "1",
                  "$select": odata.select_list([r.key, r.modified], []) or ""}
        if where:
            params["$filter"] = where
        rows = self.client.get_json(path, params, what=f"{path} newest modification").get("value") or []
        if not rows:
            return None
        cut = rows[0].get(r.modified) if isinstance(rows[0], dict) else None
        if cut is None:
            raise ServerError(f"{path}: the newest record has no {r.modified}")
        return cut

    def _bounded(self, dialect: odata.Dialect, where: str | None, cut: Any) -> str | None:
        return odata.and_all([where, dialect.compare(self.roles.modified, "le", cut)])

    def pages(self, criteria: SearchCriteria, resume_from: dict[str, Any] | None = None) -> Iterator[Page]:
        """Every matching record once, ordered by (modified, key); deletions carry `__deleted__`.

        Cursor: {"v": 1, "mode": "keyset"|"nextlink", "chunk": i, "page": n, "modified": T,
        "key": K} (keyset) or {..., "next": url} (nextlink); "done": True once a chunk is
        exhausted; "cut": the walk's upper modification bound (see `_cut`); "lists": "in"|"or",
        how the listing-key chunks (index `chunk`) were cut, when criteria.listing_keys is set.
        """
        mode = self.settings.paging
        cursor = odata.check_cursor(resume_from, mode)
        r = self.roles
        res = self.resource(self.settings.resource)
        dialect = self.dialect(self.settings.resource)
        select = odata.select_list(criteria.select, [r.key, r.modified, *self._deletion_fields()])
        chunks: list[tuple[Any, ...]] = [()]
        lists = None
        if criteria.listing_keys:
            chunks = dialect.chunks(r.key, criteria.listing_keys)
            lists = "in" if dialect.use_in else "or"
            if cursor and cursor.get("lists", "in") != lists:
                log.warning("resume cursor's key lists were cut for `%s`, this server now takes `%s`: "
                            "reading the listing keys again from the first", cursor.get("lists", "in"), lists)
                cursor = None
        first = cursor.get("chunk", 0) if cursor else 0
        number = cursor.get("page", 0) if cursor else 0
        cut = cursor.get("cut") if cursor else None
        if not criteria.listing_keys and cut is None:
            cut = self._cut(res.path, odata.criteria_filter(criteria, r, dialect))
            if cut is None:
                return
        for i, keys in enumerate(chunks):
            if i < first:
                continue
            where = odata.criteria_filter(criteria, r, dialect, keys)
            if cut is not None:
                where = self._bounded(dialect, where, cut)
            walk = odata.Walk(res.path, where, (r.modified, r.key), dialect, select, page_size=criteria.page_size)
            position = None
            if cursor and i == first:
                position = {"done": cursor.get("done"), "next": cursor.get("next"),
                            "after": [cursor["modified"], cursor["key"]] if cursor.get("key") is not None else None}
            for records, pos in self.walk(walk, position):
                for rec in records:
                    if self._is_deleted(rec):
                        rec[DELETED] = True
                number += 1
                out: dict[str, Any] = {"v": odata.CURSOR_VERSION, "mode": mode, "chunk": i, "page": number}
                if "after" in pos:
                    out["modified"], out["key"] = pos["after"]
                elif records:
                    out["modified"], out["key"] = records[-1].get(r.modified), records[-1].get(r.key)
                out.update({k: pos[k] for k in ("next", "done") if k in pos})
                if cut is not None:
                    out["cut"] = cut
                if lists:
                    out["lists"] = lists
                yield Page(records=records, cursor=out, number=number)

    def expected_count(self, criteria: SearchCriteria, cursor: dict[str, Any] | None) -> int | None:
        """How many records the server counts for the walk that ended at `cursor`, at its cut
        (`$count=true`); None when there is nothing to compare (a key-list walk, no cut, a server
        without $count, or reso.verify_count off). The engine compares it with the distinct keys
        it landed: fewer means the walk missed records, whatever the paging said."""
        if not self.settings.verify_count or criteria.listing_keys or not cursor or cursor.get("cut") is None:
            return None
        r = self.roles
        res = self.resource(self.settings.resource)
        dialect = self.dialect(self.settings.resource)
        where = self._bounded(dialect, odata.criteria_filter(criteria, r, dialect), cursor["cut"])
        params = {"$count": "true", "$top": "1", "$select": odata.ident(r.key)}
        if where:
            params["$filter"] = where
        try:
            body = self.client.get_json(res.path, params, what=f"{res.path} $count")
        except QueryError as exc:
            log.warning("the server refuses $count (%s): this read cannot be checked against its count", exc)
            return None
        count = body.get("@odata.count")
        if isinstance(count, bool) or not isinstance(count, int):
            log.warning("the server ignores $count=true (no @odata.count): this read cannot be checked "
                        "against its count")
            return None
        return count

    def keys(self, criteria: SearchCriteria | None = None) -> Iterator[str]:
        """Every listing key the server still shows (deletion-marked ones left out).

        Downloads only the key (plus the fields that mark deletions), ordered by key, so a full
        comparison with the local table finds listings that vanished without a trace.
        """
        criteria = criteria or SearchCriteria()
        r = self.roles
        res = self.resource(self.settings.resource)
        dialect = self.dialect(self.settings.resource)
        select = odata.select_list([r.key], self._deletion_fields())
        chunks = dialect.chunks(r.key, criteria.listing_keys) if criteria.listing_keys else [()]
        for keys in chunks:
            walk = odata.Walk(res.path, odata.criteria_filter(criteria, r, dialect, keys), (r.key,), dialect, select)
            for records, _ in self.walk(walk, None):
                for rec in records:
                    if not self._is_deleted(rec) and rec.get(r.key) is not None:
                        yield str(rec[r.key])

    # ---- media ---------------------------------------------------------------------------
    def media_refs(self, listing_keys: Sequence[str]) -> Iterator[PhotoRef]:
        """The photos the server lists for these listings, without downloading them."""
        return media_refs(self, listing_keys)

    def media_record_key(self) -> str:
        """The Media field naming a photo's listing: ResourceRecordKeyNumeric where listings are
        keyed by an integer and Media declares it, else ResourceRecordKey."""
        key_type = self.dialect(self.settings.resource).type_of(self.roles.key).edm
        media = self.dialect("Media")
        if key_type in odata.INTEGER_TYPES and "ResourceRecordKeyNumeric" in media.fields:
            return "ResourceRecordKeyNumeric"
        return "ResourceRecordKey"

    def photos(self, listing_keys: Sequence[str]) -> Iterator[PhotoObject]:
        """Download every current photo (bounded concurrency); failures yield an error object."""
        return self.download(self.media_refs(listing_keys))

    def download(self, refs: Iterable[PhotoRef]) -> Iterator[PhotoObject]:
        """Download these photos (the media stage picks only new or changed ones), bounded
        concurrency, under this source's limiter; failures yield an error object."""
        downloader = MediaDownloader(self.client, self.media_concurrency,
                                     token_as_user_agent=self.settings.media_user_agent_token)
        return downloader.download(refs)

    # ---- service -------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Token + a one-row probe of the resource; returns facts for `mls-sync check`."""
        self.client.token()
        r = self.roles
        res = self.resource(self.settings.resource)
        params = {"$top": "1", "$select": odata.select_list([r.key, r.modified], []) or "",
                  "$orderby": f"{odata.ident(r.modified)} desc"}
        try:
            body = self.client.get_json(res.path, {**params, "$count": "true"}, what="check")
        except QueryError:  # some servers refuse $count
            body = self.client.get_json(res.path, params, what="check")
        rows = body.get("value") or []
        sample = rows[0] if rows else {}
        tokens = self.client.tokens
        return {
            "protocol": "reso",
            "service_root": self.client.root,
            "resource": self.settings.resource,
            "entity_set": res.path,
            "odata_version": self._model.version if self._model else None,
            "auth": "oauth2 client credentials" if tokens.refreshable else "static bearer token",
            "token_seconds_left": tokens.seconds_left(),
            "count": body.get("@odata.count"),
            "latest_key": sample.get(r.key),
            "latest_modified": sample.get(r.modified),
            "paging": self.settings.paging,
            "page_size": self.settings.page_size,
            "quota": dict(self.stats["quota"]),
        }

    def metadata(self) -> dict[str, Any]:
        """What `$metadata` says (read afresh): the resource and its key, entity types, sets, enums
        with what their members mean, the OData version and every oddity the parser met."""
        model = self._fetch_model()
        out = model.describe(self.settings.resource)
        if self.settings.field_types:
            out["field_type_overrides"] = dict(self.settings.field_types)
        return out

    def close(self) -> None:
        if not self._borrowed:
            self.client.close()
