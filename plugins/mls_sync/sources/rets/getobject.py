"""GetObject replies -> PhotoObjects, one listing's photos at a time.

Servers number objects from 0 or from 1 and may flag the primary photo with `Preferred: 1`;
we normalise to RESO's convention (order 0 = primary) per listing, which needs that listing's
parts together (they arrive contiguously), never the whole multi-listing reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from mls_sync.sources.base import PhotoObject
from mls_sync.sources.rets.compact import parse_bytes
from mls_sync.sources.rets.errors import NO_OBJECT
from mls_sync.sources.rets.multipart import Part, boundary_of, iter_parts


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


def to_photo(part: Part, fallback_key: str | None) -> tuple[PhotoObject, bool]:
    """One part -> (PhotoObject with `order` = raw Object-ID for now, preferred?)."""
    key = part.get("Content-ID") or fallback_key or ""
    raw_id = (part.get("Object-ID") or "").strip()
    data = _object_data(part)
    oid = int(raw_id) if raw_id.lstrip("-").isdigit() else int(data.get("ObjectID", "1") or 1)
    location = part.get("Location") or None
    photo = PhotoObject(
        listing_key=key, order=oid, source_id=raw_id or str(oid),
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
    """Object-IDs from 0 or 1 -> order 0 = primary; a Preferred object becomes order 0."""
    if not photos:
        return []
    base = 0 if min(p.order for p, _ in photos) <= 0 else 1
    for p, _ in photos:
        p.order = max(p.order - base, 0)
    preferred = next((p for p, pref in photos if pref), None)
    if preferred is not None and preferred.order != 0:
        current = next((p for p, _ in photos if p.order == 0), None)
        if current is not None:
            current.order = preferred.order
        preferred.order = 0
    return sorted((p for p, _ in photos), key=lambda p: p.order)


def group_by_listing(parts: Iterable[Part], fallback_key: str | None) -> Iterator[list[PhotoObject]]:
    """Contiguous parts of one listing -> that listing's normalised photos."""
    current: list[tuple[PhotoObject, bool]] = []
    for part in parts:
        photo, pref = to_photo(part, fallback_key)
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
