"""Streaming splitter for GetObject `multipart/parallel` bodies, tolerant of real servers.

Seen in the wild and handled: quoted and unquoted boundaries, a missing preamble CRLF, LF-only
line ends, `Name:value` without a space, header names in any case, header lines continued
without leading whitespace, repeated headers (RETS 1.8 `ObjectData`), empty parts, and a body
cut short before the closing boundary. Only one part is buffered at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))""", re.I)


def boundary_of(content_type: str | None) -> str | None:
    """The multipart boundary from a Content-Type header, or None when it is not multipart."""
    if not content_type or "multipart" not in content_type.lower():
        return None
    m = _BOUNDARY.search(content_type)
    return (m.group(1) or m.group(2)) if m else None


@dataclass
class Part:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """Header lines -> (name, value) pairs; a line without a colon continues the previous value."""
    out: list[tuple[str, str]] = []
    for raw in re.split(rb"\r?\n", block):
        line = raw.decode("latin-1")
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if sep and name and not name[0].isspace() and " " not in name.strip():
            out.append((name.strip(), value.strip()))
        elif out:
            prev_name, prev_value = out[-1]
            out[-1] = (prev_name, f"{prev_value} {line.strip()}".strip())
    return out


def parse_part(raw: bytes) -> Part:
    """One part's bytes (between boundaries) -> headers and body."""
    if raw.startswith(b"\r\n"):
        return Part([], raw[2:])
    if raw.startswith(b"\n"):
        return Part([], raw[1:])
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) != -1]
    if not ends:
        return Part(parse_headers(raw), b"")
    at, width = min(ends)
    return Part(parse_headers(raw[:at]), raw[at + width:])


def iter_parts(chunks: Iterable[bytes], boundary: str) -> Iterator[Part]:
    """Yield each part as soon as the boundary after it has arrived."""
    delim = b"--" + boundary.encode("latin-1")
    buf = b""
    started = False
    scan_from = 0
    for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        while True:
            at = buf.find(delim, scan_from)
            if at == -1:
                scan_from = max(0, len(buf) - len(delim))
                break
            # A delimiter must start a line (or the body); otherwise it is payload that happens to match.
            if at > 0 and buf[at - 1:at] != b"\n":
                scan_from = at + 1
                continue
            after = at + len(delim)
            line_end = buf.find(b"\n", after)
            closing = buf[after:after + 2] == b"--"
            if line_end == -1 and not closing:
                scan_from = at  # the delimiter line is not complete yet
                break
            content = buf[:at]
            if content.endswith(b"\r\n"):
                content = content[:-2]
            elif content.endswith(b"\n"):
                content = content[:-1]
            if started:
                yield parse_part(content)
            started = True
            if closing:
                return
            buf = buf[line_end + 1:] if line_end != -1 else b""
            scan_from = 0
    if started and buf.strip():
        # Truncated: no closing delimiter. Keep what arrived; a damaged image fails later, visibly.
        yield parse_part(buf.rstrip(b"\r\n") if buf.endswith(b"\r\n") else buf)
