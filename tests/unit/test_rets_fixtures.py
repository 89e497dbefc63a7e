"""Recorded RETS replies from shared/fixtures, read as (status, headers, body) + sanity tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shared_fixtures import SHARED_FIXTURES

FIXTURES = SHARED_FIXTURES
LIBRETS = FIXTURES / "librets" / "unit"
FLEX = FIXTURES / "phrets-flexmls" / "Integration" / "Fixtures" / "Http"
FLEX_GET = FLEX / "get" / "retsgw.flexmls.com"

pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason=f"shared RETS fixtures not found at {FIXTURES}: "
                                "lay shared/ beside the checkout or set MLS_SHARED_FIXTURES")


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    found = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := raw.find(sep)) != -1]
    if not found:
        return raw, b""
    at, width = min(found)
    return raw[:at], raw[at + width:]


def _headers(block: bytes) -> list[tuple[str, str]]:
    out = []
    for line in block.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.append((name.strip(), value.strip()))
    return out


def flex(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """A phrets capture: status line, headers, blank line, (already decoded) body."""
    raw = (FLEX / path).read_bytes() if not path.startswith("/") else Path(path).read_bytes()
    head, body = _split_head(raw)
    lines = head.split(b"\n", 1)
    status = int(lines[0].split()[1])
    headers = [(k, v) for k, v in _headers(lines[1] if len(lines) > 1 else b"")
               if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
    return status, headers, body


def librets_txt(name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """A libRETS .txt: status code line, headers, blank line, body."""
    raw = (LIBRETS / name).read_bytes()
    first, rest = raw.split(b"\n", 1)
    if rest.startswith(b"\n"):
        return int(first), [], rest[1:]
    head, body = _split_head(rest)
    return int(first), _headers(head), body


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def flex_multiple1() -> bytes:
    return json.loads((FIXTURES / "phrets-flexmls/Fixtures/GetObject/Multiple1.txt").read_text()).encode("latin-1")


def test_fixture_readers_understand_both_formats() -> None:
    status, headers, body = flex("get/retsgw.flexmls.com/rets2_1_Logout/18f6b7bfb97630b9cdbfd8af1b817310.txt")
    assert status == 200 and header(headers, "RETS-Version") == "RETS/1.7.2" and body.startswith(b"<RETS")
    status, headers, body = librets_txt("get-object-response-single.txt")
    assert status == 200 and header(headers, "Object-ID") == "1" and body.startswith(b"GIF89a")
    assert flex_multiple1().count(b"--FLEXeTNY6TFTGAwV1agjJsFyFogbnfoS1dm6y489g08F2TjwZWzQEW") == 6
