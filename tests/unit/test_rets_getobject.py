"""GetObject replies: multipart quirks, Location parts, error parts, 0/1-based ids, JPEG bytes."""

from __future__ import annotations

import io

import pytest
from mls_sync.sources.rets.getobject import group_by_listing, location_url, split_reply
from mls_sync.sources.rets.multipart import boundary_of, iter_parts, parse_headers
from PIL import Image

from tests.unit.test_rets_fixtures import FLEX_GET, flex, flex_multiple1, header, librets_txt


def parts_of(status_headers_body: tuple, chunk: int = 4096) -> list:
    _, headers, body = status_headers_body
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    return list(split_reply(header(headers, "Content-Type"), headers, chunks))


def photos_of(status_headers_body: tuple, asked: str | None = None) -> list:
    return [p for g in group_by_listing(parts_of(status_headers_body), [asked] if asked else []) for p in g]


def decodes(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


@pytest.mark.parametrize(("value", "want"), [
    ('multipart/parallel; boundary="simple boundary"', "simple boundary"),
    ("multipart/parallel; boundary=abc123;charset=US-ASCII", "abc123"),
    ('Multipart/Parallel; BOUNDARY="x"; charset=utf-8', "x"),
    ("image/jpeg", None)])
def test_boundary(value: str, want: str | None) -> None:
    assert boundary_of(value) == want


def test_flexmls_22_jpegs_decode_at_300x225() -> None:
    capture = flex("get/retsgw.flexmls.com/rets2_1_GetObject/204749e19efea78e43edf1f3333ee44b.txt")
    for size in (1, 100, 65536):  # chunking must not matter
        assert len(parts_of(capture, size)) == 22
    photos = photos_of(capture)
    assert len(photos) == 22
    assert all(decodes(p.data) == (300, 225) for p in photos)
    assert [p.order for p in photos] == list(range(22))  # Object-ID 1.. -> order 0..
    assert photos[0].caption


def test_rapattoni_three_jpegs() -> None:
    photos = photos_of(librets_txt("get-object-response-rapattoni.txt"))
    assert len(photos) == 3 and all(decodes(p.data) for p in photos)
    assert {p.listing_key for p in photos} == {"311602"}


@pytest.mark.parametrize("name", ["get-object-response-cris.txt", "get-object-response-normls.txt"])
def test_damaged_upstream_jpegs_still_split(name: str) -> None:
    parts = parts_of(librets_txt(name))
    assert parts and all(p.body for p in parts)
    if "cris" in name:  # a header continued on a line without a colon
        assert parts[0].get("Description").startswith("Drew's Construction")
        assert "Masterpiece" in parts[0].get("Description")
        assert parts[0].get("Content-Type") == "image/jpeg"
    else:
        assert photos_of(librets_txt(name))[0].order == 0  # Object-ID 0 is the primary


@pytest.mark.parametrize("name", ["get-object-response-multi-location.txt", "get-object-response-multi-malformed.txt"])
def test_location_parts_with_and_without_preamble(name: str) -> None:
    photos = photos_of(librets_txt(name))
    assert [p.url for p in photos] == [f"http://www.example.com/images/abc123/{i}" for i in (1, 2, 3)]
    assert [p.order for p in photos] == [0, 1, 2]
    assert all(p.data is None and p.error is None for p in photos)
    assert photos[1].content_type == "application/octet-stream"  # "Content-type" mixed case
    assert photos[0].caption == "Front view."


def test_phrets_multiple1_location_parts() -> None:
    body = flex_multiple1()
    parts = list(iter_parts([body], "FLEXeTNY6TFTGAwV1agjJsFyFogbnfoS1dm6y489g08F2TjwZWzQEW"))
    assert len(parts) == 5
    assert [p.get("Location") for p in parts] == [f"http://url{i}.jpg" for i in range(1, 6)]
    assert parts[0].get("Preferred") == "1"


def test_rets18_objectdata_and_zero_based_ids() -> None:
    photos = photos_of(librets_txt("get-object-response-multi-rets1-8.txt"))
    assert [p.order for p in photos] == [0, 1, 2, 3, 4, 5]
    assert photos[0].caption == "Caption" and photos[0].modified is not None
    assert photos[0].data.startswith(b"GIF89a") and decodes(photos[0].data) == (15, 15)


def test_single_object_replies() -> None:
    single = photos_of(librets_txt("get-object-response-single.txt"))
    assert len(single) == 1 and single[0].listing_key == "abc123" and single[0].order == 0
    assert decodes(single[0].data) == (15, 15)
    empty = photos_of(librets_txt("get-object-response-single-empty-headers.txt"), asked="KEY1")
    assert empty[0].listing_key == "KEY1" and empty[0].data.startswith(b"GIF89a")
    bare = photos_of(librets_txt("get-object-response-single-no-headers.txt"), asked="KEY2")
    assert bare[0].listing_key == "KEY2" and bare[0].order == 0
    loc = photos_of(librets_txt("get-object-response-single-location.txt"))
    assert loc[0].url == "http://www.example.com/images/abc123.gif" and loc[0].error is None
    ob = photos_of(librets_txt("get-object-response-single-rets1-8.txt"))
    assert ob[0].caption == "caption for kitchen"


def test_flexmls_xml_part_with_location_is_not_an_error() -> None:
    photos = photos_of(flex("get/retsgw.flexmls.com/rets2_1_GetObject/27e68249f6feeb17925a7af12c75e3e9.txt"))
    assert len(photos) == 1 and photos[0].url == "http://someurl" and photos[0].error is None


def test_flexmls_single_location_headers_only() -> None:
    path = FLEX_GET / "rets2_1_GetObject/bc184498e2ca6712c7c2e8f5a4cec90e.txt"
    raw = path.read_bytes()
    first = raw[: raw.find(b"HTTP/1.1 200 OK", 10)]  # the file holds two captures
    head = first.split(b"\r\n\r\n", 1)[0].decode()
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in head.splitlines()[1:] if ":" in line]
    photos = [p for g in group_by_listing(split_reply("image/jpeg", headers, [b""]), []) for p in g]
    assert photos[0].url.endswith("20140430153341745985000000.jpg") and photos[0].caption == "Hydrangeas"


def test_error_and_empty_parts() -> None:
    body = (b"--B\r\nContent-ID: K\r\nObject-ID: 1\r\nContent-Type: image/jpeg\r\n\r\nJPEGDATA\r\n"
            b"--B\r\nContent-ID: K\r\nObject-ID: 2\r\nContent-Type: text/xml\r\n\r\n"
            b'<RETS ReplyCode="20403" ReplyText="No Object Found" />\r\n'
            b"--B\r\nContent-ID: K\r\nObject-ID: 3\r\n\r\n\r\n"
            b"--B\r\ncontent-id: L\r\nobject-id: 2\r\nPreferred: 1\r\n\r\nX\r\n"
            b"--B\r\ncontent-id: L\r\nobject-id: 1\r\n\r\nY\r\n--B--\r\n")
    groups = list(group_by_listing(split_reply("multipart/parallel; boundary=B", [], [body]), []))
    k, lst = groups
    assert [(p.order, p.data, bool(p.error)) for p in k] == [(0, b"JPEGDATA", False), (1, None, True), (2, None, True)]
    assert "20403" in k[1].error or "no object" in k[1].error
    assert [(p.order, p.data) for p in lst] == [(0, b"X"), (1, b"Y")]  # Preferred becomes order 0


def test_no_object_reply() -> None:
    for name in ("get-object-response-no-object.txt", "get-object-response-no-object-variman.txt"):
        photos = photos_of(librets_txt(name), asked="K")
        assert photos[0].error and photos[0].data is None


def test_truncated_multipart_keeps_what_arrived() -> None:
    body = b"--B\r\nContent-ID: K\r\nObject-ID: 1\r\n\r\nAAAA\r\n--B\r\nContent-ID: K\r\nObject-ID: 2\r\n\r\nBB"
    parts = list(iter_parts([body], "B"))
    assert [p.body for p in parts] == [b"AAAA", b"BB"]
    assert parse_headers(b"A:1\r\nB: 2\r\n continued") == [("A", "1"), ("B", "2 continued")]


def test_one_asked_listing_takes_every_part_whatever_its_content_id(caplog: pytest.LogCaptureFixture) -> None:
    """The flexmls capture labels its 22 objects `14-52`; asked for one listing by another key, they
    are that listing's (logged once), not a listing nobody asked for."""
    capture = flex("get/retsgw.flexmls.com/rets2_1_GetObject/204749e19efea78e43edf1f3333ee44b.txt")
    with caplog.at_level("WARNING"):
        photos = photos_of(capture, asked="M1452")
    assert {p.listing_key for p in photos} == {"M1452"} and [p.order for p in photos] == list(range(22))
    assert caplog.text.count("Content-ID '14-52'") == 1
    several = [p for g in group_by_listing(parts_of(capture), ["M1452", "X"]) for p in g]
    assert {p.listing_key for p in several} == {"14-52"}  # left for the caller to notice


def test_xml_escaped_location_urls_are_unescaped() -> None:
    assert location_url(" http://cdn/p.jpg?w=1&amp;h=2&amp;sig=a%26b ") == "http://cdn/p.jpg?w=1&h=2&sig=a%26b"
    assert location_url("http://cdn/p.jpg?w=1&h=2") == "http://cdn/p.jpg?w=1&h=2"
    assert location_url("http://cdn/p.jpg?a=&quot;x&quot;") == 'http://cdn/p.jpg?a="x"'
    assert location_url("") is None and location_url(None) is None
    body = flex_multiple1().replace(b"Location: http://url2.jpg", b"Location: http://url2.jpg?a=1&amp;b=2")
    photos = [p for g in group_by_listing(split_reply(
        "multipart/parallel; boundary=FLEXeTNY6TFTGAwV1agjJsFyFogbnfoS1dm6y489g08F2TjwZWzQEW", [], [body]), [])
        for p in g]
    assert [p.url for p in photos][:2] == ["http://url1.jpg", "http://url2.jpg?a=1&b=2"]


@pytest.mark.parametrize("asked", [["K"], ["K", "L"]])
def test_parts_with_nothing_in_them_are_not_objects(asked: list[str]) -> None:
    """An empty part before each listing (seen on real servers) took Object-ID 1's place: the real
    object 1 was then dropped as a duplicate, or the listing was split in two."""
    body = (b"--B\r\n\r\n\r\n--B\r\nContent-ID: K\r\nObject-ID: 1\r\n\r\nK1\r\n"
            b"--B\r\nContent-ID: K\r\nObject-ID: 2\r\n\r\nK2\r\n")
    if len(asked) == 2:
        body += b"--B\r\n\r\n\r\n--B\r\nContent-ID: L\r\nObject-ID: 1\r\n\r\nL1\r\n"
    groups = list(group_by_listing(split_reply("multipart/parallel; boundary=B", [], [body + b"--B--\r\n"]), asked))
    got = [(p.listing_key, p.order, p.data, p.error) for g in groups for p in g]
    want = [("K", 0, b"K1", None), ("K", 1, b"K2", None), ("L", 0, b"L1", None)]
    assert got == want[:len(got)] and len(got) == 1 + len(asked)


def test_a_part_without_object_id_or_content_id_keeps_to_its_place() -> None:
    """An error part with no Object-ID and no Content-ID, between two listings' objects: reported
    as the current listing's extra object, without taking object 1's order or starting a listing."""
    body = (b"--B\r\nContent-ID: K\r\nObject-ID: 1\r\n\r\nK1\r\n"
            b'--B\r\nContent-Type: text/xml\r\n\r\n<RETS ReplyCode="20409" ReplyText="Unavailable"/>\r\n'
            b"--B\r\nContent-ID: K\r\nObject-ID: 2\r\n\r\nK2\r\n--B--\r\n")
    (k,) = list(group_by_listing(split_reply("multipart/parallel; boundary=B", [], [body]), ["K", "L"]))
    assert [(p.order, p.source_id, p.data) for p in k] == [(0, "1", b"K1"), (1, "2", b"K2"), (2, "part2", None)]
    assert "20409" in k[2].error
