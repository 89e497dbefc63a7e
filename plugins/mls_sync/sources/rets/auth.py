"""RETS login facts: the User-Agent digest and the capability list a Login reply carries."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

from lxml import etree

from mls_sync.sources.rets.compact import XmlRepair

# Capability names as the spec spells them; servers vary the case and add spaces around '='.
CAPABILITIES = ("Action", "ChangePassword", "GetObject", "GetMetadata", "GetPayloadList", "Login",
                "LoginComplete", "Logout", "PostObject", "Search", "ServerInformation", "Update")
_CANONICAL = {c.lower(): c for c in CAPABILITIES}


def ua_digest(user_agent: str, ua_password: str, request_id: str, session_id: str, version: str) -> str:
    """RETS-UA-Authorization value (RETS 1.7.2 section 3.10).

    a1 = md5(UserAgent:UAPassword); value = "Digest " + md5(a1:RequestID:SessionID:RETS-Version),
    the version with its "RETS/" prefix and an empty string for a missing request or session id.
    MD5 is what the spec prescribes; it identifies the client, it protects nothing.
    """
    a1 = hashlib.md5(f"{user_agent}:{ua_password}".encode(), usedforsecurity=False).hexdigest()
    digest = hashlib.md5(f"{a1}:{request_id}:{session_id}:{version}".encode(),
                         usedforsecurity=False).hexdigest()
    return f"Digest {digest}"


@dataclass
class LoginInfo:
    """A parsed Login reply: ReplyCode, absolute capability URLs and the other key=value lines."""

    code: int | None
    text: str
    capabilities: dict[str, str] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


def parse_login(body: bytes, login_url: str, charset: str | None = None) -> LoginInfo:
    """Parse `key=value` lines (RETS 1.5-1.7) and `Info=NAME;Type;Value` lines (1.8).

    Capability URLs may be relative to the login URL or point at another host or port; both
    are resolved here so callers only see absolute URLs. A body without a closing `</RETS>`
    (seen in the wild) is still read.
    """
    repaired = XmlRepair(charset).feed(body, final=True)
    root = etree.fromstring(repaired or b"<RETS/>", etree.XMLParser(recover=True, resolve_entities=False,
                                                                   no_network=True))
    if root is None or root.tag != "RETS":
        return LoginInfo(None, "not a RETS reply", {}, {})
    code_text = (root.get("ReplyCode") or "").strip()
    info = LoginInfo(int(code_text) if code_text.lstrip("-").isdigit() else None, root.get("ReplyText") or "")
    for line in "".join(root.itertext()).splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        if key.lower() == "info":
            parts = value.split(";", 2)
            if len(parts) == 3:
                info.info[parts[0].strip()] = parts[2].strip()
            continue
        canonical = _CANONICAL.get(key.lower())
        if canonical and value:
            info.capabilities[canonical] = urljoin(login_url, value)
        else:
            info.info[key] = value
    return info


_VERSION = re.compile(r"RETS/\d+(?:\.\d+)*", re.I)


def normalise_version(value: str | None, default: str = "RETS/1.7.2") -> str:
    """'1.8', 'RETS/1.8.0', 'rets/1.7.2' -> 'RETS/1.8' style, as headers and the UA digest need."""
    if not value:
        return default
    value = value.strip()
    if not value.upper().startswith("RETS/"):
        value = "RETS/" + value
    m = _VERSION.match(value)
    return "RETS/" + m.group(0)[5:] if m else default
