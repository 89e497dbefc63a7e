"""RESO Media: which photos a listing has (PhotoRef) and downloading them (PhotoObject).

The refs come from `$expand=Media` on the resource, or from a `/Media` replication by
`ResourceRecordKey in (...)` when the provider does not expand. Downloads run on a small thread
pool; each takes a permit from the shared limiter and counts its bytes against the hourly byte
budget, and one failed photo becomes an error object instead of failing the batch.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mls_sync.sources.base import PhotoObject, PhotoRef, SourceError
from mls_sync.sources.reso import odata

if TYPE_CHECKING:
    from mls_sync.sources.reso.http import ODataClient
    from mls_sync.sources.reso.source import ResoSource

# Media records outside these categories (documents, videos, tours) are not photos.
PHOTO_CATEGORIES = frozenset({"photo", "photos", "image", "images"})
_KNOWN = ("MediaKey", "ResourceRecordKey", "Order", "MediaURL", "MediaModificationTimestamp",
          "ShortDescription")


def _refs_for_listing(listing_key: str, media: Iterable[dict[str, Any]]) -> list[PhotoRef]:
    """Photo refs of one listing, numbered by the server's Order so that 0 is the primary."""
    photos = [m for m in media if isinstance(m, dict)
              and str(m.get("MediaCategory") or "photo").lower() in PHOTO_CATEGORIES]
    photos.sort(key=lambda m: (m.get("Order") if isinstance(m.get("Order"), int) else 1 << 30,
                               str(m.get("MediaKey"))))
    return [PhotoRef(listing_key=listing_key, order=i,
                     source_id=str(m.get("MediaKey") or f"{listing_key}-{i}"), url=m.get("MediaURL"),
                     modified=odata.parse_timestamp(m.get("MediaModificationTimestamp")),
                     caption=m.get("ShortDescription"),
                     extra={k: v for k, v in m.items() if k not in _KNOWN and not k.startswith("@")})
            for i, m in enumerate(photos)]


def media_refs(source: ResoSource, listing_keys: Sequence[str]) -> Iterator[PhotoRef]:
    """PhotoRefs for the listings, one key chunk at a time (listings in key order).

    Keys are written as the server types them (an integer key bare); with `expand_media: false`
    the Media resource is asked by ResourceRecordKey, or ResourceRecordKeyNumeric where listings
    are keyed by an integer (`ResoSource.media_record_key`).
    """
    key = source.roles.key
    expand = source.settings.expand_media
    name = source.settings.resource if expand else "Media"
    path = source.resource(name).path
    dialect = source.dialect(name)
    field = key if expand else source.media_record_key()
    for chunk in dialect.chunks(field, listing_keys):
        grouped: dict[str, list[dict[str, Any]]] = {str(k): [] for k in chunk}
        if expand:
            walk = odata.Walk(path, dialect.any_of(key, chunk), (key,), dialect, odata.ident(key), "Media")
        else:
            walk = odata.Walk(path, dialect.any_of(field, chunk), ("MediaKey",), dialect)
        for records, _ in source.walk(walk, None):
            for rec in records:
                if expand:
                    grouped.setdefault(str(rec.get(key)), []).extend(rec.get("Media") or [])
                else:
                    grouped.setdefault(str(rec.get(field)), []).append(rec)
        for listing in sorted(grouped):
            yield from _refs_for_listing(listing, grouped[listing])


class MediaDownloader:
    """Downloads MediaURLs on `concurrency` threads, yielding results in ref order."""

    def __init__(self, client: ODataClient, concurrency: int = 10, *,
                 token_as_user_agent: bool = False) -> None:
        self.client = client
        self.concurrency = max(1, concurrency)
        self.token_as_user_agent = token_as_user_agent
        # A photo is worth fewer attempts than a page: a dead URL should not hold the batch up.
        self.policy = dataclasses.replace(client.policy, attempts=min(3, client.policy.attempts))

    def fetch(self, ref: PhotoRef) -> PhotoObject:
        """One photo; any failure is reported on the object, never raised."""
        out = PhotoObject(listing_key=ref.listing_key, order=ref.order, source_id=ref.source_id,
                          url=ref.url, caption=ref.caption, modified=ref.modified)
        if not ref.url:
            out.error = "media record has no MediaURL"
            return out
        try:
            # MLS Grid wants the access token as User-Agent on media; the bearer header only
            # goes to the API's own host, never to a CDN that happens to serve the photos.
            ua = self.client.token() if self.token_as_user_agent else None
            resp = self.client.get(ref.url, headers={"Accept": "image/*"}, what=f"photo {ref.source_id}",
                                   auth=self.client.same_origin(ref.url), user_agent=ua, policy=self.policy)
        except SourceError as exc:
            out.error = str(exc)
            return out
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        out.content_type = ctype or None
        if not ctype.startswith("image/"):
            out.error = f"not an image (Content-Type {ctype or 'missing'})"
        elif not resp.content:
            out.error = "empty image body"
        else:
            out.data = resp.content
        return out

    def download(self, refs: Iterable[PhotoRef]) -> Iterator[PhotoObject]:
        """Results in ref order, with at most 2 x concurrency downloads held in memory."""
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="reso-media")
        pending: deque[Future[PhotoObject]] = deque()
        try:
            for ref in refs:
                pending.append(pool.submit(self.fetch, ref))
                if len(pending) >= 2 * self.concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
