"""Streaming parser for RETS XML replies: COMPACT / COMPACT-DECODED search results and metadata.

Bytes go in as they arrive from the socket and records come out as soon as their `<DATA>` row
is complete, so a 100 MB search reply never sits in memory. Real servers send bodies that are
not quite XML (Latin-1 bytes in a UTF-8 document, `&#1;`, bare `&` in remarks); those are
repaired on the way in, the record is kept and the bad characters become U+FFFD, because
losing a listing over one stray byte in its remarks is worse than a replacement character.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

REPLACEMENT = "\ufffd"


def _latin1_or_replace(exc: UnicodeError) -> tuple[str, int]:
    """Invalid UTF-8: printable Latin-1 bytes (0xA0-0xFF) keep their meaning, others -> U+FFFD."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(chr(b) if b >= 0xA0 else REPLACEMENT for b in bad), exc.end


codecs.register_error("rets-latin1", _latin1_or_replace)

_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*\?>", re.S)
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_CHAR_REF = re.compile(r"&#(?:x([0-9A-Fa-f]+)|([0-9]+));")
_BAD_AMP = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);)")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# A chunk needs no repair without control characters and without an `&` other than the five named
# entities (a character reference may be invalid, an `&` cut at the chunk's end may be an entity's
# start). Checked on the bytes: one `in` (memchr) per control byte, where deleting them all
# (`translate`) costs about 3x the instructions and a regex character class steps through the matcher
# byte by byte (about 8x slower); U+FFFE/U+FFFF by their UTF-8 bytes.
_CONTROL_BYTES = tuple(bytes([b]) for b in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)))
_NONCHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")
_OTHER_AMP = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos);)")
_UTF8_FAMILY = {"utf-8", "utf8", "us-ascii", "ascii", "ansi_x3.4-1968", ""}


def _ascii_compatible(encoding: str) -> bool:
    """ASCII bytes mean the same characters in `encoding` (Latin-1, cp1252 ...; not UTF-16)."""
    try:
        return "<&;".encode(encoding) == b"<&;"
    except (LookupError, UnicodeError):
        return False


def _valid_xml_char(cp: int) -> bool:
    return cp in (0x9, 0xA, 0xD) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD or 0x10000 <= cp <= 0x10FFFF


def _fix_char_ref(m: re.Match[str]) -> str:
    cp = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    return m.group(0) if _valid_xml_char(cp) else REPLACEMENT


class XmlRepair:
    """Incremental bytes -> clean UTF-8 XML bytes that lxml accepts.

    The XML declaration is dropped (we always hand lxml UTF-8), its encoding (or the HTTP
    charset) picks the decoder; US-ASCII/UTF-8 documents fall back to Latin-1 per bad byte.
    """

    def __init__(self, charset: str | None = None) -> None:
        self._charset = (charset or "").strip().lower()
        self._head = b""
        self._decoder: codecs.IncrementalDecoder | None = None
        self._pending = ""  # text held back because it may end inside a character reference
        self._utf8 = True  # the document's encoding is UTF-8 (or ASCII, its subset)
        self._ascii_compatible = True  # ASCII bytes mean ASCII characters in it (not UTF-16/32)

    def _start(self, head: bytes) -> bytes:
        m = _XML_DECL.match(head)
        encoding = self._charset
        if m:
            declared = _DECL_ENCODING.search(m.group(0))
            if declared:
                encoding = declared.group(1).decode("ascii").lower()
            head = head[m.end():]
        if encoding not in _UTF8_FAMILY:
            with contextlib.suppress(LookupError):  # an unknown charset is read as UTF-8
                self._decoder = codecs.getincrementaldecoder(encoding)("replace")
                self._utf8 = False
                self._ascii_compatible = _ascii_compatible(encoding)
        if self._utf8:
            self._decoder = codecs.getincrementaldecoder("utf-8")("rets-latin1")
        return head.lstrip(b"\xef\xbb\xbf")

    def _clean_as_is(self, data: bytes) -> bool:
        """Whether `data` can go to lxml untouched: the common case, checked in C. It must be whole
        characters that are valid UTF-8 (ASCII, or UTF-8 that decodes strictly in one piece) with
        nothing held back from the previous chunk, and hold nothing that needs repair."""
        if self._pending or self._decoder.getstate()[0]:
            return False
        if data.isascii():
            if not self._ascii_compatible:
                return False
        elif not self._utf8:
            return False
        else:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:  # a character cut at the chunk's end, or Latin-1 bytes
                return False
            if any(nc in data for nc in _NONCHARACTERS):
                return False
        return not any(map(data.__contains__, _CONTROL_BYTES)) and _OTHER_AMP.search(data) is None

    def feed(self, data: bytes, final: bool = False) -> bytes:
        if self._decoder is None:
            self._head += data
            # Wait until the declaration (if any) is complete before choosing the decoder.
            undecided = self._head.lstrip()[:2] in (b"", b"<?") and b"?>" not in self._head
            if not final and len(self._head) < 256 and undecided:
                return b""
            data, self._head = self._start(self._head), b""
        if self._clean_as_is(data):
            return data
        text = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        if not final:
            amp = text.rfind("&")
            if amp != -1 and ";" not in text[amp:] and len(text) - amp < 16:
                text, self._pending = text[:amp], text[amp:]
        text = _CHAR_REF.sub(_fix_char_ref, text)
        text = _BAD_AMP.sub("&amp;", text)
        text = _CONTROL.sub(REPLACEMENT, text)
        return text.encode("utf-8")


def split_row(text: str, delimiter: str, leading: bool, trailing: bool) -> list[str]:
    """One COMPACT line -> values; `leading`/`trailing` say whether COLUMNS had the edge delimiters."""
    if leading and text.startswith(delimiter):
        text = text[len(delimiter):]
    if trailing and text.endswith(delimiter):
        text = text[: -len(delimiter)]
    return text.split(delimiter)


@dataclass
class Reply:
    """What a RETS reply said besides its rows; filled in while parsing."""

    code: int | None = None
    text: str = ""
    body: str = ""  # free text inside <RETS> (error explanations)
    count: int | None = None
    maxrows: bool = False
    delimiter: str = "\t"
    columns: list[str] = field(default_factory=list)
    # non-COMPACT elements met on the way: ("SYSTEM", attrs) and STANDARD-XML metadata items
    elements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(slots=True)
class Row:
    container: str  # "RETS" for a search, METADATA-TABLE etc. for metadata
    attrs: dict[str, str]  # the container's attributes (Resource, Class, Lookup ...)
    values: dict[str, str]


class CompactParser:
    """Feed bytes, iterate `Row`s (with `values_only`, the rows' value dicts: what a search needs,
    without an object per row); `reply` holds ReplyCode, COUNT, MAXROWS, RETS-STATUS.

    A `<RETS-STATUS>` inside the body overrides the opening ReplyCode (servers say "0" and then
    report 20208 or an error at the end). STANDARD-XML metadata items (`<Field>`, `<Lookup>` ...)
    are collected into `reply.elements` with their container's attributes.
    """

    def __init__(self, charset: str | None = None, keep_elements: bool = False, values_only: bool = False) -> None:
        self.reply = Reply()
        self._repair = XmlRepair(charset)
        self._parser = etree.XMLPullParser(events=("start", "end"), recover=True, huge_tree=True,
                                           resolve_entities=False, no_network=True)
        self._keep_elements = keep_elements
        self._values_only = values_only  # hand out the rows' value dicts, not `Row`s (a search's rows)
        self._edges: dict[str, tuple[bool, bool]] = {}
        self._columns: dict[str, list[str]] = {}
        self._containers: list[tuple[str, dict[str, str]]] = []
        # (container, attrs, columns, leading, trailing, delimiter) for the next DATA row: worked out
        # once per COLUMNS, not per row
        self._layout: tuple[str, dict[str, str], list[str], bool, bool, str] | None = None
        self._saw_root = False
        self.complete = False  # the closing </RETS> arrived (a cut-short reply must not pass as whole)

    def feed(self, data: bytes) -> Iterator[Any]:
        out: list[Any] = []
        clean = self._repair.feed(data)
        if clean:
            self._parser.feed(clean)
            self._drain(out)
        return iter(out)

    def close(self) -> Iterator[Any]:
        out: list[Any] = []
        clean = self._repair.feed(b"", final=True)
        if clean:
            self._parser.feed(clean)
        self._drain(out)
        complete = self.complete  # closing the parser invents end tags for a cut-short body
        # recover=True: a truncated tail is tolerated; the caller checks `complete`.
        with contextlib.suppress(etree.XMLSyntaxError):
            self._parser.close()
        if complete:
            self._drain(out)
        self.complete = complete
        return iter(out)

    @property
    def saw_rets(self) -> bool:
        return self._saw_root

    def _row_layout(self) -> tuple[str, dict[str, str], list[str], bool, bool, str]:
        container, attrs = self._containers[-1] if self._containers else ("RETS", {})
        lead, trail = self._edges.get(container, (True, True))
        self._layout = (container, attrs, self._columns.get(container, self.reply.columns), lead, trail,
                        self.reply.delimiter)
        return self._layout

    def _drain(self, out: list[Any]) -> None:
        """This chunk's events; rows (or their values) are appended to `out`."""
        reply = self.reply
        values_only = self._values_only
        row = None  # the last DATA element read
        for event, elem in self._parser.read_events():
            tag = elem.tag  # lxml builds a new str on every access: read it once
            if tag == "DATA":  # the hot path: one row (its start event says nothing)
                if event == "end":
                    container, attrs, cols, lead, trail, delim = self._layout or self._row_layout()
                    text = elem.text or ""
                    values = text.split(delim)
                    # split_row's result, without its call, for a row with both edge delimiters
                    if lead and trail and len(values) > 2 and values[0] == "" and values[-1] == "":
                        del values[-1]
                        del values[0]
                    else:
                        values = split_row(text, delim, lead, trail)
                    if len(values) < len(cols):
                        values += [""] * (len(cols) - len(values))
                    values = dict(zip(cols, values, strict=False))
                    out.append(values if values_only else Row(container, attrs, values))
                    row = elem
                continue
            if not isinstance(tag, str):  # a comment or processing instruction
                tag = ""
            self._layout = None  # anything else may change the columns, delimiter or container
            if event == "start":
                if tag == "RETS":
                    self._saw_root = True
                    reply.code = _int(elem.get("ReplyCode"))
                    reply.text = elem.get("ReplyText") or ""
                elif tag == "RETS-STATUS":
                    reply.code = _int(elem.get("ReplyCode"))
                    reply.text = elem.get("ReplyText") or reply.text
                elif tag.startswith("METADATA-"):
                    self._containers.append((tag, dict(elem.attrib)))
                continue
            # end events
            if tag == "COLUMNS":
                container = self._containers[-1][0] if self._containers else "RETS"
                text = elem.text or ""
                d = reply.delimiter
                edges = (text.startswith(d), text.endswith(d) and len(text) > len(d))
                cols = split_row(text, d, *edges)
                self._edges[container] = edges
                self._columns[container] = cols
                if container == "RETS":
                    reply.columns = cols
                self._forget(elem)
            elif tag == "DELIMITER":
                reply.delimiter = _delimiter(elem.get("value"))
            elif tag == "COUNT":
                reply.count = _int(elem.get("Records"))
            elif tag == "MAXROWS":
                reply.maxrows = True
            elif tag == "RETS":
                reply.body = (reply.body + (elem.text or "")).strip()
                self.complete = True
            elif tag.startswith("METADATA-"):
                if self._containers:
                    self._containers.pop()
                self._forget(elem)
            elif tag == "SYSTEM" or tag == "System":
                item = dict(elem.attrib)
                item.update({c.tag: (c.text or "").strip() for c in elem if isinstance(c.tag, str)})
                reply.elements.append(("SYSTEM", item))
            elif self._keep_elements and self._containers and len(elem) and elem.getparent() is not None \
                    and elem.getparent().tag == self._containers[-1][0]:
                item = {c.tag: (c.text or "").strip() for c in elem if isinstance(c.tag, str)}
                container, attrs = self._containers[-1]
                out.append(item if values_only else Row(container, attrs, item))
                self._forget(elem)
        if row is not None:  # drop what came before the last row read: memory stays flat
            parent = row.getparent()
            if parent is not None:
                del parent[:parent.index(row)]

    @staticmethod
    def _forget(elem: etree._Element) -> None:
        """Drop finished rows so memory stays flat however long the reply is."""
        elem.clear(keep_tail=False)
        parent = elem.getparent()
        if parent is not None:
            while elem.getprevious() is not None:
                del parent[0]


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _delimiter(value: str | None) -> str:
    """DELIMITER value is a hex byte (`09` tab, `7C` pipe); absent or unreadable means tab."""
    try:
        return chr(int((value or "09").strip(), 16))
    except ValueError:
        return "\t"


def parse_bytes(data: bytes, charset: str | None = None, keep_elements: bool = False
                ) -> tuple[Reply, list[Row]]:
    """Parse a complete (small) reply: login, logout, metadata, error bodies, test fixtures."""
    parser = CompactParser(charset, keep_elements=keep_elements)
    rows = list(parser.feed(data))
    rows.extend(parser.close())
    return parser.reply, rows
