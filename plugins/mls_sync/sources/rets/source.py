"""`RetsSource`: the Source interface over a RETS 1.7.2/1.8 server."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests

from mls_sync.gc_batches import gc_for_batches
from mls_sync.limits import RateLimiter, RetryPolicy, is_retryable
from mls_sync.sources.base import (
    MetadataCache,
    MismatchError,
    Page,
    PhotoObject,
    SearchCriteria,
    ServerError,
    Source,
    SourceError,
    SourceFields,
)
from mls_sync.sources.rets import dmql
from mls_sync.sources.rets.compact import CompactParser, parse_bytes
from mls_sync.sources.rets.errors import EMPTY_CODES, MAX_RECORDS, NO_OBJECT, reply_error
from mls_sync.sources.rets.getobject import group_by_listing, object_ids, split_reply
from mls_sync.sources.rets.metadata import Lookups, parse_metadata, table_summary, time_zone_offset
from mls_sync.sources.rets.search import PageResult, SearchWalk
from mls_sync.sources.rets.session import RetsSession, charset_of, trusted_origins

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig, RetsSettings
    from mls_sync.connections import Connection

log = logging.getLogger(__name__)
POST_ABOVE = 1800  # characters of query; longer queries go as POST bodies (URL limits)


def _header_pairs(resp: requests.Response) -> list[tuple[str, str]]:
    raw = getattr(resp.raw, "headers", None)
    if raw is not None and hasattr(raw, "iteritems"):
        return list(raw.iteritems())
    return list(resp.headers.items())


class RetsSource(Source):
    """Search, metadata and photos from one RETS server, through one `RetsSession`.

    Build it with `from_config(provider, conn, limiter)`; nothing touches the network until
    the first call (then it logs in). `stats` counts requests per transaction, bytes, retries
    and re-logins. `close()` logs out and never raises.
    """

    protocol = "rets"

    def __init__(self, session: RetsSession, settings: RetsSettings, fields: SourceFields, *,
                 provider_id: str = "", keys_per_query: int = dmql.KEYS_PER_QUERY) -> None:
        self.session = session
        self.settings = settings
        self.fields = fields
        self.provider_id = provider_id
        self.keys_per_query = keys_per_query
        self._metadata: dict[str, Any] = {}
        self.metadata_cache: MetadataCache | None = None  # kept across runs; see _metadata_version
        self._lookups: Lookups | None = None
        self._zone: tzinfo | None = None
        self._offset_ok: dict[str, bool | None] = {"ok": None}
        self._borrowed = False  # a view of another source's session (for_resource): close() leaves it

    def for_resource(self, resource: str, class_: str | None, fields: SourceFields) -> RetsSource:
        """A Search of another resource and class in this session: one login, one rate limiter,
        one request count; metadata read once is shared (SYSTEM's time zone above all)."""
        settings = self.settings.model_copy(update={"resource": resource, "class_": class_ or resource})
        view = RetsSource(self.session, settings, fields, provider_id=self.provider_id,
                          keys_per_query=self.keys_per_query)
        view.metadata_cache = self.metadata_cache
        view._metadata = self._metadata  # keyed by type and resource:class, so one dict serves both
        view._zone = self._zone
        view._borrowed = True
        return view

    @classmethod
    def from_config(cls, provider: ProviderConfig, conn: Connection, limiter: RateLimiter | None = None,
                    **session_kw: Any) -> RetsSource:
        """Wire a source from the provider YAML and its connection (login URL, user, secrets).

        Connection extras understood: `user_agent`, `ua_password`, `rets_version`,
        `auth` (auto|digest|basic), `request_id`, `url`/`login_url` for the login URL, and
        `trusted_origins` (URLs whose origins may get credentials besides the login URL's).
        """
        from mls_sync.config import RetsSettings

        settings = provider.rets or RetsSettings()
        extra = conn.extra or {}
        login_url = str(extra.get("login_url") or conn.url())
        if not conn.login:
            raise ValueError(f"connection {conn.conn_id!r} has no login (the RETS username)")
        session = RetsSession(
            login_url, conn.login, conn.password or "",
            user_agent=str(extra.get("user_agent") or "mls-sync/0.1"),
            ua_password=extra.get("ua_password"),
            version=str(extra.get("rets_version") or "RETS/1.7.2"),
            auth=str(extra.get("auth") or "auto"),
            request_id=extra.get("request_id"),
            limiter=limiter,
            policy=RetryPolicy(attempts=provider.limits.request_attempts),
            timeout=settings.timeout_seconds,
            trusted=trusted_origins(extra.get("trusted_origins")),
            **session_kw,
        )
        return cls(session, settings, provider.roles(), provider_id=provider.provider_id)

    def __repr__(self) -> str:
        return f"<RetsSource {self.provider_id or '?'} {self.session.login_url}>"

    @property
    def stats(self) -> dict[str, Any]:
        s = self.session.stats
        return {"requests": dict(s["requests"]), "bytes": s["bytes"], "retries": s["retries"],
                "relogins": s["relogins"]}

    # -- metadata ------------------------------------------------------------------------------
    def _metadata_version(self) -> str | None:
        """MetadataVersion and MetadataTimestamp from the login reply: what a cached copy is valid
        for. A server that publishes neither gets no cross-run cache (nothing says when it changed)."""
        info = (self.session.login_info or self.session.login()).info
        lowered = {k.lower(): v for k, v in info.items()}
        version, stamp = lowered.get("metadataversion"), lowered.get("metadatatimestamp")
        return f"{version}@{stamp}" if version else None

    def _get_metadata(self, kind: str, ident: str) -> dict[str, list[dict[str, Any]]]:
        cache_key = f"{kind}:{ident}"
        if cache_key in self._metadata:
            return self._metadata[cache_key]
        stored_key = None
        if self.metadata_cache is not None:
            version = self._metadata_version()
            if version:
                stored_key = f"{self.settings.resource}|{cache_key}|{version}"
                cached = self.metadata_cache.get(stored_key)
                if cached is not None:
                    self._metadata[cache_key] = cached
                    return cached

        def consume(resp: requests.Response) -> dict[str, list[dict[str, Any]]]:
            body = self.session.read_all(resp)
            reply, items = parse_metadata(body, charset_of(resp))
            if reply.code is None:
                raise ServerError(f"GetMetadata {kind}: not a RETS reply", body=body[:300].decode("utf-8", "replace"))
            if reply.code and reply.code not in EMPTY_CODES:
                raise reply_error(reply.code, reply.text, reply.body, "GetMetadata")
            return items

        items = self.session.call("GetMetadata", {"Type": f"METADATA-{kind}", "ID": ident, "Format": "COMPACT"},
                                  consume)
        self._metadata[cache_key] = items
        if stored_key is not None and self.metadata_cache is not None:
            self.metadata_cache.put(stored_key, items)
        return items

    def zone(self) -> tzinfo:
        """The server's time zone: the YAML's rets.time_zone, else SYSTEM TimeZoneOffset, else UTC."""
        if self._zone is None:
            configured = dmql.parse_zone(self.settings.time_zone)
            if configured is None:
                system = self._get_metadata("SYSTEM", "0").get("SYSTEM", [])
                configured = dmql.parse_zone(time_zone_offset(system))
                if configured is None:
                    log.warning("RETS server publishes no TimeZoneOffset and rets.time_zone is not set; "
                                "assuming UTC for DMQL timestamps")
            self._zone = configured or UTC
        return self._zone

    def lookups(self) -> Lookups:
        """Lookup tables of the configured class (codes -> long values), loaded once."""
        if self._lookups is None:
            lk = Lookups()
            res, cls = self.settings.resource, self.settings.class_
            lk.add_table(self._get_metadata("TABLE", f"{res}:{cls}").get("TABLE", []))
            lk.add_lookup_types(self._get_metadata("LOOKUP_TYPE", f"{res}:*").get("LOOKUP_TYPE", []))
            self._lookups = lk
        return self._lookups

    def check(self) -> dict[str, Any]:
        info = self.session.login_info if self.session.logged_in else self.session.login()
        system = self._get_metadata("SYSTEM", "0").get("SYSTEM", [{}])
        first = system[0] if system else {}
        return {
            "protocol": "rets",
            "provider": self.provider_id,
            "login_url": self.session.login_url,
            "rets_version": self.session.version,
            "capabilities": sorted(self.session.capabilities),
            "system_id": first.get("SystemID"),
            "system_description": first.get("SystemDescription"),
            "time_zone": str(self.zone()),
            "member": (info.info.get("MemberName") or info.info.get("MEMBERNAME")) if info else None,
        }

    def metadata(self) -> dict[str, Any]:
        res, cls = self.settings.resource, self.settings.class_
        table = self._get_metadata("TABLE", f"{res}:{cls}").get("TABLE", [])
        lookups = self.lookups()
        used = {name for name, _ in lookups.field_lookup.values()}
        return {
            "protocol": "rets",
            "system": (self._get_metadata("SYSTEM", "0").get("SYSTEM") or [{}])[0],
            "time_zone": str(self.zone()),
            "resources": self._get_metadata("RESOURCE", "0").get("RESOURCE", []),
            "classes": self._get_metadata("CLASS", f"{res}").get("CLASS", []),
            "resource": res,
            "class": cls,
            "fields": table_summary(table),
            "lookups": {name: values for name, values in lookups.values.items() if name in used},
        }

    # -- search --------------------------------------------------------------------------------
    def _fetch(self, query: str, offset: int | None, select: tuple[str, ...], count: bool,
               limit: int) -> PageResult:
        s = self.settings
        params: dict[str, Any] = {"SearchType": s.resource, "Class": s.class_, "QueryType": "DMQL2",
                                  "Query": query, "Format": s.format, "Limit": limit, "StandardNames": 0}
        if count:
            params["Count"] = 1  # rows and their total
        if select:
            params["Select"] = ",".join(select)
        if offset is not None:
            params["Offset"] = offset
        method = "POST" if s.method == "POST" or len(query) > POST_ABOVE else "GET"
        decode = self.lookups().decode if s.format == "COMPACT" else None
        key = self.fields.key

        def consume(resp: requests.Response) -> PageResult:
            parser = CompactParser(charset_of(resp), values_only=True)
            records: list[dict[str, str]] = []
            with gc_for_batches():  # the page's rows are all held until it is complete
                for chunk in self.session.iter_body(resp):
                    records.extend(parser.feed(chunk))
                records.extend(parser.close())
            reply = parser.reply
            if reply.code is None:
                raise ServerError("Search: the reply is not RETS XML (HTML error page or empty body?)")
            if reply.code not in (0, MAX_RECORDS) and reply.code not in EMPTY_CODES:
                raise reply_error(reply.code, reply.text, reply.body, "Search")
            if not parser.complete:
                raise ServerError(f"Search: reply cut short after {len(records)} rows (no closing </RETS>)")
            if records and key not in reply.columns:
                sent = ", ".join(reply.columns[:40]) + (", ..." if len(reply.columns) > 40 else "")
                raise MismatchError(
                    f"Search: the server's rows have no {key} column, the configured key field "
                    f"(source_fields.key / --key-field); it sent {len(reply.columns)} columns: {sent}")
            if decode:
                for r in records:
                    decode(r)
            return PageResult(records, reply.count, reply.maxrows or reply.code == MAX_RECORDS)

        return self.session.call("Search", params, consume, method=method)

    def _base_clauses(self, c: SearchCriteria) -> list[str]:
        f = self.fields
        clauses: list[str] = []
        for role, values in (("postal_code", c.postal_codes), ("city", c.cities)):
            if values:
                name = getattr(f, role)
                if not name:
                    raise SourceError(f"criteria filter on {role} but source_fields.{role} is not set")
                clauses.append(dmql.clause_in(name, values))
        if c.statuses:
            if not f.status:
                raise SourceError("criteria filter on status but source_fields.status is not set")
            lk = self.lookups()
            if f.status in lk.field_lookup:
                clauses.append(dmql.clause_lookup(f.status, [lk.encode(f.status, v) for v in c.statuses]))
            else:
                clauses.append(dmql.clause_in(f.status, c.statuses))
        if c.raw_query and c.raw_query.strip():
            clauses.append(f"({c.raw_query.strip()})")
        return clauses

    def pages(self, criteria: SearchCriteria, resume_from: dict[str, Any] | None = None) -> Iterator[Page]:
        """Every matching record once, page by page; `Page.cursor` resumes after that page.

        Cursor: {"v": 1, "chunk": i, "state": {...walk state...}, "page": n} or {"v": 1, "done": true}.
        The walk state is {"mode": "offset", "offset": next 1-based offset, "head": first key}
        or {"mode": "window", "stack": [[from, to, key_prefix, excluded_prefixes], ...]}.
        """
        cursor = dict(resume_from or {})
        if cursor.get("done"):
            return
        zone = self.zone()
        since = dmql.to_server(criteria.modified_since, zone) if criteria.modified_since else None
        until = dmql.to_server(criteria.modified_until, zone) if criteria.modified_until else None
        base = self._base_clauses(criteria)
        key_field, modified = self.fields.key, self.fields.modified
        select = tuple(dict.fromkeys([*criteria.select, key_field, modified])) if criteria.select else ()
        keys = list(dict.fromkeys(criteria.listing_keys))
        groups = dmql.chunks(keys, self.keys_per_query) if keys else [()]
        start = int(cursor.get("chunk") or 0)
        number = int(cursor.get("page") or 0)
        size = criteria.page_size or self.settings.page_size
        walk = SearchWalk(lambda q, off, count: self._fetch(q, off, select, count, size), key_field=key_field,
                          modified_field=modified, page_size=size, offset_mode=self.settings.offset,
                          now=lambda: dmql.to_server(datetime.now(UTC), zone), offset_ok=self._offset_ok,
                          match_all=self.settings.match_all)
        for index in range(start, len(groups)):
            clauses = base + ([dmql.clause_in(key_field, groups[index])] if groups[index] else [])
            state = cursor.get("state") if index == start else None
            for records, after in walk.walk(clauses, since, until, state):
                if after is not None:
                    nxt: dict[str, Any] = {"v": 1, "chunk": index, "state": after}
                elif index + 1 < len(groups):
                    nxt = {"v": 1, "chunk": index + 1, "state": None}
                else:
                    nxt = {"v": 1, "done": True}
                last = after is None and index + 1 == len(groups)
                if not records and not last:
                    continue
                number += 1
                nxt["page"] = number
                yield Page(records, nxt, number)

    # -- photos --------------------------------------------------------------------------------
    def photos(self, listing_keys: Sequence[str]) -> Iterator[PhotoObject]:
        keys = list(dict.fromkeys(k for k in listing_keys if k))
        for batch in dmql.chunks(keys, self.settings.photos_per_request):
            yield from self._photo_batch(list(batch))

    def _open_objects(self, resp: requests.Response) -> tuple[requests.Response, bytes | None]:
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if "xml" in ctype and "multipart" not in ctype:
            body = self.session.read_all(resp, cap=16 * 1024 * 1024)
            reply, _ = parse_bytes(body, charset_of(resp))
            if reply.code == NO_OBJECT:
                return resp, None
            if reply.code not in (0, None):
                raise reply_error(reply.code, reply.text, reply.body, "GetObject")
            return resp, body
        return resp, b""

    def _photo_batch(self, batch: list[str]) -> Iterator[PhotoObject]:
        """One GetObject for these listings; objects labelled with a key nobody asked for send the
        listings that got nothing back one at a time (then the label does not matter)."""
        s = self.settings
        params = {"Resource": s.resource, "Type": s.photo_type, "ID": object_ids(batch),
                  "Location": 1 if s.photo_location else 0}
        asked = set(batch)
        done: set[tuple[str, str]] = set()
        delivered: set[str] = set()
        strays: dict[str, int] = {}
        attempt = 0
        while True:
            attempt += 1
            resp, pre = self.session.call("GetObject", params, self._open_objects, keep_open=True)
            if pre is None:
                resp.close()
                return  # 20403: none of these listings has an object
            try:
                with resp:
                    chunks = [pre] if pre else self.session.iter_body(resp)
                    parts = split_reply(resp.headers.get("Content-Type"), _header_pairs(resp), chunks)
                    for group in group_by_listing(parts, batch):
                        key = group[0].listing_key
                        if key not in asked:
                            strays[key] = strays.get(key, 0) + len(group)
                            continue
                        delivered.add(key)
                        if len(group) == 1 and group[0].error and group[0].error.startswith("no object"):
                            continue  # the listing has no photos at all
                        for photo in group:
                            ident = (photo.listing_key, photo.source_id)
                            if ident in done:
                                continue
                            if photo.url and photo.data is None and photo.error is None:
                                self._download(photo, resp.url)
                            if photo.modified is not None and photo.modified.tzinfo is None:
                                # ObjectModificationTimestamp is server-local, like every RETS time
                                photo.modified = photo.modified.replace(tzinfo=self.zone())
                            done.add(ident)
                            yield photo
                break
            except ServerError as exc:
                if attempt >= self.session.policy.attempts or not is_retryable(exc):
                    raise
                log.warning("GetObject broke mid-reply (%s); asking again, skipping %d objects already delivered",
                            exc, len(done))
                self.session.retry_sleep(self.session.policy.delay(attempt))
        if strays:
            lost = [k for k in batch if k not in delivered]
            log.warning("GetObject: %d object(s) came labelled %s, which were not asked for; asking the %d "
                        "listing(s) that got none one at a time", sum(strays.values()),
                        ", ".join(repr(k) for k in sorted(strays)[:5]), len(lost))
            for key in lost:
                yield from self._photo_batch([key])

    def _download(self, photo: PhotoObject, base_url: str) -> None:
        url = urljoin(base_url, photo.url or "")
        photo.url = url
        try:
            photo.data, ctype = self.session.download(url)
            photo.content_type = (ctype or photo.content_type or "").split(";")[0].strip() or None
        except SourceError as exc:
            photo.error = f"download failed: {exc}"
            photo.data = None

    def close(self) -> None:
        if not self._borrowed:
            self.session.logout()
