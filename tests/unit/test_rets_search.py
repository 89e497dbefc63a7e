"""The search walk against an in-memory server that caps rows and ignores or rejects Offset."""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta

import pytest
from mls_sync.sources.base import QueryError
from mls_sync.sources.rets.dmql import format_ts
from mls_sync.sources.rets.search import PageResult, SearchWalk

START = datetime(2024, 1, 1)
MATCH_ALL = "((K=.EMPTY.)|~(K=.EMPTY.))"


def make_records(n: int, cluster: int, seed: int = 3) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = START + timedelta(days=30) if i >= n - cluster else START + timedelta(seconds=rng.randint(0, 86400 * 60))
        key = f"{rng.randint(2020, 2024)}{rng.randint(1, 12):02d}{i:06d}"
        out.append({"K": key, "M": format_ts(ts)})
    return out


class FakeServer:
    """Understands exactly the DMQL the walk writes; sorts by key like many servers."""

    def __init__(self, records: list[dict[str, str]], cap: int, offset_mode: str) -> None:
        self.records = sorted(records, key=lambda r: r["K"])
        self.cap, self.mode = cap, offset_mode
        self.calls = 0
        self.offsets: list[int | None] = []
        self.counted: list[bool] = []
        self.queries: list[str] = []

    def fetch(self, query: str, offset: int | None, count: bool) -> PageResult:
        self.calls += 1
        self.offsets.append(offset)
        self.counted.append(count)
        if offset is not None and self.mode == "reject":
            raise QueryError("Offset not supported", code=20203)
        self.queries.append(query)
        rows = self.records
        query = query.replace(MATCH_ALL, "")
        ts = r"\d{4}-\d{2}-\d{2}T[0-9:.]+"
        m = re.search(rf"\(M=({ts})(?:-({ts}))?(\+)?\)", query)
        if m:  # a range leaves out empty values, as real servers' SQL does
            low = datetime.fromisoformat(m.group(1))
            high = datetime.fromisoformat(m.group(2)) if m.group(2) else datetime.max
            rows = [r for r in rows if r["M"] and low <= datetime.fromisoformat(r["M"]) <= high]
        if "(M=.EMPTY.)" in query:
            rows = [r for r in rows if not r["M"]]
        for neg, body in re.findall(r"(~?)\(K=([^)]*)\)", query):
            prefixes = [p.rstrip("*") for p in body.split(",")]
            hit = [r for r in rows if any(r["K"].startswith(p) for p in prefixes)]
            rows = [r for r in rows if r not in hit] if neg else hit
        start = (offset or 1) - 1 if self.mode == "honour" else 0
        page = rows[start:start + self.cap]
        return PageResult([dict(r) for r in page], len(rows) if count else None, len(rows) > start + len(page))


def walk(server: FakeServer, mode: str = "auto", state: dict | None = None, stop_after: int | None = None,
         *, fetch=None, page_size: int | None = None):
    """Walk `server` (through `fetch` when given), asking pages of `page_size` (its cap by default)."""
    w = SearchWalk(fetch or server.fetch, key_field="K", modified_field="M", page_size=page_size or server.cap,
                   offset_mode=mode, now=lambda: START + timedelta(days=400), offset_ok={"ok": None})
    keys, last = [], state
    for i, (records, after) in enumerate(w.walk([], None, None, state)):
        keys += [r["K"] for r in records]
        last = after
        json.dumps(after)  # cursors are JSON
        if stop_after is not None and i + 1 >= stop_after:
            break
    return keys, last


@pytest.mark.parametrize("mode", ["honour", "ignore", "reject"])
def test_every_record_exactly_once_with_a_cluster_bigger_than_the_cap(mode: str) -> None:
    records = make_records(3000, cluster=900)
    server = FakeServer(records, cap=500, offset_mode=mode)
    keys, last = walk(server)
    assert sorted(keys) == sorted(r["K"] for r in records)
    assert last is None
    assert server.calls < 60


def test_a_repeated_page_sizes_the_windows_with_the_walks_count() -> None:
    """Page 2 (the repeat) did not ask for COUNT; the windows are still cut from page 1's total,
    not from a guess of twice the rows received (which cost a server without MAXROWS 3 more
    searches here)."""
    server = QuietCapServer(make_records(3000, cluster=900), cap=500, offset_mode="ignore")
    keys, _ = walk(server)
    assert len(keys) == len(set(keys)) == 3000
    assert server.calls <= 14  # 13 + the closing ask for records without a modification time


def test_resume_from_a_cursor_in_window_mode() -> None:
    records = make_records(3000, cluster=900)
    server = FakeServer(records, cap=500, offset_mode="ignore")
    first, cursor = walk(server, stop_after=6)
    assert cursor and cursor["mode"] == "window"
    rest, last = walk(server, state=json.loads(json.dumps(cursor)))
    assert last is None
    assert set(first) | set(rest) == {r["K"] for r in records}
    # it carried on from the cursor: at most the window in progress comes again, not the whole walk
    assert len(first) + len(rest) <= len(records) + server.cap


def test_resume_from_a_cursor_in_offset_mode() -> None:
    records = make_records(2000, cluster=0)
    server = FakeServer(records, cap=300, offset_mode="honour")
    first, cursor = walk(server, stop_after=2)
    assert cursor == {"mode": "offset", "offset": 601, "head": first[0]}
    rest, _ = walk(server, state=cursor)
    assert len(first) + len(rest) == 2000 and not set(first) & set(rest)


def test_offset_walk_asks_the_server_to_count_on_the_first_and_the_last_page() -> None:
    records = make_records(2000, cluster=0)
    server = FakeServer(records, cap=300, offset_mode="honour")
    keys, _ = walk(server)
    assert sorted(keys) == sorted(r["K"] for r in records)
    # a COUNT is a second query on the server: asked on page 1 and on the page expected to end it
    assert server.counted == [True, False, False, False, False, False, True]
    server.counted.clear()
    _, cursor = walk(server, stop_after=2)
    walk(server, state=cursor)
    assert server.counted == [True, False, True, False, False, False, True]  # a resumed walk counts again


class QuietCapServer(FakeServer):
    """Caps replies below the client's Limit and never says MAXROWS: only COUNT tells there is more."""

    def fetch(self, query: str, offset: int | None, count: bool) -> PageResult:
        res = super().fetch(query, offset, count)
        return PageResult(res.records, res.count, False)


def test_a_server_capping_below_limit_without_maxrows_is_walked_to_its_count() -> None:
    records = make_records(1000, cluster=0)
    server = QuietCapServer(records, cap=300, offset_mode="honour")
    keys, _ = walk(server, page_size=1000)
    assert sorted(keys) == sorted(r["K"] for r in records)
    assert server.counted == [True, False, False, True]


class MuteServer(FakeServer):
    """Caps replies below the client's Limit and says nothing of it: no COUNT, no MAXROWS."""

    def fetch(self, query: str, offset: int | None, count: bool) -> PageResult:
        res = super().fetch(query, offset, count)
        return PageResult(res.records, None, False)


@pytest.mark.parametrize(("n", "calls", "last_offset"), [(1000, 4, 901), (900, 4, 901), (250, 2, 251)])
def test_a_server_capping_silently_without_count_is_walked_to_an_empty_reply(n: int, calls: int,
                                                                             last_offset: int) -> None:
    """A short reply as long as the widest so far may be the server's own cap: the next Offset is
    asked and only an empty reply (or a shorter one) ends the walk; nothing is lost."""
    records = make_records(n, cluster=0)
    server = MuteServer(records, cap=300, offset_mode="honour")
    keys, cursor = walk(server, page_size=1000)
    assert sorted(keys) == sorted(r["K"] for r in records) and cursor is None
    # replies of 300 until a shorter one ends it (1,000); a last reply as long as the widest (900),
    # or a first one holding the whole result (250), is followed by one empty reply
    assert (server.calls, server.offsets[-1]) == (calls, last_offset)


@pytest.mark.parametrize("mode", ["ignore", "reject"])
@pytest.mark.parametrize("limit", [500, 1000])
def test_time_windows_on_a_server_without_count_or_maxrows_miss_nothing(mode: str, limit: int) -> None:
    """Offset ignored or refused, and replies capped at 500 with no COUNT and no MAXROWS: a window
    reply as long as the widest so far may be capped, so it is split like one that says so (a
    cluster of 900 rows at one instant included); none is taken as complete on its word."""
    records = make_records(3000, cluster=900)
    server = MuteServer(records, cap=500, offset_mode=mode)
    keys, last = walk(server, page_size=limit)
    assert sorted(keys) == sorted(r["K"] for r in records) and last is None
    assert server.calls < 80, server.calls


def test_a_server_without_count_that_fills_limit_ends_on_a_short_reply() -> None:
    records = make_records(1000, cluster=0)
    server = MuteServer(records, cap=300, offset_mode="honour")
    keys, _ = walk(server, page_size=300)  # Limit = the server's cap: a short reply is the end
    assert sorted(keys) == sorted(r["K"] for r in records) and server.calls == 4


@pytest.mark.parametrize("server_class", [FakeServer, QuietCapServer])
def test_rows_added_during_the_walk_are_fetched(server_class: type[FakeServer]) -> None:
    """Listings arriving after page 1 sort last (keys grow): the walk must still reach them,
    whether the server says MAXROWS or only its COUNT tells."""
    records = make_records(900, cluster=0)
    server = server_class(records, cap=300, offset_mode="honour")
    added = [{"K": f"9999{i:06d}", "M": format_ts(START)} for i in range(150)]
    original = server.fetch

    def fetch(query: str, offset: int | None, count: bool) -> PageResult:
        res = original(query, offset, count)
        if offset == 1:  # the total is counted now; then 150 listings arrive
            server.records = sorted(server.records + added, key=lambda r: r["K"])
        return res

    keys, _ = walk(server, fetch=fetch)
    assert len(keys) == 1050 and set(keys) == {r["K"] for r in records + added}


def test_offset_always_refuses_to_fall_back() -> None:
    server = FakeServer(make_records(1000, 0), cap=300, offset_mode="ignore")
    with pytest.raises(Exception, match="ignores Offset"):
        walk(server, mode="always")


def test_offset_never_goes_straight_to_windows() -> None:
    records = make_records(1200, 0)
    server = FakeServer(records, cap=300, offset_mode="honour")
    keys, _ = walk(server, mode="never")
    assert sorted(keys) == sorted(r["K"] for r in records)
    assert server.offsets and all(o is None for o in server.offsets)  # never sent an Offset


def test_window_walk_yields_each_record_once_beyond_the_dedupe_memory() -> None:
    """The walk remembers only the last ~10,000 keys; rows of an overflowing window must not be
    yielded at all (its pieces fetch them again), or a row sampled early came back much later."""
    records = make_records(24_000, cluster=0, seed=5)
    server = FakeServer(records, cap=500, offset_mode="ignore")
    keys, last = walk(server)
    assert last is None
    assert len(keys) == len(set(keys)) == 24_000


def test_no_time_clause_without_a_window_or_watermark() -> None:
    """A full Offset walk sends its filters alone (or the match-all clause): no
    (M=1970-01-01T00:00:00+) that drops records whose modification time is empty."""
    records = make_records(700, cluster=0)
    for r in records[::50]:
        r["M"] = ""
    server = FakeServer(records, cap=300, offset_mode="honour")
    keys, _ = walk(server)
    assert sorted(keys) == sorted(r["K"] for r in records)
    assert set(server.queries) == {MATCH_ALL}
    for base, since, want in ((["(S=A)"], None, "(S=A)"), ([], START, f"(M={format_ts(START)}+)")):
        w = SearchWalk(server.fetch, key_field="K", modified_field="M", page_size=300, offset_mode="auto",
                       now=lambda: START, offset_ok={"ok": None})
        server.queries.clear()
        next(w.walk(base, since, None, None))
        assert server.queries == [want]  # filters alone; a watermark does need its clause


@pytest.mark.parametrize("mode", ["ignore", "reject"])
def test_a_full_window_walk_asks_for_records_without_a_modification_time_last(mode: str) -> None:
    records = make_records(2000, cluster=300)
    blank = records[::7]  # 286 of them: more than a page of 250, so that window is split by key
    for r in blank:
        r["M"] = ""
    server = FakeServer(records, cap=250, offset_mode=mode)
    keys, last = walk(server)
    assert last is None
    assert len(keys) == len(set(keys)) == 2000
    assert any("(M=.EMPTY.)" in q for q in server.queries)


def test_a_resumed_window_walk_still_ends_with_the_empty_timestamps() -> None:
    records = make_records(1500, cluster=0)
    for r in records[::10]:
        r["M"] = ""
    server = FakeServer(records, cap=300, offset_mode="ignore")
    first, cursor = walk(server, stop_after=3)
    rest, _ = walk(server, state=json.loads(json.dumps(cursor)))
    assert set(first) | set(rest) == {r["K"] for r in records}


def test_a_watermark_walk_does_not_ask_for_empty_timestamps() -> None:
    """Records with no modification time were not modified since anything: the next full walk
    reads them; an incremental walk by windows does not ask."""
    records = make_records(900, cluster=0)
    records[0]["M"] = ""
    server = FakeServer(records, cap=300, offset_mode="ignore")
    w = SearchWalk(server.fetch, key_field="K", modified_field="M", page_size=300, offset_mode="auto",
                   now=lambda: START + timedelta(days=400), offset_ok={"ok": None})
    keys = [r["K"] for recs, _ in w.walk([], START, None, None) for r in recs]
    assert records[0]["K"] not in keys and len(keys) == 899
    assert not any(".EMPTY." in q for q in server.queries)


def test_a_server_refusing_empty_fails_the_full_window_walk_loudly() -> None:
    class NoEmpty(FakeServer):
        def fetch(self, query: str, offset: int | None, count: bool) -> PageResult:
            if "(M=.EMPTY.)" in query:
                raise QueryError("Unknown value .EMPTY.", code=20206)
            return super().fetch(query, offset, count)

    server = NoEmpty(make_records(900, cluster=0), cap=300, offset_mode="ignore")
    with pytest.raises(QueryError, match=r"records whose M is empty"):
        walk(server)


def test_rows_without_a_key_are_passed_on_not_dropped() -> None:
    """The engine rejects and logs them; the walk neither drops them nor folds them into one."""
    records = make_records(600, cluster=0)
    for r in records[100:103]:
        r["K"] = ""
    server = FakeServer(records, cap=250, offset_mode="honour")
    w = SearchWalk(server.fetch, key_field="K", modified_field="M", page_size=250, offset_mode="auto",
                   now=lambda: START, offset_ok={"ok": None})
    rows = [r for recs, _ in w.walk([], None, None, None) for r in recs]
    assert len(rows) == 600 and sum(1 for r in rows if not r["K"]) == 3



def test_rows_repeated_across_page_boundaries_come_once_and_the_key_window_stays_bounded() -> None:
    """Twelve pages of 2,500 rows, each repeating the previous page's last 10 rows (listings that
    moved during the walk): every row comes out once, and the walk keeps only the newest 10,000
    keys however long it runs, trimming the oldest as it goes."""
    records = make_records(30_000, cluster=0)
    w = SearchWalk(lambda *a: PageResult([]), key_field="K", modified_field="M", page_size=2500,
                   offset_mode="honour", now=lambda: START, offset_ok={"ok": None})
    keys: list[str] = []
    for start in range(0, 30_000, 2500):
        page = records[max(0, start - 10):start + 2500]
        keys += [r["K"] for r in w._new(page)]
    assert keys == [r["K"] for r in records]
    assert list(w.seen) == keys[-w.seen_limit:] and w.seen_limit == 10_000
