"""RESO Web API (OData v4): /reso/odata/{Property,Media,$metadata} and /reso/oauth2/token.

Timestamps are UTC with `Z` and millisecond precision, so a client's keyset cursor
`(ModificationTimestamp, ListingKey)` compares exactly with what is stored.

What the service looks like follows the `reso_*` settings (a `--reso-profile` sets them together):
the key field and its type, what `$top` means, the OData version (4.0 refuses `in`), the shape of
`$metadata` and its names, how StandardStatus is spelt, `$count`, and one 429. `Schema` holds
everything that follows from those settings, built once per combination.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from . import roster
from .data import MEDIA_COLUMNS
from .fields import FIELDS, LOOKUPS, STATUSES, Field, decode, encode, row_cap
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
# a listing row: the fields in order, then InFeed and Serial (ListingKeyNumeric)
LISTING_SELECT = ", ".join(f'l."{f.reso}"' for f in LISTING_FIELDS) + ", l.InFeed, l.Serial"
STANDARD_NAME = "RESO.OData.Metadata.StandardName"
_PREFER_PAGE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.I)


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


def _roster_columns(res: roster.RosterResource) -> dict[str, Column]:
    columns = {f.reso: Column(f'l."{f.reso}"', KINDS[f.data_type]) for f in res.fields}
    columns["MlgCanView"] = Column("l.InFeed", "bool")
    return columns


ROSTER_COLUMNS: dict[str, dict[str, Column]] = {r.name: _roster_columns(r) for r in roster.RESOURCES}


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


def status_member(standard: str, style: str) -> str:
    """How a vendor spells a StandardStatus as an enum member: `Active_Under_Contract`, or
    `b__<hex>` of its display name (members must be identifiers; display names have spaces)."""
    display = next(long for long, std in STATUSES.values() if std == standard)
    if style == "hex":
        return "b__" + display.encode().hex()
    return display.replace(" ", "_")


@dataclass(frozen=True)
class Schema:
    """The service as the settings shape it: names, columns, enums, version and the CSDL text."""

    namespace: str
    set_name: str  # the Property entity set
    type_name: str
    int_key: bool
    version: str
    property_columns: dict[str, Column]
    media_columns: dict[str, Column]
    status_members: dict[str, str] | None  # StandardStatus -> member name, when it is an enum
    csdl: str

    @property
    def key_field(self) -> str:
        return "ListingKeyNumeric" if self.int_key else "ListingKey"


@cache
def schema(key: str, version: str, style: str, enums: str, key_type: str | None,
           declared_version: str | None = None) -> Schema:
    vendor = style == "vendor"
    ns = "Vendor.Data" if vendor else "org.reso.metadata"
    columns = dict(PROPERTY_COLUMNS)
    media = dict(MEDIA_FIELDS)
    members = None
    if key == "int":
        columns["ListingKeyNumeric"] = Column("l.Serial", "int")
        media["ResourceRecordKeyNumeric"] = Column("l.Serial", "int")
    if enums != "none":
        members = {std: status_member(std, enums) for _long, std in STATUSES.values()}
        columns["StandardStatus"] = Column('l."StandardStatus"', "enum", enum_type=f"{ns}.StandardStatus",
                                           members={m: std for std, m in members.items()})
    set_name, type_name = ("Properties", "PropertyResi") if vendor else ("Property", "Property")
    text = csdl(ns, set_name, type_name, key == "int", declared_version or version, vendor, members, key_type)
    if style == "html":  # what a misrouted $metadata request gets from some gateways
        text = "<html><head><title>Sign in</title></head><body><form>Please sign in</form></body></html>"
    return Schema(ns, set_name, type_name, key == "int", version, columns, media, members, text)


class Reso:
    """OData service plus the OAuth2 client-credentials token endpoint."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.tokens: dict[str, float] = {}  # token -> expiry on the server clock
        self._lock = threading.Lock()
        self.data_requests = 0  # Property/Media queries, for `reso_throttle_once`
        self.throttled = False

    @property
    def schema(self) -> Schema:
        s = self.app.settings
        return schema(s.reso_key, s.reso_version, s.reso_metadata, s.reso_enums, s.reso_metadata_key_type,
                      s.reso_metadata_version)

    def handle(self, req: Request) -> Response:
        if req.path.rstrip("/") == "/reso/oauth2/token":
            return self.token(req)
        problem = self._check_token(req)
        if problem:
            return problem
        sc = self.schema
        tail = req.path[len("/reso/odata"):].strip("/")
        try:
            if tail == "":
                resp = json_response({"@odata.context": f"{req.base_url}/reso/odata/$metadata", "value": [
                    {"name": n, "kind": "EntitySet", "url": n} for n in (sc.set_name, "Media", *roster.BY_SET)]})
            elif tail == "$metadata":
                ctype = "text/html" if sc.csdl.startswith("<html>") else "application/xml"
                resp = Response(200, [("Content-Type", ctype)], sc.csdl.encode(), "xml")
            elif tail in (sc.set_name, "Media"):
                resp = self._throttle() or self.collection(req, "Property" if tail == sc.set_name else "Media")
            elif tail in roster.BY_SET:
                resp = self._throttle() or self.collection(req, tail)
            elif tail.startswith(f"{sc.set_name}(") and tail.endswith(")"):
                resp = self.entity(req, tail[len(sc.set_name) + 1:-1].strip("'"))
            else:
                resp = odata_error(404, f"Resource not found for the segment '{tail}'")
        except ODataError as exc:
            resp = odata_error(400, str(exc))
        return resp.header("OData-Version", sc.version)

    def _throttle(self) -> Response | None:
        """The one 429 of `reso_throttle_once`: production budgets trip now and then."""
        nth = self.app.settings.reso_throttle_once
        with self._lock:
            self.data_requests += 1
            if nth is None or self.throttled or self.data_requests < nth:
                return None
            self.throttled = True
        self.app.stats.fault("too_many_requests")
        return self.app.too_many(1)

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

    def reset(self) -> None:
        """Tokens gone, the one 429 armed again."""
        self.expire_tokens()
        with self._lock:
            self.data_requests = 0
            self.throttled = False

    # --- queries --------------------------------------------------------------------------------
    def _visible(self) -> str:
        return "1 = 1" if self.app.settings.mlg_can_view else "l.InFeed = 1"

    def _page(self, req: Request, selected: list[str] | None = None) -> tuple[int, int, int | None, int | None]:
        """(page size, skip, $top or None, Prefer'd size or None) as this server reads them.

        `reso_top=page` reads $top as a page size (nextLink goes on past it, as some vendors do);
        `total` reads it as OData does: at most $top rows in all, the last nextLink stops there.
        Either way `Prefer: odata.maxpagesize` asks for a page size, capped at max_page_size.
        """
        s = self.app.settings
        cap = row_cap(s.max_page_size, s.key_only_cap, selected) or s.max_page_size
        try:
            top = int(req.param("$top")) if req.param("$top") is not None else None
            skip = int(req.param("$skip") or 0)
        except ValueError as exc:
            raise ODataError("$top and $skip must be integers") from exc
        if (top is not None and top < 0) or skip < 0:
            raise ODataError("$top and $skip must not be negative")
        match = _PREFER_PAGE.search(req.headers.get("prefer", ""))
        prefer = int(match.group(1)) if match and int(match.group(1)) > 0 else None
        page = min(prefer or cap, cap)
        if top is not None:
            page = min(top, cap) if s.reso_top == "page" else min(top, page)
        return page, skip, top, prefer

    def collection(self, req: Request, entity: str) -> Response:
        s = self.app.settings
        sc = self.schema
        res = roster.BY_SET.get(entity)
        if res is not None:
            columns, source, tiebreak = ROSTER_COLUMNS[entity], f"{res.table} l", f'l."{res.key}"'
        else:
            columns = sc.property_columns if entity == "Property" else sc.media_columns
            source = "listings l" if entity == "Property" else MEDIA_SOURCE
            tiebreak = "l.ListingKey" if entity == "Property" else "m.MediaKey"
        where, params = self._visible(), []
        if req.param("$filter"):
            sql, params = FilterTranslator(columns, version=sc.version).translate(req.param("$filter") or "")
            where += f" AND ({sql})"
        order = order_by(req.param("$orderby") or "", columns, tiebreak)
        names = self._select(req, entity)
        page, skip, top, prefer = self._page(req, names if req.param("$select") else None)
        expand = (req.param("$expand") or "").strip()
        if expand and (entity != "Property" or expand != "Media"):
            raise ODataError(f"Cannot expand '{expand}'")
        count = None
        if (req.param("$count") or "").lower() == "true" and s.reso_count:
            count = self.app.store.query(f"SELECT COUNT(*) FROM {source} WHERE {where}", params).fetchone()[0]
        if res is not None:
            select_cols = ", ".join(f'l."{c}"' for c in res.columns)
        else:
            select_cols = LISTING_SELECT if entity == "Property" else (
                ", ".join(f"m.{c}" for c in MEDIA_COLUMNS) + ", l.Serial")
        rows = self.app.store.query(
            f"SELECT {select_cols} FROM {source} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, page + 1, skip]).fetchall()
        more = len(rows) > page and (s.reso_top == "page" or top is None or top > page)
        rows = rows[:page]
        set_name = sc.set_name if entity == "Property" else entity
        payload: dict[str, Any] = {"@odata.context": f"{req.base_url}/reso/odata/$metadata#{set_name}"}
        if count is not None:
            payload["@odata.count"] = count
        if res is not None:
            records = [roster_record(res, r, names) for r in rows]
            self.app.stats.add("roster_rows_served", len(records))
        elif entity == "Property":
            records = self._properties(req, rows, names, expand == "Media")
            self.app.stats.add("rows_served", len(records))
        else:
            records = [self._media_record(req, r, names, r[-1]) for r in rows]
            self.app.stats.add("media_rows_served", len(records))
        payload["value"] = records
        if more:
            query = {**req.query, "$skip": str(skip + page)}
            if top is not None:
                query["$top"] = str(page if s.reso_top == "page" else top - page)
            payload["@odata.nextLink"] = f"{req.base_url}{req.path}?" + urlencode(query, safe="$(),'")
        resp = json_response(payload)
        return resp.header("Preference-Applied", f"odata.maxpagesize={page}") if prefer else resp

    def entity(self, req: Request, key: str) -> Response:
        column = "l.Serial" if self.schema.int_key else "l.ListingKey"
        rows = self.app.store.query(
            f"SELECT {LISTING_SELECT} FROM listings l "
            f"WHERE {column} = ? AND {self._visible()}", [key]).fetchall()
        if not rows:
            return odata_error(404, f"No Property with key '{key}'")
        record = self._properties(req, rows, self._select(req, "Property"),
                                  (req.param("$expand") or "") == "Media")[0]
        return json_response({"@odata.context": f"{req.base_url}/reso/odata/$metadata#{self.schema.set_name}"
                              "/$entity", **record})

    def _select(self, req: Request, entity: str) -> list[str]:
        sc = self.schema
        if entity in roster.BY_SET:
            known = [f.reso for f in roster.BY_SET[entity].fields] + ["MlgCanView"]
            if not self.app.settings.mlg_can_view:
                known.remove("MlgCanView")
        elif entity == "Property":
            known = [f.reso for f in FIELDS] + (["ListingKeyNumeric"] if sc.int_key else [])
            if not self.app.settings.mlg_can_view:
                known.remove("MlgCanView")
        else:
            known = list(sc.media_columns)
        chosen = [x.strip() for x in (req.param("$select") or "").split(",") if x.strip()]
        bad = [c for c in chosen if c not in known and not (entity != "Media" and c == "MlgCanView")]
        if bad:
            raise ODataError(f"Could not find a property named '{bad[0]}' on type '{entity}'")
        return [c for c in known if c in chosen] if chosen else known

    def _properties(self, req: Request, rows: list[tuple[Any, ...]], names: list[str], expand: bool
                    ) -> list[dict[str, Any]]:
        wanted = set(names)
        members = self.schema.status_members
        out = []
        for row in rows:
            record = {f.reso: reso_value(f, v) for f, v in zip(LISTING_FIELDS, row, strict=False) if f.reso in wanted}
            if "MlgCanView" in wanted:
                record["MlgCanView"] = bool(row[-2])
            if "ListingKeyNumeric" in wanted:
                record["ListingKeyNumeric"] = row[-1]
            if members and record.get("StandardStatus") is not None:
                record["StandardStatus"] = members[record["StandardStatus"]]
            out.append(record)
        if expand:
            media = self.app.store.media_for([r[0] for r in rows])
            names = list(self.schema.media_columns)
            for row, record in zip(rows, out, strict=True):
                record["Media"] = [self._media_record(req, m, names, row[-1]) for m in media[row[0]]]
        return out

    def _media_record(self, req: Request, row: tuple[Any, ...], names: list[str], serial: int) -> dict[str, Any]:
        full = {
            "MediaKey": row[0], "ResourceRecordKey": row[1], "ResourceRecordKeyNumeric": serial,
            "ResourceName": "Property", "MediaCategory": "Photo",
            "Order": row[2], "MediaURL": self.app.photo_url(req.base_url, row), "ShortDescription": row[8],
            "ImageWidth": row[4], "ImageHeight": row[5], "MediaModificationTimestamp": iso_z(row[7]),
        }
        return {n: full[n] for n in names}


def roster_record(res: roster.RosterResource, row: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    """One roster row (its columns in order, InFeed last) as RESO JSON, the fields asked for."""
    wanted = set(names)
    out = {f.reso: iso_z(v) if f.data_type == "DateTime" else v
           for f, v in zip(res.fields, row, strict=False) if f.reso in wanted}
    if "MlgCanView" in wanted:
        out["MlgCanView"] = bool(row[-1])
    return out


def roster_csdl(ns: str) -> tuple[str, str]:
    """(entity types, entity sets) of the roster resources in $metadata."""
    types = "".join(
        f'<EntityType Name="{r.name}"><Key><PropertyRef Name="{r.key}"/></Key>'
        + "".join(f'<Property Name="{f.reso}" Type="{EDM[KINDS[f.data_type]]}"/>' for f in r.fields)
        + '<Property Name="MlgCanView" Type="Edm.Boolean"/></EntityType>' for r in roster.RESOURCES)
    sets = "".join(f'<EntitySet Name="{r.name}" EntityType="{ns}.{r.name}"/>' for r in roster.RESOURCES)
    return types, sets


def csdl(ns: str, set_name: str, type_name: str, int_key: bool, version: str, vendor: bool,
         members: dict[str, str] | None, key_type: str | None) -> str:
    """The $metadata document.

    Textbook: EDM namespace, set and type both `Property`. Vendor (as production documents come):
    EDM elements in no namespace, `edmx:DataService` misspelt, set `Properties` of type
    `PropertyResi` annotated as Property, a property of a type never defined, a Media key that is
    not a declared property. `key_type` declares the key with a wrong type (metadata that lies).
    """
    def prop(name: str, edm: str) -> str:
        precision = ' Precision="3"' if edm == "Edm.DateTimeOffset" else ""
        return f'<Property Name="{name}" Type="{edm}"{precision}/>'

    def edm_of(f: Field) -> str:
        if f.multi:
            return f"Collection({EDM['string']})"
        if f.reso == "StandardStatus" and members:
            return f"{ns}.StandardStatus"
        return EDM[KINDS[f.data_type]]

    key = "ListingKeyNumeric" if int_key else "ListingKey"
    props = [prop(f.reso, key_type if f.reso == key and key_type else edm_of(f)) for f in FIELDS]
    if int_key:
        props.insert(1, prop(key, key_type or "Edm.Int64"))
    media_cols = schema_media_columns(int_key)
    media = "".join(prop(n, EDM[c]) for n, c in media_cols)
    media_key = "MediaObjectID" if vendor else "MediaKey"
    enums = "".join(f'<!-- {xml_escape(name)}: {", ".join(LOOKUPS[name].values())} -->' for name in LOOKUPS)
    if members:
        enums += '<EnumType Name="StandardStatus" UnderlyingType="Edm.Int32">' + "".join(
            f'<Member Name="{m}" Value="{i}"><Annotation Term="{STANDARD_NAME}" '
            f'String="{xml_escape(next(long for long, s in STATUSES.values() if s == std))}"/></Member>'
            for i, (std, m) in enumerate(members.items())) + "</EnumType>"
    annotation = f'<Annotation Term="{STANDARD_NAME}" String="Property"/>' if vendor else ""
    odd = '<Property Name="OriginatingSystemID" Type="Vendor.Data.SystemIdentifier"/>' if vendor else ""
    schema_open = (f'<Schema Namespace="{ns}">' if vendor else
                   f'<Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="{ns}">')
    services = "edmx:DataService" if vendor else "edmx:DataServices"
    roster_types, roster_sets = roster_csdl(ns)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="{version}"><{services}>'
        f'{schema_open}'
        f'<EntityType Name="{type_name}">{annotation}<Key><PropertyRef Name="{key}"/></Key>{"".join(props)}{odd}'
        f'<NavigationProperty Name="Media" Type="Collection({ns}.Media)"/></EntityType>'
        f'<EntityType Name="Media"><Key><PropertyRef Name="{media_key}"/></Key>{media}</EntityType>{enums}'
        f'{roster_types}'
        f'<EntityContainer Name="Default"><EntitySet Name="{set_name}" EntityType="{ns}.{type_name}">'
        '<NavigationPropertyBinding Path="Media" Target="Media"/></EntitySet>'
        f'<EntitySet Name="Media" EntityType="{ns}.Media"/>{roster_sets}</EntityContainer>'
        f"</Schema></{services}></edmx:Edmx>"
    )


def schema_media_columns(int_key: bool) -> list[tuple[str, str]]:
    """(name, kind) of the Media entity's properties."""
    out = [(n, c.kind) for n, c in MEDIA_FIELDS.items()]
    if int_key:
        out.insert(2, ("ResourceRecordKeyNumeric", "int"))
    return out
