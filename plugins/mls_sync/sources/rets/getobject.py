"""GetObject replies -> PhotoObjects, one listing's photos at a time.

Servers number objects from 0 or from 1 and may flag the primary photo with `Preferred: 1`;
we normalise to RESO's convention (order 0 = primary) per listing, which needs that listing's
parts together (they arrive contiguously), never the whole multi-listing reply.

Seen on real servers and handled here: a `Content-ID` that is not the key we asked for (an
internal id), parts with neither headers nor bytes, parts without an `Object-ID`, and
`Location` URLs written XML-escaped (`&amp;`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from xml.sax.saxutils import unescape

from mls_sync.sources.base import PhotoObject
from mls_sync.sources.rets.compact import parse_bytes
from mls_sync.sources.rets.errors import NO_OBJECT
from mls_sync.sources.rets.multipart import Part, boundary_of, iter_parts

log = logging.getLogger(__name__)
_MORE_ENTITIES = {"&quot;": '"', "&apos;": "'"}


def object_ids(keys: Iterable[str]) -> str:
    """`ID=k1:*,k2:*` - every object of each listing."""
    return ",".join(f"{k}:*" for k in keys)


def _xml_error(part: Part) -> tuple[int | None, str] | None:
    """(code, text) if the part's body is a RETS XML reply, else None."""
    ctype = (part.get("Content-Type") or "").lower()
    head = part.body.lstrip()[:64]
    if "xml" not in ctype and not head.startswith((b"<RETS", b"<?xml")):
        return None
    reply, _ = parse_bytes(part.body)
    return reply.code, reply.text


def _object_data(part: Part) -> dict[str, str]:
    """RETS 1.8 `ObjectData: Name=Value` headers."""
    out: dict[str, str] = {}
    for value in part.get_all("ObjectData"):
        name, _, v = value.partition("=")
        if name.strip():
            out[name.strip()] = v.strip()
    return out


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def location_url(value: str | None) -> str | None:
    """A `Location` header's URL. Servers XML-escape it (`a=1&amp;b=2`): sent as it is, a CDN reads a
    parameter `amp;b` and refuses the request or serves the wrong object."""
    if not value or not value.strip():
        return None
    value = value.strip()
    return unescape(value, _MORE_ENTITIES) if "&" in value else value


def to_photo(part: Part, fallback_key: str | None) -> tuple[PhotoObject, bool]:
    """One part -> (PhotoObject with `order` = raw Object-ID for now, or -1 without one; preferred?)."""
    key = part.get("Content-ID") or fallback_key or ""
    data = _object_data(part)
    raw_id = (part.get("Object-ID") or data.get("ObjectID") or "").strip()
    oid = int(raw_id) if raw_id.lstrip("-").isdigit() else None
    location = location_url(part.get("Location"))
    photo = PhotoObject(
        listing_key=key, order=-1 if oid is None else oid, source_id=raw_id if oid is not None else "",
        content_type=(part.get("Content-Type") or "").split(";")[0].strip() or None,
        url=location, caption=data.get("Caption") or data.get("PropMediaCaption") or part.get("Content-Description"),
        modified=_timestamp(data.get("ObjectModificationTimestamp") or data.get("ModificationTimestamp")),
    )
    error = _xml_error(part)
    if error is not None:
        code, text = error
        if code not in (0, None) or not location:
            photo.error = f"RETS ReplyCode {code} {text}".strip() if code != NO_OBJECT else f"no object ({text})"
            photo.content_type = None
    elif part.body:
        photo.data = part.body
    elif not location:
        photo.error = "empty part (no bytes and no Location)"
    preferred = (part.get("Preferred") or "").strip() == "1" or data.get("IsDefault") == "1"
    return photo, preferred


def normalise(photos: list[tuple[PhotoObject, bool]]) -> list[PhotoObject]:
    """Object-IDs from 0 or 1 -> order 0 = primary; a Preferred object becomes order 0.

    A part without an Object-ID (`source_id` empty) is put after the numbered ones, named by its
    place in the listing's parts, so it never takes (or hides) a numbered object's place.
    """
    if not photos:
        return []
    numbered = [p for p, _ in photos if p.source_id]
    base = 0 if not numbered or min(p.order for p in numbered) <= 0 else 1
    for p in numbered:
        p.order = max(p.order - base, 0)
    after = max((p.order for p in numbered), default=-1)
    for place, (p, _) in enumerate(photos, 1):
        if not p.source_id:
            after += 1
            p.order, p.source_id = after, f"part{place}"
    preferred = next((p for p, pref in photos if pref), None)
    if preferred is not None and preferred.order != 0:
        current = next((p for p, _ in photos if p.order == 0), None)
        if current is not None:
            current.order = preferred.order
        preferred.order = 0
    return sorted((p for p, _ in photos), key=lambda p: p.order)


def group_by_listing(parts: Iterable[Part], asked: Sequence[str]) -> Iterator[list[PhotoObject]]:
    """Contiguous parts of one listing -> that listing's normalised photos.

    When one listing was asked, every part is that listing's, whatever its Content-ID says (a
    mismatch is logged). When several were, a part without a Content-ID belongs to the listing of
    the part before it (parts arrive listing by listing); a Content-ID that was not asked for is
    left for the caller to notice. A part with neither headers nor bytes is framing, not an object.
    """
    only = asked[0] if len(asked) == 1 else None
    current: list[tuple[PhotoObject, bool]] = []
    told = False
    for part in parts:
        if not part.headers and not part.body:
            continue
        photo, pref = to_photo(part, only or (current[0][0].listing_key if current else None))
        if only is not None and photo.listing_key != only:
            if not told:
                log.warning("GetObject: asked for listing %s, the server labelled its objects Content-ID %r; "
                            "filed under %s", only, photo.listing_key, only)
                told = True
            photo.listing_key = only
        if current and current[0][0].listing_key != photo.listing_key:
            yield normalise(current)
            current = []
        current.append((photo, pref))
    if current:
        yield normalise(current)


def split_reply(content_type: str | None, headers: list[tuple[str, str]], chunks: Iterable[bytes]
                ) -> Iterator[Part]:
    """A GetObject reply's parts: each multipart part, or the single object the reply is."""
    boundary = boundary_of(content_type)
    if boundary:
        yield from iter_parts(chunks, boundary)
        return
    yield Part(list(headers), b"".join(chunks))
