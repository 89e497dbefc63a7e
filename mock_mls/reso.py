"""RESO Web API (OData v4): /reso/odata/{Property,Media,$metadata} and /reso/oauth2/token.

Timestamps are UTC with `Z` and millisecond precision, so a client's keyset cursor
`(ModificationTimestamp, ListingKey)` compares exactly with what is stored.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .data import MEDIA_COLUMNS
from .fields import FIELDS, LOOKUPS, Field, decode, encode
from .httpio import Request, Response, json_response, odata_error, xml_escape
from .odata import Column, FilterTranslator, ODataError, order_by

if TYPE_CHECKING:
    from .server import MockMLS as App

KINDS = {"Character": "string", "Int": "int", "Decimal": "decimal", "Date": "date", "DateTime": "datetime",
         "Boolean": "bool"}
EDM = {"string": "Edm.String", "int": "Edm.Int64", "decimal": "Edm.Decimal", "date": "Edm.Date",
       "datetime": "Edm.DateTimeOffset", "bool": "Edm.Boolean"}
LISTING_FIELDS = tuple(f for f in FIELDS if f.reso != "MlgCanView")
MEDIA_SOURCE = "media m JOIN listings l ON l.ListingKey = m.ResourceRecordKey"
LISTING_SELECT = ", ".join(f'l."{f.reso}"' for f in LISTING_FIELDS) + ", l.InFeed"


def _encoder(f: Field) -> Any:
    return (lambda v, f=f: encode(f, v)) if f.lookup else None


PROPERTY_COLUMNS: dict[str, Column] = {
    f.reso: Column(f'l."{f.reso}"', KINDS[f.data_type], _encoder(f)) for f in LISTING_FIELDS if not f.multi
}
PROPERTY_COLUMNS["MlgCanView"] = Column("l.InFeed", "bool")
MEDIA_FIELDS: dict[str, Column] = {
    "MediaKey": Column("m.MediaKey", "string"),
    "ResourceRecordKey": Column("m.ResourceRecordKey", "string"),
    "ResourceName": Column("'Property'", "string"),
    "MediaCategory": Column("'Photo'", "string"),
    "Order": Column("m.MediaOrder", "int"),
    "ShortDescription": Column("m.ShortDescription", "string"),
    "ImageWidth": Column("m.ImageWidth", "int"),
    "ImageHeight": Column("m.ImageHeight", "int"),
    "MediaModificationTimestamp": Column("m.MediaModificationTimestamp", "datetime"),
    "MediaURL": Column("''", "string"),
}


def iso_z(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def reso_value(f: Field, value: Any) -> Any:
    """Stored value -> RESO JSON value (long values for lookups, arrays for multi-lookups)."""
    if value is None:
        return None
    if f.data_type == "DateTime":
        return iso_z(value)
    if f.multi:
        return [v for v in (decode(f, value) or "").split(",") if v]
    if f.lookup and f.reso != "StateOrProvince":
        return decode(f, value)
    return value


class Reso:
    """OData service plus the OAuth2 client-credentials token endpoint."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.tokens: dict[str, float] = {}  # token -> expiry on the server clock

    def handle(self, req: Request) -> Response:
        if req.path.rstrip("/") == "/reso/oauth2/token":
            return self.token(req)
        problem = self._check_token(req)
        if problem:
            return problem
        tail = req.path[len("/reso/odata"):].strip("/")
        try:
            if tail == "":
                return json_response({"@odata.context": f"{req.base_url}/reso/odata/$metadata", "value": [
                    {"name": n, "kind": "EntitySet", "url": n} for n in ("Property", "Media")]})
            if tail == "$metadata":
                return Response(200, [("Content-Type", "application/xml")], csdl().encode(), "xml")
            if tail == "Property":
                return self.collection(req, "Property")
            if tail == "Media":
                return self.collection(req, "Media")
            if tail.startswith("Property(") and tail.endswith(")"):
                return self.entity(req, tail[len("Property("):-1].strip("'"))
        except ODataError as exc:
            return odata_error(400, str(exc))
        return odata_error(404, f"Resource not found for the segment '{tail}'")

    # --- auth -----------------------------------------------------------------------------------
    def token(self, req: Request) -> Response:
        s = self.app.settings
        client_id, client_secret = req.param("client_id"), req.param("client_secret")
        header = req.headers.get("authorization", "")
        if header.startswith("Basic "):
            with contextlib.suppress(ValueError):
                client_id, _, client_secret = base64.b64decode(header[6:]).decode().partition(":")
        if req.method != "POST" or req.param("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type",
                                  "error_description": "POST grant_type=client_credentials"}, 400)
        if client_id != s.client_id or client_secret != s.client_secret:
            return json_response({"error": "invalid_client", "error_description": "Unknown client"}, 401)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.app.clock.now() + s.token_ttl_seconds
        return json_response({"access_token": token, "token_type": "Bearer",
                              "expires_in": int(s.token_ttl_seconds), "scope": "api"})

    def _check_token(self, req: Request) -> Response | None:
        if not self.app.settings.require_token:
            return None
        header = req.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return odata_error(401, "Missing bearer token: POST client credentials to /reso/oauth2/token",
                               "Unauthorized").header("WWW-Authenticate", 'Bearer realm="mock_mls"')
        expiry = self.tokens.get(header[7:].strip())
        if expiry is None or expiry < self.app.clock.now():
            return odata_error(401, "The access token is invalid or has expired", "Unauthorized").header(
                "WWW-Authenticate", 'Bearer error="invalid_token"')
        return None

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # --- queries --------------------------------------------------------------------------------
    def _visible(self) -> str:
        return "1 = 1" if self.app.settings.mlg_can_view else "l.InFeed = 1"

    def collection(self, req: Request, entity: str) -> Response:
        s = self.app.settings
        columns = PROPERTY_COLUMNS if entity == "Property" else MEDIA_FIELDS
        source = "listings l" if entity == "Property" else MEDIA_SOURCE
        where, params = self._visible(), []
        if req.param("$filter"):
            sql, params = FilterTranslator(columns).translate(req.param("$filter") or "")
            where += f" AND ({sql})"
        tiebreak = "l.ListingKey" if entity == "Property" else "m.MediaKey"
        order = order_by(req.param("$orderby") or "", columns, tiebreak)
        try:
            top = int(req.param("$top") or s.max_page_size)
            skip = int(req.param("$skip") or 0)
        except ValueError as exc:
            raise ODataError("$top and $skip must be integers") from exc
        if top < 0 or skip < 0:
            raise ODataError("$top and $skip must not be negative")
        page = min(top, s.max_page_size)
        names = self._select(req, entity)
        expand = (req.param("$expand") or "").strip()
        if expand and (entity != "Property" or expand != "Media"):
            raise ODataError(f"Cannot expand '{expand}'")
        count = None
        if (req.param("$count") or "").lower() == "true":
            count = self.app.store.query(f"SELECT COUNT(*) FROM {source} WHERE {where}", params).fetchone()[0]
        select_cols = LISTING_SELECT if entity == "Property" else ", ".join(f"m.{c}" for c in MEDIA_COLUMNS)
        rows = self.app.store.query(
            f"SELECT {select_cols} FROM {source} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, page + 1, skip]).fetchall()
        more = len(rows) > page
        rows = rows[:page]
        payload: dict[str, Any] = {"@odata.context": f"{req.base_url}/reso/odata/$metadata#{entity}"}
        if count is not None:
            payload["@odata.count"] = count
        if entity == "Property":
            records = self._properties(req, rows, names, expand == "Media")
            self.app.stats.add("rows_served", len(records))
        else:
            records = [self._media_record(req, r, names) for r in rows]
            self.app.stats.add("media_rows_served", len(records))
        payload["value"] = records
        if more:
            query = {**req.query, "$skip": str(skip + page)}
            if req.param("$top") is not None:
                query["$top"] = str(page)
            payload["@odata.nextLink"] = f"{req.base_url}{req.path}?" + urlencode(query, safe="$(),'")
        return json_response(payload)

    def entity(self, req: Request, key: str) -> Response:
        rows = self.app.store.query(
            f"SELECT {LISTING_SELECT} FROM listings l "
            f"WHERE l.ListingKey = ? AND {self._visible()}", [key]).fetchall()
        if not rows:
            return odata_error(404, f"No Property with key '{key}'")
        record = self._properties(req, rows, self._select(req, "Property"),
                                  (req.param("$expand") or "") == "Media")[0]
        return json_response({"@odata.context": f"{req.base_url}/reso/odata/$metadata#Property/$entity", **record})

    def _select(self, req: Request, entity: str) -> list[str]:
        known = ([f.reso for f in FIELDS] if entity == "Property" else list(MEDIA_FIELDS))
        if entity == "Property" and not self.app.settings.mlg_can_view:
            known.remove("MlgCanView")
        chosen = [x.strip() for x in (req.param("$select") or "").split(",") if x.strip()]
        bad = [c for c in chosen if c not in known and not (entity == "Property" and c == "MlgCanView")]
        if bad:
            raise ODataError(f"Could not find a property named '{bad[0]}' on type '{entity}'")
        return [c for c in known if c in chosen] if chosen else known

    def _properties(self, req: Request, rows: list[tuple[Any, ...]], names: list[str], expand: bool
                    ) -> list[dict[str, Any]]:
        wanted = set(names)
        out = []
        for row in rows:
            record = {f.reso: reso_value(f, v) for f, v in zip(LISTING_FIELDS, row, strict=False) if f.reso in wanted}
            if "MlgCanView" in wanted:
                record["MlgCanView"] = bool(row[-1])
            out.append(record)
        if expand:
            media = self.app.store.media_for([r[0] for r in rows])
            for row, record in zip(rows, out, strict=True):
                record["Media"] = [self._media_record(req, m, list(MEDIA_FIELDS)) for m in media[row[0]]]
        return out

    def _media_record(self, req: Request, row: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
        full = {
            "MediaKey": row[0], "ResourceRecordKey": row[1], "ResourceName": "Property", "MediaCategory": "Photo",
            "Order": row[2], "MediaURL": self.app.photo_url(req.base_url, row), "ShortDescription": row[8],
            "ImageWidth": row[4], "ImageHeight": row[5], "MediaModificationTimestamp": iso_z(row[7]),
        }
        return {n: full[n] for n in names}


@cache
def csdl() -> str:
    """The $metadata document: one entity type per set, lookups as plain strings."""
    def props(items: Iterator[tuple[str, str]]) -> str:
        return "".join(f'<Property Name="{n}" Type="{t}"/>' for n, t in items)

    prop = props((f.reso, f"Collection({EDM['string']})" if f.multi else EDM[KINDS[f.data_type]]) for f in FIELDS)
    media = props((n, EDM[c.kind]) for n, c in MEDIA_FIELDS.items())
    enums = "".join(f'<!-- {xml_escape(name)}: {", ".join(LOOKUPS[name].values())} -->' for name in LOOKUPS)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0"><edmx:DataServices>'
        '<Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="org.reso.metadata">'
        f'<EntityType Name="Property"><Key><PropertyRef Name="ListingKey"/></Key>{prop}'
        '<NavigationProperty Name="Media" Type="Collection(org.reso.metadata.Media)"/></EntityType>'
        f'<EntityType Name="Media"><Key><PropertyRef Name="MediaKey"/></Key>{media}</EntityType>{enums}'
        '<EntityContainer Name="Default"><EntitySet Name="Property" EntityType="org.reso.metadata.Property">'
        '<NavigationPropertyBinding Path="Media" Target="Media"/></EntitySet>'
        '<EntitySet Name="Media" EntityType="org.reso.metadata.Media"/></EntityContainer>'
        "</Schema></edmx:DataServices></edmx:Edmx>"
    )
