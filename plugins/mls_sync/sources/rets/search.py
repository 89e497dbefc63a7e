"""Walking a RETS search to the end, whatever the server does with Offset and row caps.

Strategy, per query:
1. Offset/Limit paging (1-based Offset, advanced by the rows actually received, so a server
   capping rows below our Limit still works).
2. If the server rejects Offset, or ignores it (page 2 repeats page 1), switch to time windows
   on the modification timestamp: a window whose COUNT exceeds what came back is split (sized
   from the count), down to one millisecond.
3. A window that still overflows holds a cluster of records sharing one timestamp (bulk
   updates do that): it is walked by key prefix (`(KEY=2024*)`), with a remainder clause
   `~(KEY=20240*,20241*,...)` so keys with characters we have not seen are never skipped.
   (DMQL2 has no character ranges on most servers; prefixes are standard `string-start`.)

Every record is yielded once per walk (deduplicated by key), and the state after each page is a
small JSON dict, so a retried task resumes where the last checkpoint left off. A row with an
empty key is yielded as it came (it cannot be deduplicated): the engine logs it as rejected.

Time clauses only where a window or a watermark needs one. Without either, a query with no
other clause is `match_all` (by default `((KEY=.EMPTY.)|~(KEY=.EMPTY.))`, which every record
matches, empty key or not). Records whose modification time is empty are in no time window, so:
an Offset walk of a full sync never filters on time and gets them; a full walk that had to page
by windows asks for them at its end with `(MODIFIED=.EMPTY.)` (and fails, rather than miss them
silently, if the server refuses that); a walk from a watermark (`since`) cannot see them by
definition, the next full sync does.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mls_sync.sources.base import QueryError, ServerError
from mls_sync.sources.rets import dmql

log = logging.getLogger(__name__)
FLOOR = datetime(1970, 1, 1)
MS = timedelta(milliseconds=1)
EMPTY = ".EMPTY."  # a window segment for the records whose modification time is empty


@dataclass
class PageResult:
    records: list[dict[str, str]]
    count: int | None = None
    maxrows: bool = False

    def overflows(self) -> bool:
        return self.maxrows or (self.count is not None and self.count > len(self.records))


# (query, offset or None, ask the server for a COUNT too) -> one page
Fetch = Callable[[str, "int | None", bool], PageResult]


class SearchWalk:
    """One query's walk; `offset_ok` is learned once per source and shared between walks."""

    def __init__(self, fetch: Fetch, *, key_field: str, modified_field: str, page_size: int,
                 offset_mode: str, now: Callable[[], datetime], offset_ok: dict[str, bool | None],
                 match_all: str | None = None) -> None:
        self.fetch = fetch
        self.key = key_field
        self.modified = modified_field
        self.match_all = match_all or f"(({key_field}=.EMPTY.)|~({key_field}=.EMPTY.))"
        self.page_size = page_size
        self.offset_mode = offset_mode
        self.now = now
        self.learned = offset_ok  # {"ok": None|True|False}
        # Keys of the last few pages only: enough to drop a row that slid across a page boundary
        # and to spot a repeated page, while memory stays flat however large the result. A
        # listing modified mid-walk may still come again later; the engine's raw table is keyed
        # by listing, so it lands once.
        self.seen: dict[str, None] = {}
        self.seen_limit = max(4 * page_size, 10_000)
        # The first Offset page's keys. When Offset turns out to be ignored they are kept out of
        # the whole window walk that follows, which fetches those rows again, possibly much later.
        self.page_one: set[str] = set()
        self.first_page: set[str] = set()
        # The most rows a reply of this walk carried, and whether the server ever sent COUNT or
        # MAXROWS: one that sends neither shows its cap only as the widest reply.
        self.widest = 0
        self.signals = False

    # -- helpers -------------------------------------------------------------------------------
    def _new(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        out = []
        for r in records:
            k = r.get(self.key)
            if not k:
                out.append(r)  # no key to deduplicate by: passed on, the engine rejects and logs it
                continue
            if k in self.seen or k in self.first_page:
                continue
            self.seen[k] = None
            out.append(r)
        excess = len(self.seen) - self.seen_limit
        if excess > 0:  # dicts keep insertion order: drop the oldest
            # in one pass: `next(iter(seen))` per key walked every slot freed before it again,
            # quadratic per page (0.9 of the 1.7 CPU-s of a 100k walk)
            for k in list(itertools.islice(self.seen, excess)):
                del self.seen[k]
        return out

    def _query(self, base: list[str], since: datetime | None, until: datetime | None) -> str:
        """The base clauses, a time range only when a watermark or window asks for one, else match_all."""
        clauses = list(base)
        if since is not None or until is not None:
            clauses.append(dmql.clause_range(self.modified, since and dmql.format_ts(since),
                                             until and dmql.format_ts(until)))
        return dmql.and_all(clauses) or self.match_all

    def _segment_clause(self, seg: list[Any]) -> str:
        if seg[0] == EMPTY:
            return f"({self.modified}={EMPTY})"
        return dmql.clause_range(self.modified, seg[0], seg[1])

    # -- entry point ---------------------------------------------------------------------------
    def walk(self, base: list[str], since: datetime | None, until: datetime | None,
             state: dict[str, Any] | None) -> Iterator[tuple[list[dict[str, str]], dict[str, Any] | None]]:
        """Yield (new records, state to resume after them); the final state is None (done)."""
        state = dict(state or {})
        use_offset = self.offset_mode != "never" and self.learned.get("ok") is not False
        if state.get("mode") == "window" or not use_offset:
            yield from self._windows(base, since, until, state)
            return
        query = self._query(base, since, until)
        offset = int(state.get("offset") or 1)
        head = state.get("head")
        # COUNT is a second query on the server for every page that asks for it, so the total is
        # asked for on the first page and again on the page expected to reach it (rows added
        # during the walk move it), not on every page.
        total: int | None = None
        per_page = self.page_size
        while True:
            asked = total is None or offset + per_page > total
            try:
                res = self.fetch(query, offset, asked)
            except QueryError as exc:
                if offset != 1 or self.offset_mode == "always" or self.learned.get("ok"):
                    raise
                # Rejected with Offset: does the same query work without it?
                log.info("server refused Offset (%s); paging by time windows instead", exc)
                self.learned["ok"] = False
                yield from self._windows(base, since, until, {})
                return
            fresh = asked and res.count is not None
            quiet_cap = self._maybe_capped(res)
            if fresh:
                total = res.count
            keys = [k for r in res.records if (k := r.get(self.key))]
            if offset > 1 and keys and (keys[0] == head or all(k in self.seen for k in keys)):
                if self.offset_mode == "always":
                    raise ServerError("server ignores Offset (page repeated) and rets.offset is 'always'")
                log.info("server ignores Offset (page %d repeats earlier rows); paging by time windows", offset)
                self.learned["ok"] = False
                self.first_page = self.page_one
                # The repeated page is a sample of the whole range (with the walk's total, though
                # this page may not have asked for it): use it to size the windows.
                sample = PageResult(res.records, total, res.maxrows)
                yield from self._windows(base, since, until, {}, first=sample if sample.overflows() else None)
                return
            first = offset == 1
            if first and keys:
                head = keys[0]
            if offset > 1 and keys:
                self.learned["ok"] = True
            offset += len(res.records)
            per_page = len(res.records) or per_page  # what the server sends per reply (its cap, maybe)
            if total is not None:  # trust COUNT: a server may cap rows below Limit without MAXROWS
                # past a total counted before this page: stop only if MAXROWS does not say more
                done = not res.records or (offset > total and (fresh or not res.maxrows))
            else:
                # No COUNT: a reply short of Limit without MAXROWS is the end, unless it may be the
                # quiet cap of a server that never sent COUNT or MAXROWS: then the next Offset is
                # asked, and an empty reply ends the walk (one request more, no rows lost).
                done = not res.records or (not res.maxrows and len(res.records) < self.page_size
                                           and not quiet_cap)
            if first:
                self.page_one = set(keys)
            yield self._new(res.records), None if done else {"mode": "offset", "offset": offset, "head": head}
            if done:
                return

    # -- time windows --------------------------------------------------------------------------
    def _windows(self, base: list[str], since: datetime | None, until: datetime | None,
                 state: dict[str, Any], first: PageResult | None = None
                 ) -> Iterator[tuple[list[dict[str, str]], dict[str, Any] | None]]:
        """Walk [since, until] by windows; `first` is an overflowing answer for the whole range."""
        if state.get("mode") == "window":
            stack = [list(s) for s in state["stack"]]
        else:
            low = since or FLOOR
            high = until or (self.now() + timedelta(hours=1))
            stack = [[dmql.format_ts(low), dmql.format_ts(high), None, None]]
            if since is None and until is None:  # a full walk: last, the records no window holds
                stack.insert(0, [EMPTY, EMPTY, None, None])
        while stack:
            seg = stack.pop()
            if first is not None:
                res, first = first, None
            else:
                clauses = [*base, self._segment_clause(seg)]
                if seg[2] is not None:
                    clauses += self._prefix_clauses(seg[2], seg[3])
                res = self._fetch_segment(dmql.and_all(clauses), seg)
            if self._maybe_capped(res) or res.overflows():
                timed = seg[2] is None and seg[0] != EMPTY  # the EMPTY segment can only split by key
                low, high = (dmql.parse_ts(seg[0]), dmql.parse_ts(seg[1])) if timed else (FLOOR, FLOOR)
                if high > low:
                    parts = self._split_time(low, high, res)
                    log.debug("window %s..%s holds %s records: %d windows", seg[0], seg[1], res.count, len(parts))
                else:  # one instant still overflows: a bulk update; split by key prefix
                    parts = self._split_keys(seg, res)
                stack.extend(reversed(parts))
                # The pieces cover the window and fetch these rows again: an overflowing answer
                # only sizes them (yielding it too landed each sampled row twice).
                yield [], self._state(stack)
                continue
            yield self._new(res.records), self._state(stack)

    def _maybe_capped(self, res: PageResult) -> bool:
        """Whether a reply may hide rows without saying so: from a server that has never sent COUNT
        or MAXROWS, one as long as the widest reply of the walk (its cap, kept quiet). Learns both
        from every reply. Such an Offset reply is followed by the next Offset, such a window reply
        is split; a complete one of exactly that length costs a request or a few more."""
        self.signals = self.signals or res.count is not None or res.maxrows
        quiet = not self.signals and bool(res.records) and len(res.records) >= self.widest
        self.widest = max(self.widest, len(res.records))
        return quiet

    def _budget(self) -> float:
        """Rows a window is cut to hold: most of a page, or of the widest reply where the server
        never counted (its cap may be below Limit)."""
        if not self.signals and 0 < self.widest < self.page_size:
            return 0.8 * self.widest
        return 0.8 * self.page_size

    def _fetch_segment(self, query: str, seg: list[Any]) -> PageResult:
        try:
            return self.fetch(query, None, True)
        except QueryError as exc:
            if seg[0] != EMPTY:
                raise
            raise QueryError(
                f"the server refused ({self.modified}={EMPTY}) ({exc}). It ignores or refuses Offset, so this "
                f"full walk pages by {self.modified} windows, and records whose {self.modified} is empty are "
                "in none of them: the walk stops rather than miss them without a word", code=exc.code,
                body=exc.body) from None

    def _state(self, stack: list[list[Any]]) -> dict[str, Any] | None:
        return {"mode": "window", "stack": [list(s) for s in stack]} if stack else None

    def _per_sample(self, res: PageResult, sampled: int) -> float:
        """How many records of the window each returned record stands for."""
        total = res.count if res.count and res.count > len(res.records) else 2 * max(len(res.records), 1)
        return total / max(sampled, 1)

    def _split_time(self, low: datetime, high: datetime, res: PageResult) -> list[list[Any]]:
        """Cut [low, high] where the returned sample says each piece fits in a page.

        The rows an overflowing window did return are a sample of its timestamps; cutting at
        their quantiles sizes windows in one step, and a timestamp shared by more records than
        a page (a bulk update) becomes a one-instant window of its own, walked by key next.
        """
        stamps: list[datetime] = []
        for r in res.records:
            t = _timestamp(r.get(self.modified))
            if t is not None and low <= t <= high:
                stamps.append(t)
        budget = self._budget()
        per = self._per_sample(res, len(stamps))
        cuts: set[datetime] = set()
        run = 0
        for t, m in sorted(Counter(stamps).items()):
            if m * per > budget:  # cluster: isolate [t, t]
                cuts.update((t, t + MS))
                run = 0
                continue
            if run and (run + m) * per > budget:
                cuts.add(t)
                run = 0
            run += m
        ordered = sorted(c for c in cuts if low < c <= high)
        if not ordered:  # no usable sample: halve
            ordered = [low + (high - low) / 2 + MS / 2]
            ordered = [c.replace(microsecond=c.microsecond // 1000 * 1000) for c in ordered]
            ordered = [c for c in ordered if low < c <= high] or [high]
        out: list[list[Any]] = []
        start = low
        for c in ordered:
            out.append([dmql.format_ts(start), dmql.format_ts(c - MS), None, None])
            start = c
        out.append([dmql.format_ts(start), dmql.format_ts(high), None, None])
        return out

    def _prefix_clauses(self, prefix: str, exclude: list[str] | None) -> list[str]:
        out = [f"({self.key}={prefix}*)"] if prefix else []
        if exclude:
            out.append("~(" + f"{self.key}=" + ",".join(f"{p}*" for p in exclude) + ")")
        return out

    def _split_keys(self, seg: list[Any], res: PageResult) -> list[list[Any]]:
        """Key-prefix pieces of an overflowing instant, plus a remainder for unseen prefixes."""
        prefix = seg[2] or ""
        excluded = list(seg[3] or [])
        keys = [k for r in res.records if (k := r.get(self.key) or "") and k.startswith(prefix)
                and not any(k.startswith(e) for e in excluded)]
        if not keys:
            raise ServerError(f"cannot walk {self.key} values in {seg[0]}..{seg[1]}: the server reports "
                              "more rows than it returns and none of them narrows the query")
        per = self._per_sample(res, len(keys))
        longest = max(len(k) for k in keys)
        groups: Counter[str] = Counter()
        for length in range(len(prefix) + 1, longest + 1):
            groups = Counter(k[:length] for k in keys if len(k) >= length)
            if max(groups.values()) * per <= self._budget():
                break
        children = sorted(groups)
        for child in children:
            if not _PLAIN.fullmatch(child):
                raise ServerError(f"key prefix {child!r} cannot be sent as a DMQL wildcard; "
                                  "this server needs rets.offset 'always' to walk bulk updates")
        out = [[seg[0], seg[1], c, [e for e in excluded if e.startswith(c)] or None] for c in children]
        out.append([seg[0], seg[1], prefix, sorted({*excluded, *children})])
        return out


_PLAIN = re.compile(r"[A-Za-z0-9_]+")


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=None)
