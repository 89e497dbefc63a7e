"""Runtime knobs of the mock: settings, the clock, faults, counters and data mutations.

Tests drive these as Python methods; the `/_control` HTTP API exposes the same calls so a mock
started with `python -m mock_mls --control` can be steered from another process.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from itertools import takewhile
from typing import Any

from . import roster
from .data import COLUMNS, MEDIA_INSERT, Generator, Store
from .fields import STATUSES

FAULT_KINDS = (
    "latency",  # seconds: sleep before answering
    "http_error",  # status (500/502/503): answer with that HTTP status
    "too_many_requests",  # retry_after: answer 429 regardless of budgets
    "rets_error",  # code (20036/20037/20050/20208), transaction: RETS error reply, HTTP 200
    "truncated_body",  # the body ends halfway (complete HTTP message, broken XML/JSON)
    "malformed_xml",  # garbage injected into the XML/JSON body
    "reset_mid_body",  # half the body, then a TCP reset
    "error_part",  # listing_key, order, code: that GetObject part is an XML error
    "empty_part",  # listing_key, order: that GetObject part keeps its headers but has no bytes
    "corrupt_photo",  # listing_key, order: broken JPEG bytes (GetObject and photo URL)
    "session_expire_after_searches",  # n: the session dies after n more searches
)
# RESO Web API vendor profiles (`--reso-profile NAME`): bundles of the reso_* settings below, each
# a combination production servers serve. `textbook` is what the mock always did.
RESO_DEFAULTS: dict[str, Any] = {
    "max_page_size": 1000, "reso_key": "string", "reso_top": "page", "reso_version": "4.01",
    "reso_metadata": "textbook", "reso_enums": "none", "reso_count": True, "reso_throttle_once": None,
    "reso_metadata_key_type": None, "reso_metadata_version": None,
}
RESO_PROFILES: dict[str, dict[str, Any]] = {
    "textbook": {},
    # integer keys (Edm.Int64 ListingKeyNumeric), OData's own $top, small pages, one 429
    "numeric-keys": {"reso_key": "int", "reso_top": "total", "max_page_size": 200, "reso_throttle_once": 3},
    # OData 4.0 (no `in`), a namespace-less $metadata with a set `Properties` of type
    # `PropertyResi`, StandardStatus an enum spelled `Active_Under_Contract`, one 429
    "odata-4.0": {"reso_version": "4.0", "reso_metadata": "vendor", "reso_enums": "underscore",
                  "reso_top": "total", "max_page_size": 500, "reso_throttle_once": 3},
    # enum members encoded `b__<hex>` (annotated with their meaning), integer keys, vendor names
    "encoded-enums": {"reso_enums": "hex", "reso_key": "int", "reso_metadata": "vendor", "reso_top": "total",
                      "max_page_size": 300, "reso_throttle_once": 3},
}
_CHOICES = {"reso_key": ("string", "int"), "reso_top": ("page", "total"), "reso_version": ("4.0", "4.01"),
            "reso_metadata": ("textbook", "vendor", "html"), "reso_enums": ("none", "underscore", "hex")}
RETS_REPLY_TEXT = {
    20036: "Miscellaneous server login error",
    20037: "Session expired or client authentication failed",
    20050: "Server temporarily disabled",
    20208: "Maximum records exceeded",
}


@dataclass
class Settings:
    """Everything `configure()` may change at runtime."""

    row_cap: int | None = 2500
    offset_mode: str = "honour"  # honour | ignore | reject
    auth: str = "digest"  # digest | basic
    require_ua_auth: bool = False
    session_idle_seconds: float | None = None
    expired_session_reply: str = "20037"  # "20037" (HTTP 200 RETS reply) or "401"
    max_page_size: int = 1000
    # Rows per reply (RETS) or page (RESO) of a query that selects only key-index fields (the key,
    # modification time, status...): Trestle serves those up to 300,000 where its other queries stop
    # at 1,000. None: the same cap as any query (row_cap, max_page_size).
    key_only_cap: int | None = None
    # Production-width rows: N more Character fields in RETS Property searches of every field (see wide.py)
    extra_fields: int = 0
    mlg_can_view: bool = False
    rate_limit_per_second: int | None = None
    rate_limit_per_hour: int | None = None
    latency: float = 0.0
    token_ttl_seconds: float = 3600.0
    require_token: bool = True
    timezone_offset: str = "-05:00"
    rets_version: str = "RETS/1.7.2"
    # RETS GetObject as production servers send it (see README "RETS objects like real servers")
    rets_location_base: str = ""  # base URL of Location=1 photo URLs; "" = the host the client asked
    rets_location_escape: bool = False  # `&` in Location headers written XML-escaped, `&amp;`
    rets_location_xml: bool = False  # Location parts are text/xml RETS replies (ReplyCode 0), not empty
    rets_empty_parts: bool = False  # an empty part (no headers, no body) before each listing's objects
    rets_content_id: str = "key"  # key | other: parts carry the listing's internal id, not the asked key
    rets_keyless: list[str] = field(default_factory=list)  # listings served with an empty key column
    rets_count: bool = True  # False: Count=1/2 is ignored (no COUNT), as some servers do
    rets_maxrows: bool = True  # False: a reply cut by the row cap says nothing of it (no MAXROWS)
    username: str = "mockuser"
    password: str = "mockpass"
    user_agent: str = "MockClient/1.0"
    ua_password: str = "uapass"
    client_id: str = "mock-client"
    client_secret: str = "mock-secret"
    # RESO Web API behaviour (see RESO_PROFILES; `reso_profile` sets them all at once)
    reso_profile: str = "textbook"
    reso_key: str = "string"  # string: ListingKey is the key | int: Edm.Int64 ListingKeyNumeric is
    reso_top: str = "page"  # page: $top is a page size (nextLink goes on) | total: OData's, limits the result
    reso_version: str = "4.01"  # 4.0: `in` is refused with a 400
    reso_metadata: str = "textbook"  # vendor: no EDM namespace, set Properties of type PropertyResi, ...
    # html: $metadata answers a login page (a document nothing can read)
    reso_enums: str = "none"  # none | underscore (Active_Under_Contract) | hex (b__<hex>): StandardStatus enum
    reso_count: bool = True  # False: $count=true is ignored (no @odata.count)
    reso_throttle_once: int | None = None  # the Nth Property/Media request answers 429 once
    reso_metadata_key_type: str | None = None  # declare the key with this (wrong) type in $metadata
    reso_metadata_version: str | None = None  # declare this OData version instead of the one served

    def update(self, **changes: Any) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if "reso_profile" in changes:  # a profile resets every RESO knob, then explicit ones win
            name = changes["reso_profile"]
            if name not in RESO_PROFILES:
                raise ValueError(f"unknown RESO profile {name!r}; known: {', '.join(RESO_PROFILES)}")
            changes = {**RESO_DEFAULTS, **RESO_PROFILES[name], **changes}
        for name, allowed in _CHOICES.items():
            if changes.get(name, getattr(self, name)) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if changes.get("offset_mode", self.offset_mode) not in ("honour", "ignore", "reject"):
            raise ValueError("offset_mode must be honour, ignore or reject")
        if changes.get("auth", self.auth) not in ("digest", "basic"):
            raise ValueError("auth must be digest or basic")
        if str(changes.get("expired_session_reply", self.expired_session_reply)) not in ("20037", "401"):
            raise ValueError("expired_session_reply must be '20037' or '401'")
        if changes.get("rets_content_id", self.rets_content_id) not in ("key", "other"):
            raise ValueError("rets_content_id must be key or other")
        for name, value in changes.items():
            if name == "expired_session_reply":
                value = str(value)
            elif isinstance(value, (list, tuple)):
                value = list(value)  # a copy: reset() must not see later edits
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Clock:
    """Wall clock plus an offset tests move forward; mutation stamps strictly increase."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._last_ms = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def stamp_ms(self) -> int:
        """A fresh ModificationTimestamp: 'now', but never equal to or before the previous one."""
        with self._lock:
            self._last_ms = max(int(self.now() * 1000), self._last_ms + 1)
            return self._last_ms


@dataclass
class Fault:
    kind: str
    params: dict[str, Any]
    remaining: int | None  # None: until cleared
    fraction: float | None
    rng: random.Random
    path: str | None

    def matches(self, path: str) -> bool:
        return self.path is None or path.startswith(self.path)


class Faults:
    """Switchable faults; each fires for the next `count` requests, a seeded fraction, or always."""

    def __init__(self) -> None:
        self._items: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, kind: str, **params: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        count = params.pop("count", None)
        fraction = params.pop("fraction", None)
        seed = params.pop("seed", 0)
        path = params.pop("path", None)
        if kind == "session_expire_after_searches":
            params.setdefault("n", 1)
            params["seen"] = 0
        with self._lock:
            self._items.append(Fault(kind, params, count, fraction, random.Random(seed), path))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def take(self, kind: str, path: str = "", **match: Any) -> dict[str, Any] | None:
        """Params of the first active `kind` fault that fires for this request (and use it up)."""
        with self._lock:
            for fault in self._items:
                if fault.kind != kind or not fault.matches(path):
                    continue
                if any(k in fault.params and fault.params[k] != v for k, v in match.items()):
                    continue
                if fault.fraction is not None and fault.rng.random() >= fault.fraction:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._items.remove(fault)
                return dict(fault.params)
        return None

    def search_expires(self) -> bool:
        """Count a search against `session_expire_after_searches`; True when this one must fail."""
        with self._lock:
            for fault in self._items:
                if fault.kind == "session_expire_after_searches":
                    fault.params["seen"] += 1
                    if fault.params["seen"] > fault.params["n"]:
                        self._items.remove(fault)
                        return True
        return False

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"kind": f.kind, "remaining": f.remaining, "fraction": f.fraction, "path": f.path,
                     **f.params} for f in self._items]


class Counters:
    """Thread-safe tallies tests and the benchmark read back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.values: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()

    def request(self, endpoint: str) -> None:
        with self._lock:
            self.requests[endpoint] += 1

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {name: self.values.get(name, 0) for name in
                                   ("bytes_sent", "rows_served", "roster_rows_served", "photos_served",
                                    "media_rows_served", "rate_limited", "logins", "photo_requests_with_credentials")}
            out["requests"] = dict(self.requests)
            out["requests_total"] = sum(self.requests.values())
            out["faults_injected"] = dict(self.faults)
            return out


class RateLimiter:
    """MLS Grid-style request budgets per second and per hour, on the server clock."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def check(self, now: float, per_second: int | None, per_hour: int | None) -> float | None:
        """None if the request fits the budget (and is counted), else seconds to wait."""
        with self._lock:
            while self._times and self._times[0] <= now - 3600:
                self._times.popleft()
            if per_second is not None:
                # newest first, stopping at the first stamp older than a second: O(budget), not O(hour)
                recent = list(takewhile(lambda t: t > now - 1, reversed(self._times)))
                if len(recent) >= per_second:
                    return max(0.001, recent[-1] + 1 - now)
            if per_hour is not None and len(self._times) >= per_hour:
                return max(1.0, self._times[-per_hour] + 3600 - now)
            self._times.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._times.clear()


LIFECYCLE = {"ACT": "PND", "CS": "ACT", "AUC": "PND", "PND": "CLS"}  # status change: old -> new
LISTING_CHANGES = ("price", "status", "photo", "new", "remove", "touch", "blank_modified", "backdate", "late")
# and the roster's: member_new, member_change, member_remove, office_..., open_house_... (roster.py)
CHANGE_KINDS = (*LISTING_CHANGES, *roster.CHANGE_KINDS)
# "backdate": a price change stamped a day before the listing's own timestamp (an MLS that
# back-dates); "late": a price change stamped LATE_HOURS before the newest change in the feed, the
# way changes made during a feed outage arrive afterwards: both older than the watermark of a
# client that synced after the newest change.
LATE_HOURS = 6


class Mutator:
    """Applies seeded random changes the way a live MLS changes, bumping the timestamps it should."""

    def __init__(self, store: Store, generator: Generator, clock: Clock, seed: int, persistent: bool = False) -> None:
        self.store = store
        self.generator = generator
        self.clock = clock
        self.seed = seed
        self.persistent = persistent  # the call count lives in the store, so a restart continues it
        self.calls = store.counter("mutate_calls") if persistent else 0

    def mutate(self, **counts: int) -> dict[str, list[str]]:
        unknown = set(counts) - set(CHANGE_KINDS)
        if unknown:
            raise ValueError(f"unknown change kinds {sorted(unknown)}; known: {CHANGE_KINDS}")
        self.calls = self.store.counter("mutate_calls", 1) if self.persistent else self.calls + 1
        rng = random.Random(f"{self.seed}:mutate:{self.calls}")
        now = self.clock.stamp_ms()
        conn = self.store.conn()
        changed: dict[str, list[str]] = {kind: [] for kind in LISTING_CHANGES}
        with self.store.write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # the newest change before this call's (a client that synced since has it)
                newest = conn.execute("SELECT MAX(ModificationTimestamp) FROM listings").fetchone()[0] or now
                rows = conn.execute(
                    "SELECT ListingKey, MlsStatus, ListPrice, PhotosCount FROM listings WHERE InFeed = 1 "
                    "ORDER BY ListingKey"
                ).fetchall()
                rng.shuffle(rows)
                used: set[str] = set()

                def pick(n: int, allowed: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
                    out = []
                    for row in rows:
                        if len(out) >= n:
                            break
                        if row[0] not in used and (allowed is None or row[1] in allowed):
                            used.add(row[0])
                            out.append(row)
                    return out

                for key, _status, price, _n in pick(counts.get("price", 0), ("ACT", "AUC", "CS")):
                    new_price = round(price * rng.uniform(0.9, 1.08) / 1000) * 1000 or price + 1000
                    if new_price == price:
                        new_price = price - 1000 if price > 1000 else price + 1000
                    conn.execute("UPDATE listings SET ListPrice = ?, ModificationTimestamp = ? "
                                 "WHERE ListingKey = ?", (new_price, now, key))
                    changed["price"].append(key)
                for key, status, _price, _n in pick(counts.get("status", 0), tuple(LIFECYCLE)):
                    self._set_status(conn, key, LIFECYCLE[status], now)
                    changed["status"].append(key)
                for key, _status, _price, photos in pick(counts.get("photo", 0)):
                    self._change_photo(conn, rng, key, photos, now)
                    changed["photo"].append(key)
                for key, *_rest in pick(counts.get("remove", 0)):
                    conn.execute("UPDATE listings SET InFeed = 0, ModificationTimestamp = ? WHERE ListingKey = ?",
                                 (now, key))
                    changed["remove"].append(key)
                for kind, stamp in (("backdate", None), ("late", newest - LATE_HOURS * 3_600_000)):
                    for key, _status, price, _n in pick(counts.get(kind, 0), ("ACT", "AUC", "CS")):
                        conn.execute("UPDATE listings SET ListPrice = ?, ModificationTimestamp = "
                                     "COALESCE(?, ModificationTimestamp - 86400000) WHERE ListingKey = ?",
                                     (price + 5000, stamp, key))
                        changed[kind].append(key)
                for key, *_rest in pick(counts.get("touch", 0)):
                    conn.execute("UPDATE listings SET ModificationTimestamp = ? WHERE ListingKey = ?", (now, key))
                    changed["touch"].append(key)
                for key, *_rest in pick(counts.get("blank_modified", 0)):  # seen on real feeds: no timestamp
                    conn.execute("UPDATE listings SET ModificationTimestamp = NULL WHERE ListingKey = ?", (key,))
                    changed["blank_modified"].append(key)
                # the next serial read once: MAX over an unindexed column is a scan of the feed, per
                # new listing it took minutes at 1,000,000 listings
                serial = conn.execute("SELECT MAX(Serial) FROM listings").fetchone()[0] if counts.get("new") else 0
                for _ in range(counts.get("new", 0)):
                    serial += 1
                    changed["new"].append(self._new_listing(conn, rng, now, serial))
                # a stream of its own: the listings' changes stay what they were before the roster
                roster_changes = roster.mutate(conn, random.Random(f"{self.seed}:roster:{self.calls}"), now, counts)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {**{kind: sorted(keys) for kind, keys in changed.items()}, **roster_changes}

    @staticmethod
    def _set_status(conn: Any, key: str, code: str, now: int) -> None:
        conn.execute(
            "UPDATE listings SET MlsStatus = ?, StandardStatus = ?, StatusChangeTimestamp = ?, "
            "ModificationTimestamp = ? WHERE ListingKey = ?",
            (code, STATUSES[code][1], now, now, key),
        )

    def _change_photo(self, conn: Any, rng: random.Random, key: str, count: int, now: int) -> None:
        action = rng.choice(("add", "replace", "remove") if count > 1 else ("add", "replace"))
        if count == 0:
            action = "add"
        if action == "add":
            conn.execute(MEDIA_INSERT,
                         self.generator.media_row(key, count, 1, now))
            count += 1
        elif action == "replace":
            order = rng.randrange(count)
            version = conn.execute("SELECT Version FROM media WHERE ResourceRecordKey = ? AND MediaOrder = ?",
                                   (key, order)).fetchone()[0] + 1
            row = self.generator.media_row(key, order, version, now)
            conn.execute("DELETE FROM media WHERE ResourceRecordKey = ? AND MediaOrder = ?", (key, order))
            conn.execute(MEDIA_INSERT, row)
        else:
            count -= 1
            conn.execute("DELETE FROM media WHERE ResourceRecordKey = ? AND MediaOrder = ?", (key, count))
        conn.execute("UPDATE listings SET PhotosCount = ?, PhotosChangeTimestamp = ?, ModificationTimestamp = ? "
                     "WHERE ListingKey = ?", (count, now, now, key))

    def _new_listing(self, conn: Any, rng: random.Random, now: int, serial: int) -> str:
        row = self.generator.listing(rng, serial, now, status="ACT")
        row.update(StatusChangeTimestamp=now, PhotosChangeTimestamp=now,
                   ListingContractDate=time.strftime("%Y-%m-%d", time.gmtime(now / 1000)))
        row["ListingKey"] = time.strftime("%Y%m%d%H%M%S", time.gmtime(now / 1000)) + f"{serial:06d}"
        conn.execute(f"INSERT INTO listings VALUES ({', '.join('?' * len(COLUMNS))})",
                     tuple(row[c] for c in COLUMNS))
        conn.executemany(MEDIA_INSERT,
                         self.generator.media(row["ListingKey"], self.generator.photos, now))
        return row["ListingKey"]


