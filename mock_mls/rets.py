"""RETS 1.7.2 transactions: Login, GetMetadata, Search, GetObject, Logout under /rets/.

Shapes follow recorded real servers (shared/fixtures): capability lists with relative and
absolute URLs, COMPACT bodies with leading/trailing delimiters, multipart/parallel GetObject.
RETS timestamps are served in the SYSTEM TimeZoneOffset local time without a zone.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import roster, wide
from .control import RETS_REPLY_TEXT
from .dmql import DMQLError, Translator, fixed_zone
from .fields import BY_SYSTEM, LOOKUPS, RETS_FIELDS, Field, decode, row_cap
from .httpio import Request, Response, xml_escape, xml_response

if TYPE_CHECKING:
    from .server import MockMLS as App

REALM = "mock_mls"
METADATA_VERSION = "1.00.000"
METADATA_DATE = "2025-09-01T00:00:00Z"
TABLE_COLUMNS = ("MetadataEntryID", "SystemName", "StandardName", "LongName", "DBName", "ShortName",
                 "MaximumLength", "DataType", "Precision", "Searchable", "Interpretation", "Alignment",
                 "UseSeparator", "EditMaskID", "LookupName", "MaxSelect", "Units", "Index", "Minimum",
                 "Maximum", "Default", "Required", "SearchHelpID", "Unique")
SESSION_COOKIE = "RETS-Session-ID"
OK = 'ReplyCode="0" ReplyText="Operation Successful"'
FOREIGN_KEY_COLUMNS = ("ForeignKeyID", "ParentResourceID", "ParentClassID", "ParentSystemName",
                       "ChildResourceID", "ChildClassID", "ChildSystemName")
# Every METADATA type of RETS 1.7.2; those the mock defines no rows for answer 20503 (no metadata),
# names that are not metadata types 20501 (invalid type).
METADATA_TYPES = ("SYSTEM", "RESOURCE", "CLASS", "TABLE", "UPDATE", "UPDATE_TYPE", "OBJECT", "SEARCH_HELP",
                  "EDITMASK", "LOOKUP", "LOOKUP_TYPE", "UPDATE_HELP", "VALIDATION_LOOKUP",
                  "VALIDATION_LOOKUP_TYPE", "VALIDATION_EXTERNAL", "VALIDATION_EXTERNAL_TYPE",
                  "VALIDATION_EXPRESSION", "FOREIGNKEYS", "FILTER", "FILTER_TYPE", "COLUMN_GROUP",
                  "COLUMN_GROUP_SET", "COLUMN_GROUP_CONTROL", "COLUMN_GROUP_TABLE", "COLUMN_GROUP_NORMALIZATION")
TREE = ("SYSTEM", "RESOURCE", "CLASS", "TABLE", "OBJECT", "LOOKUP", "LOOKUP_TYPE", "FOREIGNKEYS")
# StandardNames=1: a field answers to its RETS StandardName and to its RESO name
BY_STANDARD: dict[str, Field] = {name: f for f in RETS_FIELDS for name in (f.reso, f.rets_standard_name)}


@dataclass(frozen=True)
class Searchable:
    """What a Search of one resource reads: its table, fields by either naming, and key."""

    table: str
    fields: tuple[Field, ...]
    by_system: dict[str, Field]
    by_standard: dict[str, Field]
    key: str  # RESO name of the key field (the SQLite column)
    classes: tuple[str, ...]  # class names the Search accepts


PROPERTY = Searchable("listings", RETS_FIELDS, BY_SYSTEM, BY_STANDARD, "ListingKey", ("RE_1", "ResidentialProperty"))
SEARCHABLE: dict[str, Searchable] = {"Property": PROPERTY, **{
    r.rets_resource: Searchable(r.table, r.fields, r.by_system, r.by_standard, r.key, (r.rets_class,))
    for r in roster.RESOURCES}}


@dataclass
class Session:
    id: str
    last_seen: float


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - RETS mandates MD5


def reply(code: int, text: str, status: int = 200) -> Response:
    return xml_response(f'<RETS ReplyCode="{code}" ReplyText="{xml_escape(text)}" />\n', status)


def compact_row(values: list[str]) -> str:
    return "\t" + "\t".join(values) + "\t"


def metadata_block(kind: str, attrs: dict[str, str], columns: tuple[str, ...], rows: list[list[str]],
                   fmt: str, element: str) -> str:
    """One METADATA-<kind> element, COMPACT (COLUMNS/DATA) or STANDARD-XML (one element per row)."""
    head = " ".join(f'{k}="{xml_escape(v)}"' for k, v in attrs.items())
    if fmt == "STANDARD-XML":
        items = "".join(
            f"<{element}>" + "".join(f"<{c}>{xml_escape(v)}</{c}>" if v else f"<{c}/>"
                                     for c, v in zip(columns, row, strict=True)) + f"</{element}>\n"
            for row in rows
        )
        return f"<METADATA-{kind} {head}>\n{items}</METADATA-{kind}>\n"
    data = "".join(f"<DATA>{xml_escape(compact_row(row))}</DATA>\n" for row in rows)
    return f"<METADATA-{kind} {head}>\n<COLUMNS>{compact_row(list(columns))}</COLUMNS>\n{data}</METADATA-{kind}>\n"


class Rets:
    """The RETS server side. Sessions live in a dict keyed by the RETS-Session-ID cookie."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions: dict[str, Session] = {}
        self.nonces: set[str] = set()

    # --- dispatch and session checks ------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        name = req.path[len("/rets/"):].strip("/").lower()
        handlers = {"login": self.login, "logout": self.logout, "search": self.search,
                    "getmetadata": self.get_metadata, "getobject": self.get_object}
        handler = handlers.get(name)
        if handler is None:
            return reply(20036, f"Unknown transaction {name}", 404)
        fault = self.app.faults.take("rets_error", req.path, transaction=name)
        if fault:
            self.app.stats.fault("rets_error")
            code = int(fault.get("code", 20036))
            return reply(code, fault.get("text") or RETS_REPLY_TEXT.get(code, "Error"))
        if name == "logout" and req.cookie(SESSION_COOKIE) is None and self._auth_ok(req):
            return self.logout(req)  # like real servers: Logout authenticates by HTTP auth, session or not
        if name != "login":
            problem = self._check_session(req, name)
            if problem:
                return problem
        return handler(req)

    def _challenge(self, body_code: int = 20036, text: str = "Authorization required") -> Response:
        resp = reply(body_code, text, 401)
        if self.app.settings.auth == "basic":
            return resp.header("WWW-Authenticate", f'Basic realm="{REALM}"')
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        return resp.header(
            "WWW-Authenticate",
            f'Digest realm="{REALM}", nonce="{nonce}", opaque="{md5(REALM)}", qop="auth", algorithm=MD5',
        )

    def _expired(self) -> Response:
        if self.app.settings.expired_session_reply == "401":
            return self._challenge(20037, "Session expired")
        return reply(20037, "Session expired or invalid; log in again")

    def _check_session(self, req: Request, transaction: str) -> Response | None:
        sid = req.cookie(SESSION_COOKIE)
        session = self.sessions.get(sid or "")
        if session is None:
            return self._expired() if sid else self._challenge(20036, "Not logged in")
        now = self.app.clock.now()
        idle = self.app.settings.session_idle_seconds
        expire = idle is not None and now - session.last_seen > idle
        if transaction == "search" and self.app.faults.search_expires():
            self.app.stats.fault("session_expire_after_searches")
            expire = True
        if expire:
            self.sessions.pop(session.id, None)
            return self._expired()
        if not self._ua_ok(req, session.id):
            return self._challenge(20037, "Client authentication failed (RETS-UA-Authorization)")
        session.last_seen = now
        return None

    def _ua_ok(self, req: Request, session_id: str) -> bool:
        """RETS-UA-Authorization: Digest md5(md5(UA:UAPassword):RequestID:SessionID:RETS-Version)."""
        s = self.app.settings
        if not s.require_ua_auth:
            return True
        value = req.headers.get("rets-ua-authorization", "")
        if not value.startswith("Digest ") or req.headers.get("user-agent") != s.user_agent:
            return False
        a1 = md5(f"{s.user_agent}:{s.ua_password}")
        version = req.headers.get("rets-version", s.rets_version)
        expected = md5(f"{a1}:{req.headers.get('rets-request-id', '')}:{session_id}:{version}")
        return secrets.compare_digest(value[7:].strip(), expected)

    def _auth_ok(self, req: Request) -> bool:
        s = self.app.settings
        header = req.headers.get("authorization", "")
        if s.auth == "basic":
            if not header.startswith("Basic "):
                return False
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return user == s.username and password == s.password
        if not header.startswith("Digest "):
            return False
        parts = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header)}
        if parts.get("username") != s.username or parts.get("nonce") not in self.nonces:
            return False
        ha1 = md5(f"{s.username}:{parts.get('realm', REALM)}:{s.password}")
        ha2 = md5(f"{req.method}:{parts.get('uri', '')}")
        if parts.get("qop"):
            expected = md5(f"{ha1}:{parts['nonce']}:{parts.get('nc', '')}:{parts.get('cnonce', '')}:"
                           f"{parts['qop']}:{ha2}")
        else:
            expected = md5(f"{ha1}:{parts['nonce']}:{ha2}")
        return secrets.compare_digest(parts.get("response", ""), expected)

    # --- transactions ---------------------------------------------------------------------------
    def login(self, req: Request) -> Response:
        if not self._auth_ok(req):
            return self._challenge(20036, "Invalid username or password")
        if not self._ua_ok(req, req.cookie(SESSION_COOKIE) or ""):
            return self._challenge(20037, "Client authentication failed (RETS-UA-Authorization)")
        session = Session(secrets.token_hex(12), self.app.clock.now())
        self.sessions[session.id] = session
        self.app.stats.add("logins")
        s = self.app.settings
        base = req.base_url
        body = (
            f"<RETS {OK}>\n<RETS-RESPONSE>\n"
            f"MemberName=Mock Agent\nUser={s.username},1,AGENT,{s.username}\nBroker=MOCK,1\n"
            f"MetadataVersion={METADATA_VERSION}\nMetadataTimestamp={METADATA_DATE}\n"
            f"MinMetadataTimestamp={METADATA_DATE}\nTimeoutSeconds={int(s.session_idle_seconds or 1800)}\n"
            "Login=/rets/login\nSearch=/rets/search\n"
            f"GetMetadata={base}/rets/getmetadata\nGetObject = /rets/getobject\n"
            f"Logout={base}/rets/logout\nX-SupportSite=http://www.example.com/support\n"
            "</RETS-RESPONSE>\n</RETS>\n"
        )
        return xml_response(body).header("Set-Cookie", f"{SESSION_COOKIE}={session.id}; Path=/")

    def logout(self, req: Request) -> Response:
        self.sessions.pop(req.cookie(SESSION_COOKIE) or "", None)
        return xml_response('<RETS ReplyCode="0" ReplyText="Logged out">\n<RETS-RESPONSE>\n'
                            "ConnectTime=1\nBilling=0\nSignOffMessage=Goodbye\n</RETS-RESPONSE>\n</RETS>\n")

    def get_metadata(self, req: Request) -> Response:
        kind = (req.param("Type") or "").upper().removeprefix("METADATA-")
        fmt = (req.param("Format") or "COMPACT").upper()
        ident = req.param("ID") or "0"
        if fmt not in ("COMPACT", "COMPACT-DECODED", "STANDARD-XML"):
            return reply(20514, f"Requested format {fmt} unavailable")
        if kind not in METADATA_TYPES:
            return reply(20501, f"Invalid type {kind or '(none)'}")
        resource = ident.partition(":")[0]
        if kind != "SYSTEM" and resource not in ("0", "*", *SEARCHABLE):
            return reply(20500, f"Invalid resource {resource}")
        if kind == "SYSTEM" and ident == "*" and fmt != "STANDARD-XML":
            # the whole tree in one reply, one METADATA-* block after another (what libRETS asks for)
            blocks = [self._metadata_block(k, "*", fmt) for k in TREE]
            block = "".join(b for b in blocks if isinstance(b, str))
        else:
            found = self._metadata_block(kind, ident if kind != "SYSTEM" else "0", fmt)
            if isinstance(found, Response):
                return found
            block = found
        if fmt == "STANDARD-XML":
            block = f"<METADATA>\n{block}</METADATA>\n"
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<RETS {OK}>\n{block}</RETS>\n'
        return xml_response(body)

    def _metadata_block(self, kind: str, ident: str, fmt: str) -> str | Response:
        """One type's METADATA-* element(s), or the RETS error reply for a bad ID or no metadata."""
        resource, _, rest = ident.partition(":")
        attrs = {"Version": METADATA_VERSION, "Date": METADATA_DATE}
        if kind != "SYSTEM" and resource in roster.BY_RETS:
            return self._roster_metadata(kind, roster.BY_RETS[resource], rest, fmt)
        prop = {"Resource": "Property", **attrs}
        if kind == "SYSTEM":
            if fmt == "STANDARD-XML":
                return (f'<METADATA-SYSTEM Version="{METADATA_VERSION}" Date="{METADATA_DATE}">\n'
                        f'<SYSTEM SystemID="MOCKMLS" SystemDescription="Mock MLS for integration tests" '
                        f'TimeZoneOffset="{self.app.settings.timezone_offset}">\n<Comments/>\n</SYSTEM>\n'
                        "</METADATA-SYSTEM>\n")
            return (f'<METADATA-SYSTEM Version="{METADATA_VERSION}" Date="{METADATA_DATE}">\n'
                    f'<SYSTEM SystemID="MOCKMLS" SystemDescription="Mock MLS for integration tests" '
                    f'TimeZoneOffset="{self.app.settings.timezone_offset}"/>\n'
                    "<COMMENTS>Mock MLS</COMMENTS>\n</METADATA-SYSTEM>\n")
        if kind == "RESOURCE":
            return metadata_block(
                "RESOURCE", attrs, ("ResourceID", "StandardName", "VisibleName", "Description", "KeyField",
                                    "ClassCount", "ObjectVersion", "LookupVersion"),
                [["Property", "Property", "Property", "Property listings", "LIST_1", "1", METADATA_VERSION,
                  METADATA_VERSION]] + [
                    [r.rets_resource, r.name, r.rets_resource, f"{r.name} roster", r.key_system, "1",
                     METADATA_VERSION, METADATA_VERSION] for r in roster.RESOURCES], fmt, "Resource")
        if kind == "CLASS":
            return metadata_block(
                "CLASS", prop, ("ClassName", "StandardName", "VisibleName", "Description", "TableVersion"),
                [["RE_1", "ResidentialProperty", "Residential", "All listings", METADATA_VERSION]], fmt, "Class")
        if kind == "TABLE":
            if rest not in ("", "*", "RE_1", "0"):
                return reply(20502, f"Invalid class {rest}")
            every = (*RETS_FIELDS, *wide.fields(self.app.settings.extra_fields))
            return metadata_block("TABLE", {"Resource": "Property", "Class": "RE_1", **attrs}, TABLE_COLUMNS,
                                  [self._table_row(f) for f in every], fmt, "Field")
        if kind == "LOOKUP":
            return metadata_block("LOOKUP", prop, ("LookupName", "VisibleName", "Version", "Date"),
                                  [[n, n, METADATA_VERSION, METADATA_DATE] for n in LOOKUPS], fmt, "Lookup")
        if kind == "LOOKUP_TYPE":
            names = list(LOOKUPS) if rest in ("", "*", "0") else [rest]
            if any(n not in LOOKUPS for n in names):
                return reply(20502, f"Invalid lookup {rest}")
            return "".join(
                metadata_block("LOOKUP_TYPE", {"Resource": "Property", "Lookup": n, **attrs},
                               ("Value", "LongValue", "ShortValue"),
                               [[code, long, long[:10]] for code, long in LOOKUPS[n].items()], fmt, "LookupType")
                for n in names)
        if kind == "OBJECT":
            return metadata_block("OBJECT", prop, ("ObjectType", "MimeType", "VisibleName", "Description"),
                                  [["Photo", "image/jpeg", "Photo", "Listing photos"]], fmt, "Object")
        if kind == "FOREIGNKEYS":
            # one resource, so no key points at another; the type exists, with no rows (like many servers)
            return metadata_block("FOREIGNKEYS", attrs, FOREIGN_KEY_COLUMNS, [], fmt, "ForeignKey")
        return reply(20503, f"No metadata of type {kind} on this server")

    def _roster_metadata(self, kind: str, res: roster.RosterResource, rest: str, fmt: str) -> str | Response:
        """A roster resource's metadata: its one class and its fields; no lookups, no objects."""
        attrs = {"Resource": res.rets_resource, "Version": METADATA_VERSION, "Date": METADATA_DATE}
        if kind == "CLASS":
            return metadata_block("CLASS", attrs, ("ClassName", "StandardName", "VisibleName", "Description",
                                                   "TableVersion"),
                                  [[res.rets_class, res.name, res.rets_class, f"All {res.name} records",
                                    METADATA_VERSION]], fmt, "Class")
        if kind == "TABLE":
            if rest not in ("", "*", "0", res.rets_class):
                return reply(20502, f"Invalid class {rest}")
            return metadata_block("TABLE", {**attrs, "Class": res.rets_class}, TABLE_COLUMNS,
                                  [self._table_row(f, res.key) for f in res.fields], fmt, "Field")
        if kind in ("LOOKUP", "LOOKUP_TYPE"):
            columns = ("LookupName", "VisibleName", "Version", "Date") if kind == "LOOKUP" else (
                "Value", "LongValue", "ShortValue")
            return metadata_block(kind, attrs, columns, [], fmt, "Lookup")
        return reply(20503, f"No metadata of type {kind} for {res.rets_resource}")

    @staticmethod
    def _table_row(f: Field, key: str = "ListingKey") -> list[str]:
        return [f.system or "", f.system or "", f.rets_standard_name, f.long_name, f.system or "",
                f.long_name[:16], str(f.max_length), f.data_type, str(f.precision) if f.precision else "", "1",
                f.interpretation, "Right" if f.data_type in ("Int", "Decimal") else "Left",
                "1" if f.reso in ("ListPrice", "LivingArea") else "0", "", f.lookup or "",
                str(len(LOOKUPS[f.lookup])) if f.multi and f.lookup else "", "", "1" if f.reso == key else "0",
                "", "", "", "1" if f.reso == key else "0", "", "1" if f.reso == key else "0"]

    # --- Search ---------------------------------------------------------------------------------
    def search(self, req: Request) -> Response:
        s = self.app.settings
        spec = SEARCHABLE.get(req.param("SearchType") or "Property")
        if spec is None:
            return reply(20203, f"Unknown resource {req.param('SearchType')}")
        if (req.param("Class") or spec.classes[0]) not in spec.classes:
            return reply(20203, f"Unknown class {req.param('Class')}")
        fmt = (req.param("Format") or "COMPACT").upper()
        if fmt not in ("COMPACT", "COMPACT-DECODED"):
            return reply(20203, f"Format {fmt} is not supported; use COMPACT or COMPACT-DECODED")
        query_type = (req.param("QueryType") or "DMQL2").upper()
        if query_type not in ("DMQL2", "DMQL"):
            return reply(20203, f"QueryType {query_type} is not supported")
        standard = req.param("StandardNames", "0") == "1"
        resolve = (spec.by_standard if standard else spec.by_system).get
        tz = fixed_zone(s.timezone_offset)
        try:
            where, params = Translator(resolve, tz, datetime.fromtimestamp(self.app.clock.now(), tz)).translate(
                req.param("Query") or "")
        except DMQLError as exc:
            return reply(exc.code, str(exc))
        select = [x.strip() for x in (req.param("Select") or "").split(",") if x.strip()]
        chosen = [resolve(name) for name in select] if select else list(spec.fields)
        if any(f is None for f in chosen):
            bad = [n for n, f in zip(select, chosen, strict=True) if f is None]
            return reply(20202, f"Invalid Select: unknown field(s) {', '.join(bad)}")
        fields_: list[Field] = [f for f in chosen if f is not None]
        count_mode = req.param("Count", "0") if s.rets_count else "0"
        limit_text = (req.param("Limit") or "NONE").upper()
        offset_text = req.param("Offset")
        if offset_text is not None and s.offset_mode == "reject":
            return reply(20203, "Offset is not supported by this server; narrow the query instead")
        try:
            limit = None if limit_text == "NONE" else int(limit_text)
            offset = max(int(offset_text or 1), 1) - 1 if s.offset_mode == "honour" else 0
        except ValueError:
            return reply(20203, f"Invalid Limit or Offset ({limit_text!r}, {offset_text!r})")
        sql_where = f"InFeed = 1 AND ({where})"
        total = None
        if count_mode in ("1", "2"):
            total = self.app.store.query(f"SELECT COUNT(*) FROM {spec.table} WHERE {sql_where}", params).fetchone()[0]
            if total == 0:
                return reply(20201, "No Records Found")
            if count_mode == "2":
                return xml_response(f'<RETS {OK}>\n<COUNT Records="{total}" />\n</RETS>\n')
        cap = row_cap(s.row_cap, s.key_only_cap, [f.reso for f in fields_] if select else None)
        page = min(x for x in (limit, cap, 10**12) if x is not None)
        cols = ", ".join(f'"{f.reso}"' for f in fields_)
        cur = self.app.store.query(
            f'SELECT {cols} FROM {spec.table} WHERE {sql_where} ORDER BY "{spec.key}" LIMIT ? OFFSET ?',
            [*params, page + 1, offset],
        )
        first = cur.fetchmany(500)
        if not first:
            return reply(20201, "No Records Found")
        names = [(f.rets_standard_name if standard else f.system) or "" for f in fields_]
        extra = s.extra_fields if spec is PROPERTY and not select else 0
        names += [f.system or "" for f in wide.fields(extra)]
        return xml_response(self._stream(cur, first, fields_, names, fmt == "COMPACT-DECODED", page, total,
                                         spec.key, extra))

    def _stream(self, cur: Any, first: list[tuple[Any, ...]], fields_: list[Field], names: list[str],
                decoded: bool, page: int, total: int | None, key: str = "ListingKey",
                extra: int = 0) -> Iterator[bytes]:
        """The reply, 500 rows at a time; `extra` production-width fields after each row's own."""
        tz = fixed_zone(self.app.settings.timezone_offset)
        head = f"<RETS {OK}>\n"
        if total is not None:
            head += f'<COUNT Records="{total}" />\n'
        yield (head + f'<DELIMITER value="09" />\n<COLUMNS>{compact_row(names)}</COLUMNS>\n').encode()
        sent = 0
        batch = first
        more = False
        keyless = set(self.app.settings.rets_keyless)
        key_at = next((i for i, f in enumerate(fields_) if f.reso == key), None) if keyless else None
        own_key = next((i for i, f in enumerate(fields_) if f.reso == key), 0)
        while batch:
            lines = []
            for row in batch:
                if sent >= page:
                    more = True
                    break
                sent += 1
                values = [rets_value(f, v, decoded, tz) for f, v in zip(fields_, row, strict=True)]
                if extra:
                    values += wide.values(values[own_key], extra)
                if key_at is not None and values[key_at] in keyless:
                    values[key_at] = ""  # a damaged record: the server sends it without its key
                lines.append(f"<DATA>{xml_escape(compact_row(values))}</DATA>\n")
            self.app.stats.add("rows_served" if key == "ListingKey" else "roster_rows_served", len(lines))
            yield "".join(lines).encode()
            if more:
                break
            batch = cur.fetchmany(500)
        # Limit or the row cap cut the reply: more rows match (unless this server keeps it quiet)
        tail = "<MAXROWS />\n" if more and self.app.settings.rets_maxrows else ""
        yield (tail + "</RETS>\n").encode()

    # --- GetObject ------------------------------------------------------------------------------
    def get_object(self, req: Request) -> Response:
        if (req.param("Type") or "Photo").lower() not in ("photo", "hiresphoto", "thumbnail"):
            return reply(20401, f"Invalid type {req.param('Type')}")
        location = req.param("Location", "0") == "1"
        wanted = parse_object_ids(req.param("ID") or "")
        if not wanted:
            return reply(20401, "Missing or invalid ID")
        store = self.app.store
        media = store.media_for([k for k, _ in wanted])
        parts: list[tuple[str, int, tuple[Any, ...] | None]] = []  # key, object id, media row
        for key, ids in wanted:
            listing = store.listing(key)
            rows = media.get(key, []) if listing and listing["InFeed"] else []
            if ids == ["*"]:
                parts.extend((key, r[2] + 1, r) for r in rows)
                if not rows:
                    parts.append((key, 1, None))
                continue
            for oid in ids:
                n = int(oid)
                order = 0 if n == 0 else n - 1
                row = next((r for r in rows if r[2] == order), None)
                parts.append((key, n, row))
        single = len(wanted) == 1 and wanted[0][1] != ["*"] and len(parts) == 1
        if all(row is None for _, _, row in parts):
            return reply(20403, "No Object Found")
        if single:
            key, oid, row = parts[0]
            return self._single(req, key, oid, row, location)
        boundary = "MOCKMLS" + secrets.token_hex(12)
        resp = Response(200, [("Content-Type", f'multipart/parallel; boundary="{boundary}"'),
                              ("MIME-Version", "1.0")],
                        self._multipart(req, parts, boundary, location), "multipart")
        return resp

    def _content_id(self, key: str) -> str:
        """The asked key, or (rets_content_id="other") the listing's internal id, as some servers label parts."""
        if self.app.settings.rets_content_id == "key":
            return key
        return "SYS" + str(int(md5(key)[:8], 16) % 10**8).zfill(8)

    def _part_headers(self, req: Request, key: str, oid: int, row: tuple[Any, ...], location: bool
                      ) -> list[tuple[str, str]]:
        s = self.app.settings
        headers = [("Content-ID", self._content_id(key)), ("Object-ID", str(oid)),
                   ("Content-Type", "text/xml" if location and s.rets_location_xml else "image/jpeg"),
                   ("Content-Description", str(row[8]))]
        if row[2] == 0:
            headers.append(("Preferred", "1"))
        if location:
            url = self.app.signed_photo_url(s.rets_location_base or req.base_url, row)
            headers.append(("Location", xml_escape(url) if s.rets_location_escape else url))
        return headers

    def _location_body(self) -> bytes:
        """A Location part's body: empty, or (rets_location_xml) a RETS reply saying all is well."""
        if self.app.settings.rets_location_xml:
            return b'<RETS ReplyCode="0" ReplyText="Success"></RETS>'
        return b""

    def _single(self, req: Request, key: str, oid: int, row: tuple[Any, ...] | None, location: bool) -> Response:
        if row is None:
            return reply(20403, "No Object Found")
        fault = self.app.faults.take("error_part", req.path, listing_key=key, order=row[2])
        if fault:
            self.app.stats.fault("error_part")
            return reply(int(fault.get("code", 20403)), "Object unavailable")
        headers = self._part_headers(req, key, oid, row, location)
        if self.app.faults.take("empty_part", req.path, listing_key=key, order=row[2]) is not None:
            self.app.stats.fault("empty_part")
            return Response(200, headers, b"", "jpeg")
        body = self._location_body() if location else self.app.photo_bytes(row)
        if location and not self.app.settings.rets_location_xml:
            headers = [(k, v) for k, v in headers if k != "Content-Type"] + [("Content-Type", "text/plain")]
        return Response(200, headers, body, "jpeg")

    def _multipart(self, req: Request, parts: list[tuple[str, int, tuple[Any, ...] | None]], boundary: str,
                   location: bool) -> Iterator[bytes]:
        empty_parts = self.app.settings.rets_empty_parts
        previous = None
        for i, (key, oid, row) in enumerate(parts):
            sep = "\r\n" if i else ""
            if empty_parts and key != previous:  # seen from real servers: a part with nothing in it
                yield f"{sep}--{boundary}\r\n\r\n".encode()
                sep = "\r\n"
            previous = key
            yield f"{sep}--{boundary}\r\n".encode()
            fault = row is not None and self.app.faults.take("error_part", req.path, listing_key=key, order=row[2])
            if row is None or fault:
                code = int(fault.get("code", 20403)) if fault else 20403
                if fault:
                    self.app.stats.fault("error_part")
                yield (f"Content-ID: {self._content_id(key)}\r\nObject-ID: {oid}\r\nContent-Type: text/xml\r\n\r\n"
                       f'<RETS ReplyCode="{code}" ReplyText="No Object Found" />\r\n').encode()
                continue
            head = "".join(f"{k}: {v}\r\n" for k, v in self._part_headers(req, key, oid, row, location))
            yield (head + "\r\n").encode()
            if self.app.faults.take("empty_part", req.path, listing_key=key, order=row[2]) is not None:
                self.app.stats.fault("empty_part")
                continue  # the headers of an object, and no bytes
            yield self._location_body() if location else self.app.photo_bytes(row)
        yield f"\r\n--{boundary}--\r\n".encode()


def parse_object_ids(text: str) -> list[tuple[str, list[str]]]:
    """`k1:*,k2:1:3` and the common `k:1,3` form -> [(key, [ids])]; bare keys mean all objects."""
    out: list[tuple[str, list[str]]] = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        if ":" in part:
            key, *ids = part.split(":")
            out.append((key, ids or ["*"]))
        elif out and (part == "*" or (part.isdigit() and len(part) <= 4)):
            out[-1][1].append(part)
        else:
            out.append((part, ["*"]))
    for _key, ids in out:
        if "*" in ids:
            ids[:] = ["*"]
        elif not all(i.isdigit() for i in ids):
            return []
    return out


def rets_value(f: Field, value: Any, decoded: bool, tz: Any) -> str:
    """One stored value as RETS COMPACT text."""
    if value is None:
        return ""
    if f.data_type == "DateTime":
        moment = datetime.fromtimestamp(value / 1000, tz)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{value % 1000:03d}" if value % 1000 else "")
    if f.data_type == "Decimal":
        return f"{value:.{f.precision}f}"
    if f.data_type == "Int":
        return str(int(value))
    if decoded and f.lookup:
        return decode(f, value) or ""
    return str(value)

