"""RETS the way production servers send it (issue 17), through the real client over HTTP.

The mock switches each quirk on: a photo host on another origin that records the headers it gets,
`&amp;` in Location URLs, Location parts that are text/xml RETS replies, empty multipart parts,
Content-IDs that are not the asked key, rows without a key, records without a modification time,
a Logout URL given as the login URL, and GetMetadata's whole tree and reply codes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from mls_sync.sources.base import MismatchError, QueryError, SearchCriteria, SourceFields
from mls_sync.sources.rets.metadata import parse_metadata
from PIL import Image

from devstack import ROOT, mls_connections
from tests.integration.dagrun import scalar
from tests.integration.mock_fixtures import rets_login
from tests.integration.test_rets_source import source, walk_keys

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


# -- 5: credentials only to the login URL's origin ----------------------------------------------------
@pytest.mark.parametrize("auth", ["digest", "basic"])
@pytest.mark.parametrize("host", ["other port", "other name"])
def test_photo_urls_on_another_origin_get_no_credentials_or_cookies(mock_mls_factory: Any, auth: str,
                                                                    host: str) -> None:
    mls = mock_mls_factory(listings=30, seed=2, photos_per_listing=3, media_host=True, auth=auth)
    if host == "other name":  # same port, another host name: another origin all the same
        mls.configure(rets_location_base=f"http://localhost:{mls.port}")
    keys = mls.active_keys()[:3]
    src = source(mls, photo_location=True, photos_per_request=2)
    assert decoded(list(src.photos(keys))) == {k: [0, 1, 2] for k in keys}
    seen = list(mls.photo_requests)
    assert len(seen) == 9
    want = f"127.0.0.1:{mls.media_port}" if host == "other port" else f"localhost:{mls.port}"
    assert {h["host"] for h in seen} == {want}
    assert not [h for h in seen if "authorization" in h or "cookie" in h]
    assert mls.counters()["photo_requests_with_credentials"] == 0
    assert src.stats["requests"]["GetObject"] == 2  # the RETS requests themselves still authenticate


def test_photo_urls_on_the_login_origin_keep_the_session(mock_mls_factory: Any) -> None:
    """The control: the recorder does see credentials when the photos are on the RETS host itself."""
    mls = mock_mls_factory(listings=20, seed=2, photos_per_listing=2)
    key = mls.active_keys()[0]
    src = source(mls, photo_location=True)
    assert decoded(list(src.photos([key]))) == {key: [0, 1]}
    assert all("RETS-Session-ID=" in h.get("cookie", "") for h in mls.photo_requests)


def test_a_trusted_origin_gets_the_credentials(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=20, seed=2, photos_per_listing=2, media_host=True)
    src = source(mls, photo_location=True, extra={"trusted_origins": [mls.media_url + "/photos/"]})
    key = mls.active_keys()[0]
    assert decoded(list(src.photos([key]))) == {key: [0, 1]}
    assert all("RETS-Session-ID=" in h.get("cookie", "") for h in mls.photo_requests)


# -- 10: a login URL that is not Login --------------------------------------------------------------------
def test_a_logout_url_given_as_the_login_url_says_so(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=10, seed=1, photos_per_listing=1)
    r = _cli("check", *_explicit(mls, login_url=f"{mls.url}/rets/logout"))
    assert r.returncode == 2, r.stderr
    assert "probably not the RETS Login transaction" in r.stderr and "granted neither" not in r.stderr
    assert mls.credentials["password"] not in r.stderr


# -- 6: &amp; in Location URLs; Location parts as text/xml replies --------------------------------------
@pytest.mark.parametrize("xml_parts", [False, True])
def test_xml_escaped_location_urls_are_unescaped(mock_mls_factory: Any, xml_parts: bool) -> None:
    mls = mock_mls_factory(listings=30, seed=4, photos_per_listing=3, media_host=True)
    mls.configure(rets_location_escape=True, rets_location_xml=xml_parts)
    keys = mls.active_keys()[:2]
    s = rets_login(mls)
    raw = s.get(f"{mls.url}/rets/getobject", params={"Type": "Photo", "ID": f"{keys[0]}:*", "Location": "1"},
                timeout=10)
    assert b"&amp;sig=" in raw.content
    assert (b"Content-Type: text/xml" in raw.content) is xml_parts
    verbatim = raw.content.split(b"Location: ")[1].split(b"\r\n")[0].decode()
    assert requests.get(verbatim, timeout=10).status_code == 400  # what the old client got
    photos = list(source(mls, photo_location=True).photos(keys))
    assert decoded(photos) == {k: [0, 1, 2] for k in keys}
    assert all(urlsplit(p.url).query.startswith("expires=") and "&sig=" in p.url and "amp;" not in p.url
               for p in photos)


# -- 9: Content-IDs that are not the asked key; empty and error parts ------------------------------------
@pytest.mark.parametrize("per_request", [1, 20])
def test_objects_labelled_with_another_id_are_filed_under_the_asked_listing(
        mock_mls_factory: Any, per_request: int, caplog: pytest.LogCaptureFixture) -> None:
    mls = mock_mls_factory(listings=40, seed=6, photos_per_listing=3)
    mls.configure(rets_content_id="other")
    keys = mls.active_keys()[:4]
    src = source(mls, photos_per_request=per_request)
    with caplog.at_level(logging.WARNING, logger="mls_sync.sources.rets"):
        photos = list(src.photos(keys))
    assert decoded(photos) == {k: [0, 1, 2] for k in keys}
    # several listings asked at once: the labels cannot say whose objects are whose, so each
    # listing is asked again alone; one asked alone: its objects are its own whatever the label
    assert src.stats["requests"]["GetObject"] == (4 if per_request == 1 else 1 + 4)
    assert "Content-ID 'SYS" in caplog.text


@pytest.mark.parametrize("per_request", [1, 3])
def test_empty_parts_do_not_hide_the_objects_after_them(mock_mls_factory: Any, per_request: int) -> None:
    mls = mock_mls_factory(listings=30, seed=7, photos_per_listing=3)
    mls.configure(rets_empty_parts=True)
    keys = mls.active_keys()[:3]
    photos = list(source(mls, photos_per_request=per_request).photos(keys))
    assert decoded(photos) == {k: [0, 1, 2] for k in keys}


def test_an_empty_or_error_object_is_reported_alone(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=30, seed=7, photos_per_listing=3)
    mls.configure(rets_empty_parts=True)
    a, b, c = mls.active_keys()[:3]
    mls.fault("empty_part", listing_key=a, order=0)
    mls.fault("error_part", listing_key=b, order=2, code=20409)
    photos = list(source(mls, photos_per_request=3).photos([a, b, c]))
    got = {(p.listing_key, p.order): p for p in photos}
    assert len(got) == 9 == len(photos)
    assert "empty part" in got[(a, 0)].error and "20409" in got[(b, 2)].error
    assert decoded([p for p in photos if p.error is None]) == {a: [1, 2], b: [0, 1], c: [0, 1, 2]}


# -- 7: rows without the key -----------------------------------------------------------------------------
def test_rows_without_the_configured_key_column_are_an_error_naming_the_columns(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=40, seed=3, photos_per_listing=1)
    src = source(mls)
    src.fields = SourceFields(key="ListingKey", modified="LIST_87")  # a class that names its key LIST_1
    with pytest.raises(MismatchError) as info:
        list(src.pages(SearchCriteria(raw_query="(LIST_15=|ACT)")))
    assert "no ListingKey column" in str(info.value) and "LIST_1" in str(info.value)


def test_cli_search_with_a_wrong_key_field_exits_2_instead_of_0_records(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=40, seed=3, photos_per_listing=1)
    r = _cli("search", *_explicit(mls), "--key-field", "ListingKey", "--modified-field", "LIST_87",
             "--query", "(LIST_15=|ACT)")
    assert r.returncode == 2 and r.stdout == ""
    assert "no ListingKey column" in r.stderr and "LIST_1, " in r.stderr and "Traceback" not in r.stderr


def test_cli_search_reports_rows_with_an_empty_key(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=40, seed=3, photos_per_listing=1)
    mls.configure(rets_keyless=mls.all_keys()[5:8])
    r = _cli("search", *_explicit(mls), "--key-field", "LIST_1", "--modified-field", "LIST_87")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 40 and sum(not row["LIST_1"] for row in rows) == 3
    assert "3 of 40 records have no LIST_1" in r.stderr


def test_a_sync_counts_rows_with_an_empty_key_as_rejected(mock_mls_factory: Any, db: Any, db_url: str) -> None:
    mls = mock_mls_factory(listings=120, seed=9, photos_per_listing=1)
    damaged = mls.active_keys()[:3]
    mls.configure(rets_keyless=damaged)
    r = _cli("sync", "--provider", "demo_rets", "--no-photos", env=_sync_env(mls, db_url))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["state"] == "success" and result["failed"] == 3
    assert scalar(db, "SELECT count(*) FROM properties WHERE listing_key = ANY(:k)", k=damaged) == 0
    assert scalar(db, "SELECT message FROM mls_sync_errors WHERE stage = 'fetch'") == \
        "3 record(s) without LIST_1 on page 1"


# -- 8: no time clause nobody asked for; records without a modification time ------------------------------
@pytest.mark.parametrize("offset_mode", ["honour", "ignore"])
def test_a_full_sync_keeps_records_without_a_modification_time(mock_mls_factory: Any, db: Any, db_url: str,
                                                               offset_mode: str, tmp_path: Any) -> None:
    """Offset paging sends no time clause; window paging (Offset ignored) asks for them at the end.
    The demo mapping requires LIST_87 (it would reject them, logged); this copy does not."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    yaml = (ROOT / "include/mappings/demo_rets.yaml").read_text()
    (mappings / "demo_rets.yaml").write_text(yaml.replace(
        "LIST_87: {column: mls_modified_at, type: timestamp, required: true}",
        "LIST_87: {column: mls_modified_at, type: timestamp}"))
    mls = mock_mls_factory(listings=300, seed=9, photos_per_listing=1)
    mls.configure(row_cap=100, offset_mode=offset_mode)
    blank = mls.mutate(blank_modified=40)["blank_modified"]
    wanted = {"Active", "ActiveUnderContract", "ComingSoon", "Pending"}  # the YAML's full_sync_statuses
    expected = {k for k in mls.all_keys() if mls.listing(k)["StandardStatus"] in wanted}
    blank_expected = sorted(set(blank) & expected)
    assert blank_expected
    r = _cli("sync", "--provider", "demo_rets", "--no-photos", "--mode", "full",
             env={**_sync_env(mls, db_url), "MLS_MAPPINGS_DIR": str(mappings)})
    assert r.returncode == 0, r.stderr
    assert set(scalar(db, "SELECT array_agg(listing_key) FROM properties") or []) == expected
    assert scalar(db, "SELECT count(*) FROM properties WHERE listing_key = ANY(:k) AND mls_modified_at IS NULL",
                  k=blank_expected) == len(blank_expected)


def test_an_unfiltered_walk_sends_no_time_clause(mock_mls_factory: Any) -> None:
    mls = mock_mls_factory(listings=60, seed=9, photos_per_listing=1)
    blank = mls.mutate(blank_modified=6)["blank_modified"]
    src = source(mls)
    assert sorted(walk_keys(src)) == mls.all_keys() and set(blank) <= set(mls.all_keys())


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
        src._get_metadata("CLASS", "Tax")  # Agent, Office and OpenHouse exist: the roster
    s = rets_login(mls)
    url = f"{mls.url}/rets/getmetadata"
    fk = s.get(url, params={"Type": "METADATA-FOREIGNKEYS", "ID": "0"}, timeout=10).text
    assert "<METADATA-FOREIGNKEYS" in fk and "\tForeignKeyID\tParentResourceID\t" in fk
    help_ = s.get(url, params={"Type": "METADATA-SEARCH_HELP", "ID": "Property"}, timeout=10).text
    assert 'ReplyCode="20503"' in help_
    reply, items = parse_metadata(s.get(url, params={"Type": "METADATA-SYSTEM", "ID": "*"}, timeout=10).content)
    assert reply.code == 0 and "FOREIGNKEYS" not in items  # an empty block: parsed as no rows
