"""RETS the way production servers send it (issue 17), through the real client over HTTP.

The mock switches each quirk on: a photo host on another origin that records the headers it gets,
`&amp;` in Location URLs, Location parts that are text/xml RETS replies, empty multipart parts,
Content-IDs that are not the asked key, rows without a key, records without a modification time,
a Logout URL given as the login URL, and GetMetadata's whole tree and reply codes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import pytest
from mls_sync.sources.base import QueryError
from mls_sync.sources.rets.metadata import parse_metadata
from PIL import Image

from devstack import ROOT, mls_connections
from tests.integration.mock_fixtures import rets_login
from tests.integration.test_rets_source import source

pytestmark = pytest.mark.integration


def decoded(photos: list[Any]) -> dict[str, list[int]]:
    """{listing: [orders]} after checking every photo has JPEG bytes and no error."""
    out: dict[str, list[int]] = {}
    for p in photos:
        assert p.error is None and p.data, (p.listing_key, p.order, p.error)
        with Image.open(io.BytesIO(p.data)) as im:
            im.load()
        out.setdefault(p.listing_key, []).append(p.order)
    return {k: sorted(v) for k, v in out.items()}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mls_sync.cli", *args], capture_output=True, text=True,
                          env=full, timeout=300, cwd=ROOT)


def _explicit(mls: Any, login_url: str | None = None) -> list[str]:
    c = mls.credentials
    return ["--login-url", login_url or mls.rets_login_url, "--username", c["username"], "--password",
            c["password"], "--user-agent", c["user_agent"], "--class", "RE_1", "--attempts", "1"]


def _sync_env(mls: Any, db_url: str) -> dict[str, str]:
    return {**mls_connections(mls.url, mls.credentials), "MLS_DATABASE_URL": db_url}


# -- the mock's GetMetadata as strict as real servers ----------------------------------------------------
def test_metadata_whole_tree_foreign_keys_and_reply_codes(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=10, seed=1, photos_per_listing=1)
    src = source(mls)
    tree = src._get_metadata("SYSTEM", "*")  # what libRETS asks for: everything in one reply
    assert {"SYSTEM", "RESOURCE", "CLASS", "TABLE", "OBJECT", "LOOKUP", "LOOKUP_TYPE"} <= set(tree)
    assert {f["SystemName"] for f in tree["TABLE"]} >= {"LIST_1", "LIST_87", "LIST_15"}
    assert len(tree["LOOKUP_TYPE"]) == len(src._get_metadata("LOOKUP_TYPE", "Property:*")["LOOKUP_TYPE"])
    assert src._get_metadata("SYSTEM", "0").keys() == {"SYSTEM"}
    assert src._get_metadata("FOREIGNKEYS", "0") == {}  # the type exists, with no rows here
    assert src._get_metadata("SEARCH_HELP", "Property") == {}  # 20503: no metadata of that type
    with pytest.raises(QueryError, match="20501"):
        src._get_metadata("NOT_A_TYPE", "0")
    with pytest.raises(QueryError, match="20500"):
        src._get_metadata("CLASS", "Agent")
    s = rets_login(mls)
    url = f"{mls.url}/rets/getmetadata"
    fk = s.get(url, params={"Type": "METADATA-FOREIGNKEYS", "ID": "0"}, timeout=10).text
    assert "<METADATA-FOREIGNKEYS" in fk and "\tForeignKeyID\tParentResourceID\t" in fk
    help_ = s.get(url, params={"Type": "METADATA-SEARCH_HELP", "ID": "Property"}, timeout=10).text
    assert 'ReplyCode="20503"' in help_
    reply, items = parse_metadata(s.get(url, params={"Type": "METADATA-SYSTEM", "ID": "*"}, timeout=10).content)
    assert reply.code == 0 and "FOREIGNKEYS" not in items  # an empty block: parsed as no rows
