"""COMPACT search replies from real servers: rows, columns, delimiters, MAXROWS, codes, charsets."""

from __future__ import annotations

import pytest
from mls_sync.sources.base import QueryError
from mls_sync.sources.rets.compact import REPLACEMENT, CompactParser, XmlRepair, parse_bytes
from mls_sync.sources.rets.errors import reply_error

from tests.unit.test_rets_fixtures import FLEX_GET, LIBRETS, flex

COLS4 = ["ListingID", "ListPrice", "City", "ListDate"]
ROW1 = {"ListingID": "LN000005", "ListPrice": "250000", "City": "Chicago", "ListDate": "2004-07-04"}


def parse(name: str) -> tuple:
    return parse_bytes((LIBRETS / name).read_bytes())


@pytest.mark.parametrize("name", ["search-response-no-count.xml", "search-response-no-final-tab.xml",
                                  "search-response-no-leading-tab.xml", "search-response.xml"])
def test_four_column_variants_give_the_same_rows(name: str) -> None:
    reply, rows = parse(name)
    assert reply.code == 0 or reply.code == 20208
    assert reply.columns == COLS4
    assert next(r.values for r in rows) == ROW1
    assert rows[1].values["City"] == "Buffalo Grove"
    assert len(rows) == 2


def test_count_and_maxrows_and_rets_status_override() -> None:
    reply, _ = parse("search-response.xml")
    assert reply.count == 2 and reply.maxrows
    assert reply.code == 20208 and reply.text == "Maximum Records Exceeded"  # RETS-STATUS wins over "0"
    reply, _ = parse("search-response-no-count.xml")
    assert reply.count is None and not reply.maxrows and reply.code == 0


def test_pipe_delimiter_and_single_column() -> None:
    reply, rows = parse("search-response-pipe.xml")
    assert reply.delimiter == "|" and reply.columns == ["CITY"] and rows[0].values == {"CITY": "AURORA"}
    reply, rows = parse("search-response-single-column.xml")
    assert [r.values["ListingID"] for r in rows] == ["LN000005", "LN000004", ""]
    assert reply.count == 3


def test_no_records_is_an_empty_result() -> None:
    reply, rows = parse("search-response-no-records.xml")
    assert reply.code == 20201 and rows == []


@pytest.mark.parametrize("name", ["search-response-error.xml", "search-response-error-extended.xml"])
def test_error_replies_keep_their_text(name: str) -> None:
    reply, rows = parse(name)
    assert reply.code == 20205 and rows == []
    exc = reply_error(reply.code, reply.text, reply.body, "Search")
    assert isinstance(exc, QueryError)
    assert "Invalid Query Syntax" in str(exc)
    if "extended" in name:
        assert "try better next time" in str(exc)


def test_flexmls_20203_body_text_in_exception() -> None:
    _, _, body = flex("get/retsgw.flexmls.com/rets2_1_Search/f065035031b4ce43d3e5374517306e20.txt")
    reply, _ = parse_bytes(body)
    exc = reply_error(reply.code, reply.text, reply.body, "Search")
    assert isinstance(exc, QueryError) and exc.code == 20203
    assert "Valid Classes are" in str(exc) and "Specified Class (Z)" in str(exc)


def test_latin1_bytes_keep_the_record_and_replace_bad_characters() -> None:
    _, rows = parse("search-response-extended-char.xml")  # N 0x9C 0x96 ez: not UTF-8
    assert rows[0].values["LastName"] == f"N{REPLACEMENT}{REPLACEMENT}ez"
    assert rows[0].values["FirstName"] == "Carlos"
    _, rows = parse("search-response-extended-utf8.xml")
    assert rows[0].values["LastName"] == "Núñez"
    # printable Latin-1 (0xA0-0xFF) keeps its meaning
    body = b'<RETS ReplyCode="0" ReplyText="ok"><COLUMNS>\tA\t</COLUMNS><DATA>\tN\xfa\xf1ez\t</DATA></RETS>'
    assert parse_bytes(body)[1][0].values["A"] == "Núñez"


def test_declared_latin1_and_bad_references_are_repaired() -> None:
    body = ('<?xml version="1.0" encoding="ISO-8859-1"?><RETS ReplyCode="0" ReplyText="ok">'
            "<COLUMNS>\tK\tR\t</COLUMNS><DATA>\t1\tBed & Breakfast&#1;&nbsp;\x0b\xe9\t</DATA></RETS>").encode("latin-1")
    _, rows = parse_bytes(body)
    assert rows[0].values == {"K": "1", "R": f"Bed & Breakfast{REPLACEMENT}&nbsp;{REPLACEMENT}é"}


def test_streaming_in_tiny_chunks_gives_the_same_rows() -> None:
    data = (LIBRETS / "raw-search").read_bytes()
    parser = CompactParser()
    rows = []
    for i in range(0, len(data), 7):
        rows.extend(parser.feed(data[i:i + 7]))
    rows.extend(parser.close())
    assert len(rows) == 160 and parser.reply.count == 160 and parser.complete
    assert rows[-1].values["ListingID"] == "LN000159"
    # a reference split across chunks
    parser = CompactParser()
    body = b'<RETS ReplyCode="0"><COLUMNS>\tA\t</COLUMNS><DATA>\tx &amp; y &#233;\t</DATA></RETS>'
    got = [r for i in range(len(body)) for r in parser.feed(body[i:i + 1])] + list(parser.close())
    assert got[0].values["A"] == "x & y é"


# Clean stretches (passed to lxml as they are) between every kind of repair, so that some chunk
# sizes cut a multibyte character, an entity or a bad byte at a chunk's edge.
MIXED_ROWS = [
    ("Núñez € café", "Núñez € café"),
    ("Bed & Breakfast", "Bed & Breakfast"),
    ("x &amp; y &lt;3", "x & y <3"),
    ("ok &#233; bad &#1; tab\x0bhere", f"ok é bad {REPLACEMENT} tab{REPLACEMENT}here"),
    ("plain ascii " * 8, "plain ascii " * 8),
    ("latin1 \udcff\udce9 byte", "latin1 ÿé byte"),  # raw 0xFF 0xE9 bytes: not UTF-8
    ("nonchar \ufffe end", f"nonchar {REPLACEMENT} end"),
]


def _mixed_body() -> bytes:
    rows = "".join(f"<DATA>\t{i}\t{raw}\t</DATA>" for i, (raw, _) in enumerate(MIXED_ROWS))
    text = f'<RETS ReplyCode="0" ReplyText="ok"><COLUMNS>\tK\tR\t</COLUMNS>{rows}</RETS>'
    return text.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 33, 64, 10_000])
def test_any_chunking_of_clean_and_repaired_text_gives_the_same_rows(size: int) -> None:
    body = _mixed_body()
    parser = CompactParser()
    rows = [r for i in range(0, len(body), size) for r in parser.feed(body[i:i + size])] + list(parser.close())
    assert parser.complete
    assert [r.values["R"] for r in rows] == [want for _, want in MIXED_ROWS]


def test_clean_chunks_pass_through_untouched_and_dirty_ones_are_repaired() -> None:
    repair = XmlRepair("utf-8")
    head = repair.feed(b'<?xml version="1.0" encoding="UTF-8"?><RETS ReplyCode="0">')
    assert head == b'<RETS ReplyCode="0">'
    clean = "<DATA>\tNúñez &amp; Sons\t</DATA>".encode()
    assert repair.feed(clean) is clean  # no copy: the common case costs no decode/encode
    assert repair.feed(b"<DATA>\tA & B and the rest\t</DATA>") == b"<DATA>\tA &amp; B and the rest\t</DATA>"
    assert repair.feed(b"<DATA>\tab\x01c\t</DATA>") == "<DATA>\tab\ufffdc\t</DATA>".encode()
    # a character cut at the chunk's edge goes through the decoder, which holds its first byte
    cut = "é".encode()
    assert repair.feed(b"<DATA>\t" + cut[:1]) == b"<DATA>\t"
    assert repair.feed(cut[1:] + b"\t</DATA>") == "é\t</DATA>".encode()
    # declared windows-1252: ASCII chunks pass, a chunk with 0xE9 is decoded as that charset
    latin = XmlRepair()
    latin.feed(b'<?xml version="1.0" encoding="windows-1252"?><RETS>')
    ascii_chunk = b"<DATA>\tplain\t</DATA>"
    assert latin.feed(ascii_chunk) is ascii_chunk
    assert latin.feed(b"<DATA>\tcaf\xe9\t</DATA>") == "<DATA>\tcafé\t</DATA>".encode()


def test_truncated_reply_is_detected() -> None:
    data = (LIBRETS / "raw-search").read_bytes()[:3000]
    parser = CompactParser()
    rows = list(parser.feed(data)) + list(parser.close())
    assert rows and not parser.complete


@pytest.mark.parametrize("path", sorted(p.name for p in (FLEX_GET / "rets2_1_Search").iterdir()))
def test_every_flexmls_search_capture(path: str) -> None:
    _, _, body = flex(f"get/retsgw.flexmls.com/rets2_1_Search/{path}")
    reply, rows = parse_bytes(body)
    if reply.code:
        assert reply.code == 20203
        return
    assert reply.columns[0] in ("LIST_1", "LIST_0")
    assert len(rows) in (1, 3, 10, 15)
    assert all(len(r.values["LIST_1"]) == 26 for r in rows)
    if reply.columns == ["LIST_0", "LIST_1", "LIST_5", "LIST_106", "LIST_105", "LIST_15", "LIST_22",
                         "LIST_10", "LIST_30"]:
        assert rows[0].values["LIST_15"] == "Expired" and rows[0].values["LIST_30"] == ""
        assert reply.count == 9057 and reply.maxrows
