"""ResoSource: replication of a RESO Web API resource, key walks, metadata and the service check."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from mls_sync.limits import RateLimiter, RetryPolicy
from mls_sync.sources.base import (
    Masker,
    Page,
    PhotoObject,
    PhotoRef,
    QueryError,
    SearchCriteria,
    ServerError,
    Source,
)
from mls_sync.sources.reso import odata
from mls_sync.sources.reso.http import ODataClient, TokenSource
from mls_sync.sources.reso.media import MediaDownloader, media_refs
from mls_sync.sources.reso.metadata import parse_csdl

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig
    from mls_sync.connections import Connection

log = logging.getLogger(__name__)

DELETED = "__deleted__"
DEFAULT_USER_AGENT = "mls-sync/0.1"


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

    # ---- paging --------------------------------------------------------------------------
    def _page_params(self, walk: odata.Walk, after: list[str] | None) -> tuple[dict[str, str], dict]:
        params: dict[str, str] = {}
        where = walk.filter
        if after is not None:
            lits = [odata.timestamp(v) if kind == "ts" else odata.string(v)
                    for (_, kind), v in zip(walk.order, after, strict=True)]
            where = odata.and_all([walk.filter, odata.after_filter(
                [(f, lit) for (f, _), lit in zip(walk.order, lits, strict=True)])])
        if where:
            params["$filter"] = where
        params["$orderby"] = ",".join(odata.ident(f) for f, _ in walk.order)
        if walk.select:
            params["$select"] = walk.select
        if walk.expand:
            params["$expand"] = walk.expand
        headers: dict[str, str] = {}
        size = self.settings.page_size
        if self.settings.max_page_size_header:
            headers["Prefer"] = f"odata.maxpagesize={size}"
        else:
            params["$top"] = str(size)
        return params, headers

    def walk(self, walk: odata.Walk, position: dict[str, Any] | None) -> Iterator[tuple[list[dict], dict]]:
        """Yield (records, position after them); position is {"after": [...]} or {"next": url}.

        Keyset: re-query `after` the last row until a page without nextLink that is short (OData
        says a server that caps the page must send nextLink) or follows pages that had one.
        nextLink: follow the server's links; only to the service's own host, since the bearer
        token goes with every request.
        """
        nextlink = self.settings.paging == "nextlink"
        params, headers = self._page_params(walk, None)
        if position and position.get("done"):
            return
        after = position.get("after") if position else None
        url = position.get("next") if position and nextlink else None
        size = self.settings.page_size
        saw_link = False
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
            new_after = [last.get(f) for f, _ in walk.order]
            if any(v is None for v in new_after):
                raise ServerError(f"{walk.path}: a record lacks {[f for f, _ in walk.order]}; keyset "
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

    def _chunks(self, criteria: SearchCriteria) -> list[tuple[str, ...]]:
        return odata.key_chunks(criteria.listing_keys) if criteria.listing_keys else [()]

    def pages(self, criteria: SearchCriteria, resume_from: dict[str, Any] | None = None) -> Iterator[Page]:
        """Every matching record once, ordered by (modified, key); deletions carry `__deleted__`.

        Cursor: {"v": 1, "mode": "keyset"|"nextlink", "chunk": i, "page": n, "modified": T,
        "key": K} (keyset) or {..., "next": url} (nextlink); "done": True once a chunk is
        exhausted. `chunk` indexes the sorted listing-key chunks when criteria.listing_keys is set.
        """
        mode = self.settings.paging
        cursor = odata.check_cursor(resume_from, mode)
        r = self.roles
        select = odata.select_list(criteria.select, [r.key, r.modified, *self._deletion_fields()])
        first = cursor.get("chunk", 0) if cursor else 0
        number = cursor.get("page", 0) if cursor else 0
        for i, keys in enumerate(self._chunks(criteria)):
            if i < first:
                continue
            walk = odata.Walk(self.settings.resource, odata.criteria_filter(criteria, r, keys),
                              ((r.modified, "ts"), (r.key, "str")), select)
            position = None
            if cursor and i == first:
                position = {"done": cursor.get("done"), "next": cursor.get("next"),
                            "after": [cursor["modified"], cursor["key"]] if cursor.get("key") else None}
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
                yield Page(records=records, cursor=out, number=number)

    def keys(self, criteria: SearchCriteria | None = None) -> Iterator[str]:
        """Every listing key the server still shows (deletion-marked ones left out).

        Downloads only the key (plus the fields that mark deletions), ordered by key, so a full
        comparison with the local table finds listings that vanished without a trace.
        """
        criteria = criteria or SearchCriteria()
        r = self.roles
        select = odata.select_list([r.key], self._deletion_fields())
        for keys in self._chunks(criteria):
            walk = odata.Walk(self.settings.resource, odata.criteria_filter(criteria, r, keys),
                              ((r.key, "str"),), select)
            for records, _ in self.walk(walk, None):
                for rec in records:
                    if not self._is_deleted(rec) and rec.get(r.key) is not None:
                        yield str(rec[r.key])

    # ---- media ---------------------------------------------------------------------------
    def media_refs(self, listing_keys: Sequence[str]) -> Iterator[PhotoRef]:
        """The photos the server lists for these listings, without downloading them."""
        return media_refs(self, listing_keys)

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
        params = {"$top": "1", "$select": odata.select_list([r.key, r.modified], []) or "",
                  "$orderby": f"{odata.ident(r.modified)} desc"}
        try:
            body = self.client.get_json(self.settings.resource, {**params, "$count": "true"}, what="check")
        except QueryError:  # some servers refuse $count
            body = self.client.get_json(self.settings.resource, params, what="check")
        rows = body.get("value") or []
        sample = rows[0] if rows else {}
        tokens = self.client.tokens
        return {
            "protocol": "reso",
            "service_root": self.client.root,
            "resource": self.settings.resource,
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
        """Entity types, their properties and enums from `$metadata` (CSDL XML)."""
        resp = self.client.get(self.client.url("$metadata"), headers={"Accept": "application/xml"},
                               what="$metadata")
        return parse_csdl(resp.content)

    def close(self) -> None:
        self.client.close()
