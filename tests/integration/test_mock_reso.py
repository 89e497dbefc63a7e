"""RESO Web API of the mock: OAuth2, OData queries, the keyset replication walk, MlgCanView."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests

from mock_mls import MockMLS
from tests.integration.mock_fixtures import mock_mls_fixtures

pytestmark = pytest.mark.integration
mls, _clean = mock_mls_fixtures(listings=2000, seed=7, photos_per_listing=2, max_page_size=500)


def token(mls: MockMLS) -> dict[str, str]:
    c = mls.credentials
    r = requests.post(mls.token_url, data={"grant_type": "client_credentials", "client_id": c["client_id"],
                                           "client_secret": c["client_secret"]}, timeout=10)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def get(mls: MockMLS, headers: dict[str, str], path: str = "/Property", **params: Any) -> requests.Response:
    return requests.get(mls.reso_url + path, params=params, headers=headers, timeout=10)


def test_bearer_auth_and_expiry(mls: MockMLS) -> None:
    r = requests.get(mls.reso_url + "/Property", timeout=10)
    assert r.status_code == 401 and "bearer" in r.json()["error"]["message"].lower()
    bad = requests.post(mls.token_url, data={"grant_type": "client_credentials", "client_id": "x",
                                             "client_secret": "y"}, timeout=10)
    assert bad.status_code == 401
    mls.configure(token_ttl_seconds=30)
    h = token(mls)
    assert get(mls, h, **{"$top": 1}).status_code == 200
    mls.advance_clock(31)
    expired = get(mls, h, **{"$top": 1})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


def test_replication_walk_keyset_returns_every_listing_once(mls: MockMLS) -> None:
    h = token(mls)
    cluster = max(Counter(
        mls.listing(k)["ModificationTimestamp"] for k in mls.all_keys()).values())
    top = 300
    assert cluster > top  # the bulk-update cluster is bigger than a page
    seen: list[str] = []
    cursor: tuple[str, str] | None = None
    while True:
        params: dict[str, Any] = {"$orderby": "ModificationTimestamp,ListingKey", "$top": top,
                                  "$select": "ListingKey,ModificationTimestamp"}
        if cursor:
            params["$filter"] = (f"ModificationTimestamp gt {cursor[0]} or "
                                 f"(ModificationTimestamp eq {cursor[0]} and ListingKey gt '{cursor[1]}')")
        page = get(mls, h, **params).json()["value"]
        if not page:
            break
        seen += [r["ListingKey"] for r in page]
        cursor = (page[-1]["ModificationTimestamp"], page[-1]["ListingKey"])
    assert len(seen) == len(set(seen)) and sorted(seen) == mls.all_keys()


def test_next_link_walk_returns_every_listing_once(mls: MockMLS) -> None:
    h = token(mls)
    url: str | None = mls.reso_url + "/Property?$orderby=ModificationTimestamp,ListingKey&$count=true"
    seen: list[str] = []
    pages = 0
    while url:
        body = requests.get(url, headers=h, timeout=10).json()
        if pages == 0:
            assert body["@odata.count"] == 2000
        pages += 1
        assert len(body["value"]) <= 500  # server page cap
        seen += [r["ListingKey"] for r in body["value"]]
        url = body.get("@odata.nextLink")
    assert pages == 4 and sorted(seen) == mls.all_keys()


def test_select_orderby_expand_filters(mls: MockMLS) -> None:
    h = token(mls)
    body = get(mls, h, **{"$select": "ListingKey,ListPrice", "$orderby": "ListPrice desc", "$top": 5,
                          "$filter": "StandardStatus in ('Active','Pending') and City ne 'Austin'"}).json()
    prices = [r["ListPrice"] for r in body["value"]]
    assert prices == sorted(prices, reverse=True) and set(body["value"][0]) == {"ListingKey", "ListPrice"}
    one = get(mls, h, **{"$top": 1, "$expand": "Media"}).json()["value"][0]
    assert [m["Order"] for m in one["Media"]] == [0, 1]
    assert one["ModificationTimestamp"].endswith("Z")
    photo = requests.get(one["Media"][0]["MediaURL"], timeout=10)
    assert photo.headers["Content-Type"] == "image/jpeg" and photo.content[:2] == b"\xff\xd8"
    media = get(mls, h, "/Media", **{"$filter": f"ResourceRecordKey eq '{one['ListingKey']}'",
                                     "$orderby": "Order"}).json()["value"]
    assert [m["MediaKey"] for m in media] == [m["MediaKey"] for m in one["Media"]]
    entity = get(mls, h, f"/Property('{one['ListingKey']}')").json()
    assert entity["ListingKey"] == one["ListingKey"]
    for bad in ({"$filter": "Nope eq 1"}, {"$select": "Nope"}, {"$orderby": "Nope"}, {"$filter": "ListPrice eq"}):
        r = get(mls, h, **bad)
        assert r.status_code == 400 and r.json()["error"]["message"]
    assert "EntityType Name=\"Property\"" in get(mls, h, "/$metadata").text


def test_mutations_change_what_reso_serves(mls: MockMLS) -> None:
    h = token(mls)
    before = {k: mls.listing(k) for k in mls.all_keys()}
    changed = mls.mutate(price=3, status=3, photo=3, new=2, remove=2, touch=5)
    assert all(len(changed[k]) == n for k, n in
               {"price": 3, "status": 3, "photo": 3, "new": 2, "remove": 2, "touch": 5}.items())
    latest = max(r["ModificationTimestamp"] for r in before.values())
    recent = get(mls, h, **{"$filter": f"ModificationTimestamp gt {latest}", "$top": 100}).json()["value"]
    got = {r["ListingKey"] for r in recent}
    expected = set().union(*(changed[k] for k in ("price", "status", "photo", "new", "touch")))
    assert got == expected
    for key in changed["price"]:
        assert next(r for r in recent if r["ListingKey"] == key)["ListPrice"] != before[key]["ListPrice"]
    for key in changed["status"]:
        old, new = before[key]["StandardStatus"], mls.listing(key)["StandardStatus"]
        assert (old, new) in {("Active", "Pending"), ("ComingSoon", "Active"),
                              ("ActiveUnderContract", "Pending"), ("Pending", "Closed")}
        assert mls.listing(key)["StatusChangeTimestamp"] == mls.listing(key)["ModificationTimestamp"]
    for key in changed["photo"]:
        assert mls.listing(key)["PhotosChangeTimestamp"] > before[key]["PhotosChangeTimestamp"]
    for key in changed["remove"]:
        assert get(mls, h, f"/Property('{key}')").status_code == 404
    mls.reset()
    assert mls.all_keys() == sorted(before)


def test_mlg_can_view_keeps_removed_listings(mls: MockMLS) -> None:
    mls.configure(mlg_can_view=True)
    h = token(mls)
    removed = mls.mutate(remove=2)["remove"]
    rows = get(mls, h, **{"$filter": "MlgCanView eq false"}).json()["value"]
    assert sorted(r["ListingKey"] for r in rows) == removed
    assert all(r["MlgCanView"] is False for r in rows)
    assert mls.listing(removed[0])["MlgCanView"] is False


def test_mutate_is_deterministic() -> None:
    with MockMLS(listings=300, seed=3, photos_per_listing=1) as a, \
         MockMLS(listings=300, seed=3, photos_per_listing=1) as b:
        assert a.mutate(price=4, status=4, photo=2, remove=1) == b.mutate(price=4, status=4, photo=2, remove=1)


def test_profiles_change_what_the_service_is(mls: MockMLS) -> None:
    """The RESO profiles over plain HTTP: names, key type, what $top means, Prefer, `in`, one 429."""
    h = token(mls)
    mls.configure(reso_profile="numeric-keys")
    assert get(mls, h, "/$metadata").headers["OData-Version"] == "4.01"
    first = get(mls, h, **{"$top": 450, "$select": "ListingKeyNumeric", "$orderby": "ListingKeyNumeric"})
    assert first.status_code == 200 and [r["ListingKeyNumeric"] for r in first.json()["value"]] == list(range(1, 201))
    link = first.json()["@odata.nextLink"]  # OData's $top: 450 in all, served 200 at a time
    rows, statuses = 200, []
    while link:
        resp = requests.get(link, headers=h, timeout=10)
        statuses.append(resp.status_code)
        if resp.status_code == 429:  # the profile's one 429, on its third query
            assert resp.headers["Retry-After"] == "1"
            continue
        rows += len(resp.json()["value"])
        link = resp.json().get("@odata.nextLink")
    assert rows == 450 and statuses == [200, 429, 200]
    prefer = requests.get(mls.reso_url + "/Property", headers={**h, "Prefer": "odata.maxpagesize=50"}, timeout=10)
    assert len(prefer.json()["value"]) == 50 and prefer.headers["Preference-Applied"] == "odata.maxpagesize=50"
    bad = get(mls, h, **{"$filter": "ListingKeyNumeric eq '7'"})
    assert bad.status_code == 400 and "Invalid literal" in bad.json()["error"]["message"]

    mls.configure(reso_profile="odata-4.0")
    assert get(mls, h, "/Property").status_code == 404
    assert get(mls, h, "/Properties", **{"$filter": "City in ('Austin')"}).status_code == 400
    active = get(mls, h, "/Properties", **{"$filter": "StandardStatus eq Vendor.Data.StandardStatus'"
                                                      "Active_Under_Contract'", "$select": "StandardStatus"})
    assert {r["StandardStatus"] for r in active.json()["value"]} == {"Active_Under_Contract"}
    assert 'EntitySet Name="Properties" EntityType="Vendor.Data.PropertyResi"' in get(mls, h, "/$metadata").text


def test_profile_flag_on_the_command_line() -> None:
    from mock_mls.__main__ import parse_args

    args = parse_args(["--reso-profile", "encoded-enums"])
    assert args.reso_profile == "encoded-enums" and args.max_page_size is None
    with pytest.raises(SystemExit):
        parse_args(["--reso-profile", "nope"])
