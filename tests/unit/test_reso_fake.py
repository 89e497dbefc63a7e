"""An in-process fake RESO server for unit tests (helpers only; no tests are collected here).

It understands exactly the query shapes ResoSource sends (keyset condition, `in` lists) and
nothing more, so unit tests run in milliseconds; the mock MLS covers real OData parsing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import responses
from mls_sync.config import Limits, find_provider
from mls_sync.connections import Connection
from mls_sync.limits import Budget, RateLimiter
from mls_sync.sources.reso import ResoSource

ROOT = "http://fake.test/reso/odata"
TOKEN_URL = "http://fake.test/oauth2/token"
SECRET = "s3cr3t-client-secret"

KEYSET = re.compile(r"ModificationTimestamp gt (\S+) or "
                    r"\(ModificationTimestamp eq \S+ and ListingKey gt '((?:[^']|'')*)'\)")
KEY_GT = re.compile(r"^\(?ListingKey gt '((?:[^']|'')*)'\)?$")
CUT = re.compile(r"ModificationTimestamp le (\S+?)\)?(?: |$)")
IN_LIST = re.compile(r"(\w+) in \(([^)]*)\)")


def listing(i: int, ts: str, **kw: Any) -> dict[str, Any]:
    return {"ListingKey": f"K{i:05d}", "ModificationTimestamp": ts, "StandardStatus": "Active",
            "ListPrice": 100000 + i, "MlgCanView": True, **kw}


@dataclass
class FakeReso:
    """Records in (ModificationTimestamp, ListingKey) order; knobs for tokens and failures."""

    records: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    max_page: int = 1000
    nextlink: bool = False
    tokens_issued: int = 0
    valid_tokens: set[str] = field(default_factory=set)
    queue: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)  # canned replies
    requests: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    expires_in: int = 3600

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=self._token)
        rsps.add_callback(responses.GET, re.compile(re.escape(ROOT) + r"/.*"), callback=self._get)
        rsps.add_callback(responses.GET, re.compile(r"http://(fake|cdn)\.test/photos/.*"), callback=self._photo)

    def _token(self, req: Any) -> tuple[int, dict, str]:
        form = parse_qs(req.body)
        if form.get("client_secret") != [SECRET]:
            return 401, {}, json.dumps({"error": "invalid_client", "error_description": "bad secret"})
        self.tokens_issued += 1
        tok = f"tok-{self.tokens_issued}-abcdef"
        self.valid_tokens.add(tok)
        return 200, {}, json.dumps({"access_token": tok, "token_type": "Bearer", "expires_in": self.expires_in})

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def _get(self, req: Any) -> tuple[int, dict, str | bytes]:
        self.requests.append(req.url)
        self.headers_seen.append(dict(req.headers))
        auth = req.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid_tokens and auth != "Bearer static-token":
            return 401, {}, json.dumps({"error": {"code": "401", "message": "token expired"}})
        parts = urlsplit(req.url)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rsplit("/", 1)[-1]
        if path == "$metadata":
            return 200, {"Content-Type": "application/xml"}, METADATA
        # canned replies answer pages (not the probes before and after a walk: newest, `in`, $count)
        is_page = "$orderby" in q and not q["$orderby"].endswith(" desc") and "$count" not in q
        if self.queue and is_page:
            status, body, headers = self.queue.pop(0)
            return status, headers, body if isinstance(body, (bytes, str)) else json.dumps(body)
        prefer = re.search(r"maxpagesize=(\d+)", req.headers.get("Prefer", ""))
        body = self._query(q, int(prefer.group(1)) if prefer else None)
        return 200, {"Content-Type": "application/json", "X-RateLimit-Remaining": "99"}, json.dumps(body)

    def page_requests(self) -> list[str]:
        """The URLs of page queries (what a walk asks), without $metadata and probes."""
        out = []
        for u in self.requests:
            q = {k: v[0] for k, v in parse_qs(urlsplit(u).query).items()}
            if "$orderby" in q and not q["$orderby"].endswith(" desc") and "$count" not in q:
                out.append(u)
        return out

    def _query(self, q: dict[str, str], prefer: int | None = None) -> dict[str, Any]:
        rows = list(self.records)
        skip = int(q.get("$skiptoken", 0))
        flt = q.get("$filter", "")
        m = KEYSET.search(flt)
        if m:
            t, k = m.group(1), m.group(2).replace("''", "'")
            rows = [r for r in rows if (r["ModificationTimestamp"], r["ListingKey"]) > (t, k)]
        for name, vals in IN_LIST.findall(flt):
            wanted = {v.strip().strip("'").replace("''", "'") for v in vals.split(",")}
            rows = [r for r in rows if str(r.get(name)) in wanted]
        for clause in flt.split(" and "):
            km = KEY_GT.match(clause.strip())
            if km:
                rows = [r for r in rows if r["ListingKey"] > km.group(1)]
        cut = CUT.search(flt)
        if cut:
            rows = [r for r in rows if r["ModificationTimestamp"] <= cut.group(1)]
        if q.get("$orderby") == "ListingKey":
            rows.sort(key=lambda r: r["ListingKey"])
        if q.get("$orderby", "").endswith(" desc"):
            rows.reverse()
        top = min(int(q.get("$top", prefer or self.max_page)), self.max_page)
        page = rows[skip:skip + top]
        out: list[dict[str, Any]] = []
        for r in page:
            rec = {k: v for k, v in r.items() if "$select" not in q or k in q["$select"].split(",")}
            if q.get("$expand") == "Media":
                rec["Media"] = self.media.get(r["ListingKey"], [])
            out.append(rec)
        body: dict[str, Any] = {"value": out}
        if q.get("$count") == "true":
            body["@odata.count"] = len(rows)
        if self.nextlink and skip + top < len(rows):
            nq = dict(q, **{"$skiptoken": str(skip + top)})
            body["@odata.nextLink"] = f"{ROOT}/Property?" + "&".join(f"{k}={v}" for k, v in nq.items())
        return body

    def _photo(self, req: Any) -> tuple[int, dict, bytes]:
        self.headers_seen.append(dict(req.headers))
        name = req.url.rsplit("/", 1)[-1]
        token = req.headers.get("Authorization", "").removeprefix("Bearer ")
        if req.url.startswith("http://fake.test/") and token not in self.valid_tokens:
            return 401, {}, b"token expired"
        if name.startswith("timeout"):
            raise requests.ReadTimeout("read timed out")
        if name.startswith("missing"):
            return 404, {"Content-Type": "text/plain"}, b"not found"
        if name.startswith("html"):
            return 200, {"Content-Type": "text/html"}, b"<html>oops</html>"
        return 200, {"Content-Type": "image/jpeg"}, b"\xff\xd8\xff" + name.encode()


METADATA = b"""<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.01" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
 <edmx:DataServices>
  <Schema Namespace="org.reso.metadata" xmlns="http://docs.oasis-open.org/odata/ns/edm">
   <EntityType Name="Property">
    <Key><PropertyRef Name="ListingKey"/></Key>
    <Property Name="ListingKey" Type="Edm.String" MaxLength="20" Nullable="false"/>
    <Property Name="ListPrice" Type="Edm.Decimal"/>
    <Property Name="ModificationTimestamp" Type="Edm.DateTimeOffset" Precision="7"/>
    <NavigationProperty Name="Media" Type="Collection(org.reso.metadata.Media)"/>
   </EntityType>
   <EntityType Name="Media">
    <Key><PropertyRef Name="MediaKey"/></Key>
    <Property Name="MediaKey" Type="Edm.String"/><Property Name="ResourceRecordKey" Type="Edm.String"/>
   </EntityType>
   <EnumType Name="StandardStatus"><Member Name="Active"/><Member Name="Delete"/></EnumType>
   <EntityContainer Name="Default"><EntitySet Name="Property" EntityType="org.reso.metadata.Property"/>
    <EntitySet Name="Media" EntityType="org.reso.metadata.Media"/>
   </EntityContainer>
  </Schema>
 </edmx:DataServices>
</edmx:Edmx>"""


def make_source(*, budget: Budget | None = None, extra: dict[str, Any] | None = None,
                **reso: Any) -> ResoSource:
    """ResoSource for the demo_reso provider pointed at the fake, with instant retries."""
    provider = find_provider("demo_reso")
    provider = provider.model_copy(update={
        "reso": provider.reso.model_copy(update=reso),
        "limits": Limits(request_attempts=4),
    })
    conn = Connection("mls_demo_reso", host=ROOT, login="client-1", password=SECRET,
                      extra=extra if extra is not None else {"token_url": TOKEN_URL})
    return ResoSource(provider, conn, RateLimiter(budget or Budget()), sleep=lambda s: None)
