"""Plain request/response values passed between the HTTP handler and the protocol modules.

Protocol code returns a `Response` whose body may be an iterator of byte chunks; the handler
streams it (chunked) and applies body faults, so no module ever builds a 100,000-row string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""
    base_url: str = ""

    @classmethod
    def build(cls, method: str, target: str, headers: dict[str, str], body: bytes, base_url: str) -> Request:
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True))
        if method == "POST" and "application/x-www-form-urlencoded" in headers.get("content-type", ""):
            query.update(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        return cls(method, path, query, headers, body, base_url)

    def param(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive parameter: RETS clients disagree on `Offset` vs `offset`."""
        if name in self.query:
            return self.query[name]
        lower = name.lower()
        for key, value in self.query.items():
            if key.lower() == lower:
                return value
        return default

    def cookie(self, name: str) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just no cookie
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""
    kind: str = ""  # xml / json / jpeg / multipart: which body faults apply

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self

    def chunks(self) -> Iterator[bytes]:
        if isinstance(self.body, bytes):
            if self.body:
                yield self.body
        else:
            yield from self.body


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def xml_response(body: str | Iterable[bytes], status: int = 200) -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Response(status, [("Content-Type", "text/xml; charset=utf-8")], data, "xml")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, [("Content-Type", "application/json; charset=utf-8")],
                    json.dumps(payload, separators=(",", ":")).encode(), "json")


def odata_error(status: int, message: str, code: str | None = None) -> Response:
    """OData JSON error body: `{"error": {"code": ..., "message": ...}}`."""
    return json_response({"error": {"code": code or str(status), "message": message}}, status)
