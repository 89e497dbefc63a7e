"""The mock speaks real RETS: an off-the-shelf client (PyPI `rets`) and raw requests against it."""

from __future__ import annotations

import hashlib
import io

import pytest
import requests
import rets
from PIL import Image
from requests.auth import HTTPBasicAuth, HTTPDigestAuth

from mock_mls import MockMLS
from mock_mls.fields import RETS_FIELDS
from tests.integration.mock_fixtures import mock_mls_fixtures, rets_login

pytestmark = pytest.mark.integration
mls, _clean = mock_mls_fixtures(listings=1500, seed=7, photos_per_listing=3, row_cap=500)


def search(s: requests.Session, mls: MockMLS, **params: str) -> requests.Response:
    base = {"SearchType": "Property", "Class": "RE_1", "QueryType": "DMQL2", "Format": "COMPACT",
            "Query": "(LIST_22=0+)"}
    return s.post(f"{mls.url}/rets/search", data={**base, **params})


def test_pypi_rets_client_logs_in_searches_decoded_and_fetches_photos(mls: MockMLS) -> None:
    c = mls.credentials
    session = rets.Session(mls.rets_login_url, c["username"], c["password"], user_agent=c["user_agent"])
    session.login()
    assert session.version == "RETS/1.7.2"
    assert session.get_system_metadata()["timezone_offset"] == "-05:00"
    rows = list(session.search("Property", "RE_1", dmql_query="(LIST_15=|ACT,PND)", limit=1200))
    # the client follows <MAXROWS/> with Offset on its own: 500-row cap, more than 500 rows back
    assert 500 < len(rows) <= 1200
    assert {r["LIST_15"] for r in rows} == {"Active", "Pending"}  # COMPACT-DECODED long values
    # ...but it sends Offset as if 0-based (Offset=500 after 500 rows): a 1-based server repeats row 500.
    unique = {r["LIST_1"] for r in rows}
    assert len(rows) == len(unique) + 1
    assert len(unique) == sum(mls.listing(k)["StandardStatus"] in ("Active", "Pending") for k in mls.all_keys())
    key = rows[0]["LIST_1"]
    photos = list(session.get_object("Property", "Photo", key))
    assert [p["object_id"] for p in photos] == ["1", "2", "3"]
    assert photos[0]["preferred"] == "1"
    assert Image.open(io.BytesIO(photos[1]["content"])).format == "JPEG"
    located = list(session.get_object("Property", "Photo", key, object_ids="2", location=1))
    assert requests.get(located[0]["location"], timeout=10).content == photos[1]["content"]
    session.logout()


def test_login_capabilities_mix_relative_and_absolute_urls(mls: MockMLS) -> None:
    s = rets_login(mls)
    r = s.get(mls.rets_login_url)
    assert r.headers["RETS-Version"] == "RETS/1.7.2"
    assert "Search=/rets/search" in r.text and f"GetMetadata={mls.url}/rets/getmetadata" in r.text
    assert requests.get(f"{mls.url}/rets/search", timeout=10).status_code == 401  # no session cookie
    bad = requests.get(mls.rets_login_url, auth=HTTPDigestAuth("mockuser", "wrong"), timeout=10)
    assert bad.status_code == 401


def test_basic_auth_when_configured(mls: MockMLS) -> None:
    mls.configure(auth="basic")
    r = requests.get(mls.rets_login_url, auth=HTTPBasicAuth("mockuser", "mockpass"), timeout=10)
    assert r.status_code == 200 and "RETS-Session-ID" in r.cookies
    assert requests.get(mls.rets_login_url, timeout=10).headers["WWW-Authenticate"].startswith("Basic")


def ua_header(mls: MockMLS, session_id: str, version: str = "RETS/1.7.2") -> str:
    c = mls.credentials
    a1 = hashlib.md5(f"{c['user_agent']}:{c['ua_password']}".encode(), usedforsecurity=False).hexdigest()
    return "Digest " + hashlib.md5(f"{a1}::{session_id}:{version}".encode(), usedforsecurity=False).hexdigest()


def test_ua_authorization_required(mls: MockMLS) -> None:
    mls.configure(require_ua_auth=True)
    ua = mls.credentials["user_agent"]
    headers = {"User-Agent": ua, "RETS-Version": "RETS/1.7.2", "RETS-UA-Authorization": ua_header(mls, "")}
    s = rets_login(mls, headers)
    sid = s.cookies["RETS-Session-ID"]
    assert search(s, mls, Limit="1").status_code == 401  # still the pre-login digest
    s.headers["RETS-UA-Authorization"] = ua_header(mls, sid)
    assert 'ReplyCode="0"' in search(s, mls, Limit="1").text
    s.headers["RETS-UA-Authorization"] = ua_header(mls, sid, "1.7.2")  # version without RETS/ is wrong
    r = search(s, mls, Limit="1")
    assert r.status_code == 401 and "20037" in r.text


def test_compact_shape_count_limit_offset_and_maxrows(mls: MockMLS) -> None:
    s = rets_login(mls)
    r = search(s, mls, Count="1", Select="LIST_1,LIST_15,LIST_87", Limit="NONE")
    text = r.text
    assert '<DELIMITER value="09" />' in text and "<COLUMNS>\tLIST_1\tLIST_15\tLIST_87\t</COLUMNS>" in text
    assert text.count("<DATA>") == 500 and "<MAXROWS />" in text
    assert '<COUNT Records="1500" />' in text
    first_keys = [line.split("\t")[1] for line in text.splitlines() if line.startswith("<DATA>")]
    assert first_keys == sorted(first_keys)
    page2 = search(s, mls, Select="LIST_1", Limit="10", Offset="501").text
    assert "<MAXROWS />" in page2  # Limit cut it: more rows match
    keys2 = [line.split("\t")[1] for line in page2.splitlines() if line.startswith("<DATA>")]
    assert keys2[0] > first_keys[-1] and len(keys2) == 10
    last = search(s, mls, Select="LIST_1", Limit="10", Offset="1496").text
    assert last.count("<DATA>") == 5 and "<MAXROWS" not in last
    exact = search(s, mls, Select="LIST_1", Limit="5", Offset="1496").text
    assert exact.count("<DATA>") == 5 and "<MAXROWS" not in exact  # nothing after the fifth
    assert search(s, mls, Count="2").text.count("<DATA>") == 0
    assert 'ReplyCode="20201"' in search(s, mls, Query="(LIST_39=Nowhere)").text
    row = search(s, mls, Select="LIST_15,LIST_87", Limit="1", Format="COMPACT").text
    code, stamp = row.split("<DATA>")[1].split("\t")[1:3]
    assert code in {"ACT", "AUC", "CAN", "CLS", "CS", "DEL", "EXP", "HLD", "INC", "PND", "WDN"}
    assert "Z" not in stamp and "+" not in stamp  # local time, no zone


def test_a_client_paging_on_maxrows_alone_gets_every_row(mls: MockMLS) -> None:
    """The way PHRETS-style clients page: the same Limit, Offset moved on, until no <MAXROWS/>."""
    s = rets_login(mls)
    keys: list[str] = []
    for _ in range(40):
        text = search(s, mls, Select="LIST_1", Limit="100", Offset=str(len(keys) + 1)).text
        keys += [line.split("\t")[1] for line in text.splitlines() if line.startswith("<DATA>")]
        if "<MAXROWS" not in text:
            break
    assert len(keys) == len(set(keys)) == 1500  # stopped after 100 rows when only the cap set MAXROWS
    assert keys == mls.all_keys()


def test_server_quirks_key_only_pages_quiet_caps_and_production_width(mls: MockMLS) -> None:
    """key_only_cap: a Select of key-index fields only gets larger replies; rets_count /
    rets_maxrows off: a capped reply says nothing of the rows after it; extra_fields: full-record
    replies and METADATA-TABLE carry production-width rows, a Select does not."""
    s = rets_login(mls)
    mls.configure(key_only_cap=1200)
    assert search(s, mls, Select="LIST_1,LIST_87", Limit="5000").text.count("<DATA>") == 1200
    assert search(s, mls, Select="LIST_1,LIST_22", Limit="5000").text.count("<DATA>") == 500  # a price: no index
    mls.configure(rets_count=False, rets_maxrows=False)
    quiet = search(s, mls, Select="LIST_1,LIST_22", Count="1", Limit="5000").text
    assert quiet.count("<DATA>") == 500 and "<COUNT" not in quiet and "<MAXROWS" not in quiet
    mls.configure(extra_fields=150)
    full = search(s, mls, Limit="3").text
    columns = full.split("<COLUMNS>")[1].split("</COLUMNS>")[0].strip("\t").split("\t")
    rows = [line[len("<DATA>\t"):-len("\t</DATA>")].split("\t")
            for line in full.splitlines() if line.startswith("<DATA>")]
    width = len(RETS_FIELDS) + 150
    assert len(columns) == width and columns[-1] == "X_150" and {len(r) for r in rows} == {width}
    assert len(full) / 3 > 1800  # ~2 KB a row, as production rows run, against ~530 for the mock's own 45
    again = search(s, mls, Limit="3").text
    assert again == full  # the same listing's extra values every time
    assert "X_001" not in search(s, mls, Select="LIST_1,LIST_87", Limit="3").text
    table = s.get(f"{mls.url}/rets/getmetadata", params={"Type": "METADATA-TABLE", "ID": "Property:RE_1",
                                                         "Format": "COMPACT"}, timeout=10).text
    assert "\tX_150\t" in table


def test_offset_modes(mls: MockMLS) -> None:
    s = rets_login(mls)
    page = search(s, mls, Select="LIST_1", Limit="5", Offset="6").text
    mls.configure(offset_mode="ignore")
    assert search(s, mls, Select="LIST_1", Limit="5", Offset="6").text == search(
        s, mls, Select="LIST_1", Limit="5").text != page
    mls.configure(offset_mode="reject")
    assert 'ReplyCode="20203"' in search(s, mls, Select="LIST_1", Limit="5", Offset="6").text


def test_bad_queries_get_rets_errors(mls: MockMLS) -> None:
    s = rets_login(mls)
    assert 'ReplyCode="20203"' in search(s, mls, Query="(NOPE=1)").text
    assert 'ReplyCode="20206"' in search(s, mls, Query="LIST_22=1").text
    assert 'ReplyCode="20202"' in search(s, mls, Select="LIST_1,NOPE").text
    by_get = s.get(f"{mls.url}/rets/search", params={"Query": "(LIST_1=2*)", "SearchType": "Property",
                                                       "Class": "RE_1", "Limit": "1"})
    assert 'ReplyCode="0"' in by_get.text and by_get.text.count("<DATA>") == 1


def test_standard_names_in_query_select_and_columns(mls: MockMLS) -> None:
    s = rets_login(mls)
    text = search(s, mls, StandardNames="1", Query="(MlsStatus=|ACT),(PhotoModificationTimestamp=2000-01-01+)",
                  Select="ListingKey,PhotosChangeTimestamp", Limit="2").text
    assert "<COLUMNS>\tListingKey\tPhotoModificationTimestamp\t</COLUMNS>" in text and text.count("<DATA>") == 2
    assert 'ReplyCode="20202"' in search(s, mls, StandardNames="1", Query="(ListPrice=0+)", Select="LIST_1").text


def test_metadata_compact_and_standard_xml(mls: MockMLS) -> None:
    s = rets_login(mls)
    url = f"{mls.url}/rets/getmetadata"
    table = s.get(url, params={"Type": "METADATA-TABLE", "ID": "Property:RE_1", "Format": "COMPACT"}).text
    assert "<COLUMNS>\tMetadataEntryID\tSystemName\tStandardName" in table
    assert "\tLIST_15\tLIST_15\tMlsStatus\tStatus\t" in table and "\tLookup\t" in table
    assert "PhotoModificationTimestamp" in table
    lookups = s.get(url, params={"Type": "METADATA-LOOKUP_TYPE", "ID": "Property:*", "Format": "COMPACT"}).text
    assert 'Lookup="ListingStatus"' in lookups and "\tPND\tPending\t" in lookups
    xml = s.get(url, params={"Type": "METADATA-TABLE", "ID": "0", "Format": "STANDARD-XML"}).text
    assert "<METADATA>" in xml and "<SystemName>GF21</SystemName>" in xml
    assert "<Interpretation>LookupMulti</Interpretation>" in xml
    system = s.get(url, params={"Type": "METADATA-SYSTEM", "ID": "*", "Format": "COMPACT"}).text
    assert 'TimeZoneOffset="-05:00"' in system


def test_getobject_multipart_single_location_and_missing(mls: MockMLS) -> None:
    s = rets_login(mls)
    k1, k2 = mls.all_keys()[:2]
    url = f"{mls.url}/rets/getobject"
    multi = s.get(url, params={"Resource": "Property", "Type": "Photo", "ID": f"{k1}:*,{k2}:*"})
    assert multi.headers["Content-Type"].startswith("multipart/parallel")
    assert multi.content.count(b"Content-ID: ") == 6 and multi.content.count(b"\xff\xd8") >= 6
    some = s.get(url, params={"Type": "Photo", "ID": f"{k1}:1,3"}).content
    assert b"Object-ID: 1" in some and b"Object-ID: 3" in some and b"Object-ID: 2" not in some
    single = s.get(url, params={"Type": "Photo", "ID": f"{k1}:2"})
    assert single.headers["Content-Type"] == "image/jpeg" and single.headers["Object-ID"] == "2"
    assert single.headers["Content-Description"] and single.content[:2] == b"\xff\xd8"
    loc = s.get(url, params={"Type": "Photo", "ID": f"{k1}:*", "Location": "1"})
    assert loc.content.count(b"Location: http://127.0.0.1") == 3 and b"\xff\xd8" not in loc.content
    assert 'ReplyCode="20403"' in s.get(url, params={"Type": "Photo", "ID": "nope:*"}).text
    mixed = s.get(url, params={"Type": "Photo", "ID": f"{k1}:1:9"}).content
    assert b"Object-ID: 9\r\nContent-Type: text/xml" in mixed and b"20403" in mixed


def test_session_idle_expiry_then_relogin(mls: MockMLS) -> None:
    mls.configure(session_idle_seconds=60)
    s = rets_login(mls)
    assert search(s, mls, Limit="1").status_code == 200
    mls.advance_clock(120)
    r = search(s, mls, Limit="1")
    assert r.status_code == 200 and 'ReplyCode="20037"' in r.text
    mls.configure(expired_session_reply="401")
    s = rets_login(mls)
    mls.advance_clock(120)
    assert search(s, mls, Limit="1").status_code == 401
    assert s.get(mls.rets_login_url).status_code == 200
    assert 'ReplyCode="0"' in search(s, mls, Limit="1").text


def test_mutations_show_up_in_rets(mls: MockMLS) -> None:
    s = rets_login(mls)
    changed = mls.mutate(status=3, remove=2)
    for key in changed["status"]:
        text = search(s, mls, Query=f"(LIST_1={key})", Select="LIST_15", Format="COMPACT-DECODED").text
        assert mls.listing(key)["MlsStatus"] in text
    for key in changed["remove"]:
        assert 'ReplyCode="20201"' in search(s, mls, Query=f"(LIST_1={key})").text
