"""The rest of the MLS: members (agents), offices and open houses, beside the listings.

Generated from the listings of the same seed, so the roster is what they refer to: one office per
`ListOfficeMlsId`, one member per `ListAgentMlsId` (in the office of their first listing), and an
open house for about a fifth of the active listings. A second random stream (`<seed>:roster`)
draws what the listings do not say (phones, e-mails, times), so adding the roster changed no
listing. Served as RETS resources Agent, Office, OpenHouse (one class each) and RESO entity sets
Member, Office, OpenHouse; removed rows stay in the table with InFeed = 0, like listings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

from .data import ANCHOR, CITIES, DAY_MS, STREETS, SUFFIXES, to_ms
from .fields import Field

F = Field


@dataclass(frozen=True)
class RosterResource:
    """One roster resource as every protocol sees it: SQLite table, RETS names, RESO names."""

    name: str  # RESO entity set and type
    rets_resource: str
    rets_class: str
    table: str
    fields: tuple[Field, ...]
    changes: str  # the field member_change / office_change / open_house_change alters
    label: str  # mutate() kinds: <label>_new, <label>_change, <label>_remove

    @property
    def key(self) -> str:
        return self.fields[0].reso

    @property
    def key_system(self) -> str:
        return self.fields[0].system or ""

    @cached_property
    def by_system(self) -> dict[str, Field]:
        return {f.system: f for f in self.fields if f.system}

    @cached_property
    def by_standard(self) -> dict[str, Field]:
        return {name: f for f in self.fields for name in (f.reso, f.rets_standard_name)}

    @property
    def columns(self) -> tuple[str, ...]:
        """The SQLite columns: the fields, then InFeed (0 once removed)."""
        return (*(f.reso for f in self.fields), "InFeed")


MEMBER = RosterResource("Member", "Agent", "Agent", "members", (
    F("MemberKey", "AG_KEY", "Character", 20, long_name="Member Key"),
    F("MemberMlsId", "AG_ID", "Character", 20, long_name="Agent ID"),
    F("MemberFirstName", "AG_FNAME", "Character", 40, long_name="First Name"),
    F("MemberLastName", "AG_LNAME", "Character", 40, long_name="Last Name"),
    F("MemberFullName", "AG_NAME", "Character", 80, long_name="Full Name"),
    F("MemberEmail", "AG_EMAIL", "Character", 80, long_name="Email"),
    F("MemberPreferredPhone", "AG_PHONE", "Character", 20, long_name="Phone"),
    F("MemberStatus", "AG_STATUS", "Character", 10, long_name="Status"),
    F("OfficeKey", "AG_OFFICE_KEY", "Character", 20, long_name="Office Key"),
    F("OfficeMlsId", "AG_OFFICE_ID", "Character", 20, long_name="Office ID"),
    F("ModificationTimestamp", "AG_MODIFIED", "DateTime", 24, long_name="Last Modified"),
), "MemberPreferredPhone", "member")
OFFICE = RosterResource("Office", "Office", "Office", "offices", (
    F("OfficeKey", "OF_KEY", "Character", 20, long_name="Office Key"),
    F("OfficeMlsId", "OF_ID", "Character", 20, long_name="Office ID"),
    F("OfficeName", "OF_NAME", "Character", 80, long_name="Office Name"),
    F("OfficePhone", "OF_PHONE", "Character", 20, long_name="Phone"),
    F("OfficeEmail", "OF_EMAIL", "Character", 80, long_name="Email"),
    F("OfficeAddress1", "OF_ADDR", "Character", 120, long_name="Address"),
    F("OfficeCity", "OF_CITY", "Character", 50, long_name="City"),
    F("OfficeStateOrProvince", "OF_STATE", "Character", 2, long_name="State"),
    F("OfficePostalCode", "OF_ZIP", "Character", 10, long_name="Zip Code"),
    F("OfficeStatus", "OF_STATUS", "Character", 10, long_name="Status"),
    F("ModificationTimestamp", "OF_MODIFIED", "DateTime", 24, long_name="Last Modified"),
), "OfficePhone", "office")
OPEN_HOUSE = RosterResource("OpenHouse", "OpenHouse", "OpenHouse", "open_houses", (
    F("OpenHouseKey", "OH_KEY", "Character", 20, long_name="Open House Key"),
    F("OpenHouseId", "OH_ID", "Character", 20, long_name="Open House ID"),
    F("ListingKey", "OH_LIST_KEY", "Character", 20, long_name="Listing Key"),
    F("ListingId", "OH_LIST_ID", "Character", 15, long_name="MLS Number"),
    F("OpenHouseDate", "OH_DATE", "Date", 10, long_name="Date"),
    F("OpenHouseStartTime", "OH_START", "DateTime", 24, long_name="Start Time"),
    F("OpenHouseEndTime", "OH_END", "DateTime", 24, long_name="End Time"),
    F("OpenHouseStatus", "OH_STATUS", "Character", 10, long_name="Status"),
    F("OpenHouseType", "OH_TYPE", "Character", 10, long_name="Type"),
    F("OpenHouseRemarks", "OH_REMARKS", "Character", 500, long_name="Remarks"),
    F("ShowingAgentMlsId", "OH_AGENT_ID", "Character", 20, long_name="Showing Agent ID"),
    F("ModificationTimestamp", "OH_MODIFIED", "DateTime", 24, long_name="Last Modified"),
), "OpenHouseRemarks", "open_house")

RESOURCES: tuple[RosterResource, ...] = (MEMBER, OFFICE, OPEN_HOUSE)
BY_SET: dict[str, RosterResource] = {r.name: r for r in RESOURCES}
BY_RETS: dict[str, RosterResource] = {r.rets_resource: r for r in RESOURCES}
CHANGE_KINDS: tuple[str, ...] = tuple(f"{r.label}_{what}" for r in RESOURCES for what in ("new", "change", "remove"))
OPEN_HOUSE_SHARE = 0.2  # of active listings
OPEN_HOUSE_REMARKS = ("Refreshments served.", "Park on the street, please.", "Shoes off at the door.",
                      "Bring your agent!", "New price, come see it.", "Meet the builder on site.")
SPAN_MS = 540 * DAY_MS


def present(conn: Any) -> bool:
    """Whether this mock database has its roster (a state kept by an older mock may not)."""
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'members_orig'"
                        ).fetchone()[0] > 0


def _phone(rng: random.Random) -> str:
    return f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _office_row(rng: random.Random, serial: int, mls_id: str, name: str, modified: int) -> dict[str, Any]:
    city, state, zip3, _lat, _lon = rng.choice(CITIES)
    return {"OfficeKey": f"OFF{serial:05d}", "OfficeMlsId": mls_id, "OfficeName": name, "OfficePhone": _phone(rng),
            "OfficeEmail": f"info@{_slug(name)[:20]}.example.com",
            "OfficeAddress1": f"{rng.randint(100, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}",
            "OfficeCity": city, "OfficeStateOrProvince": state, "OfficePostalCode": f"{zip3}{rng.randint(1, 99):02d}",
            "OfficeStatus": "Active", "ModificationTimestamp": modified, "InFeed": 1}


def _member_row(rng: random.Random, serial: int, mls_id: str, full_name: str, office: tuple[str, str],
                modified: int) -> dict[str, Any]:
    first, _, last = full_name.partition(" ")
    return {"MemberKey": f"MBR{serial:06d}", "MemberMlsId": mls_id, "MemberFirstName": first,
            "MemberLastName": last or None, "MemberFullName": full_name,
            "MemberEmail": f"{_slug(first)}.{_slug(last)}{serial}@example.com", "MemberPreferredPhone": _phone(rng),
            "MemberStatus": "Inactive" if rng.random() < 0.05 else "Active", "OfficeKey": office[0],
            "OfficeMlsId": office[1], "ModificationTimestamp": modified, "InFeed": 1}


def _open_house_row(rng: random.Random, serial: int, listing: tuple[Any, ...], modified: int) -> dict[str, Any]:
    key, listing_id, agent = listing
    start = ANCHOR.replace(hour=0, minute=0) + timedelta(days=rng.randint(1, 28), hours=rng.choice((15, 16, 17, 18)))
    return {"OpenHouseKey": f"OH{serial:07d}", "OpenHouseId": f"{listing_id}-{serial}", "ListingKey": key,
            "ListingId": listing_id, "OpenHouseDate": f"{start:%Y-%m-%d}",
            "OpenHouseStartTime": to_ms(start), "OpenHouseEndTime": to_ms(start + timedelta(hours=2)),
            "OpenHouseStatus": "Active", "OpenHouseType": "Broker" if rng.random() < 0.15 else "Public",
            "OpenHouseRemarks": rng.choice(OPEN_HOUSE_REMARKS), "ShowingAgentMlsId": agent,
            "ModificationTimestamp": modified, "InFeed": 1}


def _insert(conn: Any, res: RosterResource, rows: Iterable[dict[str, Any]]) -> None:
    marks = ", ".join("?" * len(res.columns))
    conn.executemany(f"INSERT INTO {res.table} VALUES ({marks})", (tuple(r[c] for c in res.columns) for r in rows))


def create(conn: Any, seed: int) -> dict[str, int]:
    """Make the roster tables from the listings (and their pristine copies for reset)."""
    for res in RESOURCES:
        cols = ", ".join(f'"{c}"' for c in res.columns)
        conn.executescript(f"DROP TABLE IF EXISTS {res.table}; DROP TABLE IF EXISTS {res.table}_orig;"
                           f'CREATE TABLE {res.table} ({cols}, PRIMARY KEY ("{res.key}")) WITHOUT ROWID;')
    rng = random.Random(f"{seed}:roster")
    anchor = to_ms(ANCHOR)
    made = {"members": 0, "offices": 0, "open_houses": 0}
    offices: dict[str, tuple[str, str]] = {}  # one per office of the listings: a few hundred

    def office_rows() -> Iterator[dict[str, Any]]:
        for serial, (mls_id, name) in enumerate(conn.execute(
                "SELECT ListOfficeMlsId, MIN(ListOfficeName) FROM listings WHERE ListOfficeMlsId IS NOT NULL "
                "GROUP BY ListOfficeMlsId ORDER BY ListOfficeMlsId"), start=1):
            row = _office_row(rng, serial, mls_id, name, anchor - rng.randrange(SPAN_MS // 1000) * 1000)
            offices[mls_id] = (row["OfficeKey"], mls_id)
            made["offices"] += 1
            yield row

    def member_rows() -> Iterator[dict[str, Any]]:
        for serial, (mls_id, name, office) in enumerate(conn.execute(
                "SELECT ListAgentMlsId, MIN(ListAgentFullName), MIN(ListOfficeMlsId) FROM listings "
                "WHERE ListAgentMlsId IS NOT NULL GROUP BY ListAgentMlsId ORDER BY ListAgentMlsId"), start=1):
            made["members"] += 1
            yield _member_row(rng, serial, mls_id, name, offices.get(office, (None, office)),
                              anchor - rng.randrange(SPAN_MS // 1000) * 1000)

    def open_house_rows() -> Iterator[dict[str, Any]]:
        for listing in conn.execute("SELECT ListingKey, ListingId, ListAgentMlsId FROM listings "
                                    "WHERE InFeed = 1 AND StandardStatus = 'Active' ORDER BY ListingKey"):
            if rng.random() < OPEN_HOUSE_SHARE:
                made["open_houses"] += 1
                yield _open_house_row(rng, made["open_houses"], listing,
                                      anchor - rng.randrange(30 * DAY_MS // 1000) * 1000)

    # streamed into their tables, a feed of a million listings is never held in memory; each
    # resource is written whole before the next is read, so the random stream is used in one order
    conn.execute("BEGIN")
    for res, rows in ((OFFICE, office_rows()), (MEMBER, member_rows()), (OPEN_HOUSE, open_house_rows())):
        _insert(conn, res, rows)
    conn.execute("COMMIT")
    for res in RESOURCES:
        conn.executescript(f'CREATE INDEX ix_{res.table}_mod ON {res.table} (ModificationTimestamp, "{res.key}");'
                           f"CREATE TABLE {res.table}_orig AS SELECT * FROM {res.table};")
    return made


def restore_sql() -> str:
    """Statements putting every roster table back to its generated rows (inside restore's transaction)."""
    return "".join(f"DELETE FROM {r.table}; INSERT INTO {r.table} SELECT * FROM {r.table}_orig;" for r in RESOURCES)


def mutate(conn: Any, rng: random.Random, now: int, counts: dict[str, int]) -> dict[str, list[str]]:
    """Roster changes of a mutate() call (inside its transaction): new rows, a changed field, removals
    (InFeed = 0); each bumps ModificationTimestamp to `now`. Returns the keys per kind asked for."""
    out: dict[str, list[str]] = {}
    for res in RESOURCES:
        new, change, remove = (counts.get(f"{res.label}_{w}", 0) for w in ("new", "change", "remove"))
        if not (new or change or remove):
            continue
        keys = [r[0] for r in conn.execute(f'SELECT "{res.key}" FROM {res.table} WHERE InFeed = 1 '
                                           f'ORDER BY "{res.key}"').fetchall()]
        rng.shuffle(keys)
        changed, removed = keys[:change], keys[change:change + remove]
        for key in changed:
            conn.execute(f'UPDATE {res.table} SET "{res.changes}" = ?, ModificationTimestamp = ? '
                         f'WHERE "{res.key}" = ?', (_changed_value(res, rng), now, key))
        for key in removed:
            conn.execute(f'UPDATE {res.table} SET InFeed = 0, ModificationTimestamp = ? WHERE "{res.key}" = ?',
                         (now, key))
        added = [_NEW[res.name](conn, rng, now) for _ in range(new)]
        if new:
            out[f"{res.label}_new"] = sorted(added)
        if change:
            out[f"{res.label}_change"] = sorted(changed)
        if remove:
            out[f"{res.label}_remove"] = sorted(removed)
    return out


def _changed_value(res: RosterResource, rng: random.Random) -> str:
    if res is OPEN_HOUSE:
        return f"{rng.choice(OPEN_HOUSE_REMARKS)} (updated)"
    return _phone(rng)


def _next_serial(conn: Any, res: RosterResource, prefix: str) -> int:
    last = conn.execute(f'SELECT MAX("{res.key}") FROM {res.table}').fetchone()[0]
    return int(last[len(prefix):]) + 1 if last else 1


def _new_office(conn: Any, rng: random.Random, now: int) -> str:
    serial = _next_serial(conn, OFFICE, "OFF")
    row = _office_row(rng, serial, f"O{2000 + serial}", f"New Horizon Realty {serial}", now)
    _insert(conn, OFFICE, [row])
    return row["OfficeKey"]


def _new_member(conn: Any, rng: random.Random, now: int) -> str:
    serial = _next_serial(conn, MEMBER, "MBR")
    office = conn.execute("SELECT OfficeKey, OfficeMlsId FROM offices WHERE InFeed = 1 ORDER BY OfficeKey").fetchall()
    row = _member_row(rng, serial, f"N{serial:05d}", f"Jordan Newcomer{serial}", tuple(rng.choice(office)) if office
                      else (None, None), now)
    _insert(conn, MEMBER, [row])
    return row["MemberKey"]


def _new_open_house(conn: Any, rng: random.Random, now: int) -> str:
    serial = _next_serial(conn, OPEN_HOUSE, "OH")
    listings = conn.execute("SELECT ListingKey, ListingId, ListAgentMlsId FROM listings "
                            "WHERE InFeed = 1 AND StandardStatus = 'Active' ORDER BY ListingKey").fetchall()
    row = _open_house_row(rng, serial, rng.choice(listings), now)
    _insert(conn, OPEN_HOUSE, [row])
    return row["OpenHouseKey"]


_NEW: dict[str, Callable[[Any, random.Random, int], str]] = {
    "Member": _new_member, "Office": _new_office, "OpenHouse": _new_open_house}
