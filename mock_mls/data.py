"""Deterministic listing generator and the SQLite store every protocol reads from.

SQLite keeps memory flat at 100,000 listings and lets DMQL2 and OData both become parameterised
SQL. Timestamps are stored as integer UTC milliseconds so both protocols compare them exactly.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .fields import FIELDS, LOOKUPS, STATUSES

ANCHOR = datetime(2025, 10, 1, 12, 0, tzinfo=UTC)  # generated history ends here
DAY_MS = 86_400_000

CITIES = (  # city, state, ZIP prefix, latitude, longitude
    ("Austin", "TX", "787", 30.2672, -97.7431), ("Round Rock", "TX", "786", 30.5083, -97.6789),
    ("Dallas", "TX", "752", 32.7767, -96.7970), ("Plano", "TX", "750", 33.0198, -96.6989),
    ("Denver", "CO", "802", 39.7392, -104.9903), ("Boulder", "CO", "803", 40.0150, -105.2705),
    ("Atlanta", "GA", "303", 33.7490, -84.3880), ("Marietta", "GA", "300", 33.9526, -84.5499),
    ("Tampa", "FL", "336", 27.9506, -82.4572), ("Orlando", "FL", "328", 28.5383, -81.3792),
    ("Raleigh", "NC", "276", 35.7796, -78.6382), ("Durham", "NC", "277", 35.9940, -78.8986),
    ("Phoenix", "AZ", "850", 33.4484, -112.0740), ("Scottsdale", "AZ", "852", 33.4942, -111.9261),
    ("Seattle", "WA", "981", 47.6062, -122.3321), ("Tacoma", "WA", "984", 47.2529, -122.4443),
    ("Portland", "OR", "972", 45.5152, -122.6784), ("Bend", "OR", "977", 44.0582, -121.3153),
    ("Chicago", "IL", "606", 41.8781, -87.6298), ("Naperville", "IL", "605", 41.7508, -88.1535),
    ("Nashville", "TN", "372", 36.1627, -86.7816), ("Franklin", "TN", "370", 35.9251, -86.8689),
    ("Columbus", "OH", "432", 39.9612, -82.9988), ("Minneapolis", "MN", "554", 44.9778, -93.2650),
)
STREETS = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Lakeview", "Hillcrest", "Sunset", "Meadow", "Willow",
    "Park", "Ridge", "Highland", "Washington", "Lincoln", "Jefferson", "Mockingbird", "Bluebonnet",
    "Aspen", "Magnolia", "Riverside", "Forest", "Spring", "Valley", "Canyon", "Prairie",
)
SUFFIXES = ("St", "Ave", "Dr", "Ln", "Ct", "Blvd", "Way", "Trl", "Pl", "Cir")
FIRST = ("Maria", "James", "Linda", "Robert", "Aisha", "Chen", "Priya", "David", "Sofia", "Michael",
         "Emily", "Carlos", "Hannah", "Omar", "Grace", "Lucas")
LAST = ("Garcia", "Smith", "Nguyen", "Johnson", "Patel", "Williams", "Brown", "Kim", "Lopez",
        "Miller", "O'Brien", "Davis", "Martinez", "Wilson", "Anderson", "Taylor")
OFFICES = ("Keller Realty", "Lone Star Homes", "Summit & Co. Real Estate", "Coldwell Partners",
           "Blue Door Realty", "Urban Nest Brokers", "Red Oak Properties", "Compass Point Realty")
REMARKS = (
    "Welcome home to this <b>stunning</b> {beds}-bedroom retreat in {city}.",
    "Light-filled open plan with updated kitchen &amp; quartz counters.",
    "<p>Move-in ready!</p> Fresh paint, new roof (2021) and a huge backyard.",
    "Walk to parks, shops &amp; dining. Top-rated schools nearby.",
    "Seller offering <i>$5,000</i> toward closing costs. Don't miss it!",
    "Primary suite with spa-like bath<br/>and walk-in closet.",
    "Investor special: tenant in place through 2026 &mdash; great cap rate.",
    "Corner lot, mature trees, and a 2-car garage with workshop space.",
)
# StandardStatus code weights: mostly Active, every one of the 11 values present.
STATUS_WEIGHTS = (("ACT", 55), ("PND", 8), ("AUC", 6), ("CLS", 15), ("CS", 3), ("EXP", 4),
                  ("WDN", 3), ("CAN", 3), ("HLD", 1.5), ("INC", 1), ("DEL", 0.5))
TYPE_WEIGHTS = (("RES", 62), ("CND", 14), ("MUL", 6), ("LND", 8), ("COM", 4), ("RNT", 6))

COLUMNS: tuple[str, ...] = (*(f.reso for f in FIELDS if f.reso != "MlgCanView"), "InFeed", "Serial")
MEDIA_COLUMNS = ("MediaKey", "ResourceRecordKey", "MediaOrder", "Version", "ImageWidth", "ImageHeight",
                 "Orientation", "MediaModificationTimestamp", "ShortDescription")
MEDIA_INSERT = f"INSERT INTO media VALUES ({', '.join('?' * len(MEDIA_COLUMNS))})"
CAPTIONS = ("Front exterior", "Living room", "Kitchen", "Primary bedroom", "Bathroom", "Backyard",
            "Dining area", "Street view", "Garage", "Aerial view")


def to_ms(dt: datetime) -> int:
    """Aware datetime -> integer UTC milliseconds (the stored form)."""
    return int(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Generator:
    """Makes listings and photo rows from a seed; listing n is the same for the same seed."""

    def __init__(self, seed: int, photos_per_listing: int) -> None:
        self.seed = seed
        self.photos = photos_per_listing
        self._statuses, self._status_w = zip(*STATUS_WEIGHTS, strict=True)
        self._types, self._type_w = zip(*TYPE_WEIGHTS, strict=True)
        self._feature_codes = {name: list(LOOKUPS[name]) for name in
                               ("InteriorFeatures", "Appliances", "ParkingFeatures")}

    def listing(self, rng: random.Random, serial: int, modified_ms: int, status: str | None = None
                ) -> dict[str, Any]:
        """One listing; `modified_ms` is its ModificationTimestamp, other dates come before it."""
        city, state, zip3, lat, lon = rng.choice(CITIES)
        ptype = rng.choices(self._types, self._type_w)[0]
        status = status or rng.choices(self._statuses, self._status_w)[0]
        listed = from_ms(modified_ms) - timedelta(days=rng.randint(1, 240))
        key = f"{listed:%Y%m%d%H%M%S}{serial:06d}"
        beds = 0 if ptype in ("LND", "COM") else rng.choices((1, 2, 3, 4, 5, 6), (8, 20, 36, 24, 9, 3))[0]
        baths = 0 if beds == 0 else max(1, beds - rng.randint(0, 2))
        sqft = 0 if ptype == "LND" else int(rng.gauss(650 + beds * 420, 300)) // 10 * 10 + 400
        rent = ptype == "RNT"  # monthly rent
        price = rng.randrange(900, 9500, 25) if rent else round(rng.lognormvariate(12.9, 0.45) / 1000) * 1000
        number = str(rng.randint(100, 19999))
        street = f"{rng.choice(STREETS)} {rng.choice(SUFFIXES)}"
        postal = f"{zip3}{rng.randint(1, 99):02d}"
        if rng.random() < 0.08:
            postal += f"-{rng.randint(1, 9999):04d}"
        agent = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        office = rng.randrange(len(OFFICES))
        remarks = " ".join(rng.sample(REMARKS, rng.randint(1, 3))).format(beds=beds, city=city)
        status_change = modified_ms - rng.randint(0, 30) * DAY_MS
        return {
            "ListingKey": key,
            "ListingId": f"MLS{1000000 + serial}",
            "ListPrice": float(price),
            "StandardStatus": STATUSES[status][1],
            "MlsStatus": status,
            "UnparsedAddress": f"{number} {street}, {city}, {state} {postal}",
            "StreetNumber": number,
            "StreetName": street,
            "City": city,
            "StateOrProvince": state,
            "PostalCode": postal,
            "PropertyType": ptype,
            "BedroomsTotal": beds,
            "BathroomsTotalInteger": baths,
            "LivingArea": max(sqft, 0),
            "YearBuilt": rng.randint(1920, 2025),
            "ListingContractDate": f"{listed:%Y-%m-%d}",
            "ModificationTimestamp": modified_ms,
            "StatusChangeTimestamp": max(status_change, to_ms(listed)),
            "PhotosChangeTimestamp": modified_ms - rng.randint(0, 60) * DAY_MS,
            "PhotosCount": self.photos,
            "InteriorFeatures": self._multi(rng, "InteriorFeatures", 0, 5),
            "Appliances": self._multi(rng, "Appliances", 0, 5),
            "ParkingFeatures": self._multi(rng, "ParkingFeatures", 0, 2),
            "PublicRemarks": remarks,
            "ListAgentFullName": agent,
            "ListAgentMlsId": f"A{rng.randint(10000, 99999)}",
            "ListOfficeName": OFFICES[office],
            "ListOfficeMlsId": f"O{1000 + office}",
            "Latitude": round(lat + rng.uniform(-0.15, 0.15), 6),
            "Longitude": round(lon + rng.uniform(-0.15, 0.15), 6),
            "InFeed": 1,
            "Serial": serial,
        }

    def _multi(self, rng: random.Random, name: str, lo: int, hi: int) -> str:
        codes = self._feature_codes[name]
        picked = rng.sample(codes, rng.randint(lo, hi))
        return ",".join(sorted(picked, key=codes.index))

    def media(self, key: str, count: int, modified_ms: int) -> list[tuple[Any, ...]]:
        """Photo rows for one listing; shape (size, portrait, EXIF) is a pure function of the key."""
        return [self.media_row(key, order, 1, modified_ms) for order in range(count)]

    def media_row(self, key: str, order: int, version: int, modified_ms: int) -> tuple[Any, ...]:
        rng = random.Random(f"{self.seed}:{key}:{order}:{version}")
        roll = rng.random()
        if roll < 0.15:
            width, height, orientation = 768, 1024, 0  # portrait pixels
        elif roll < 0.25:
            width, height, orientation = 1024, 768, 6  # stored landscape, EXIF says rotate
        elif roll < 0.40:
            width, height, orientation = 2048, 1536, 1
        else:
            width, height, orientation = 1024, 768, 0
        caption = CAPTIONS[order % len(CAPTIONS)]
        return (f"{key}-{order}", key, order, version, width, height, orientation, modified_ms, caption)

    def rows(self, count: int, cluster: int) -> Iterator[tuple[dict[str, Any], list[tuple[Any, ...]]]]:
        """`count` listings; the last `cluster` of them (by serial) share one bulk-update timestamp."""
        rng = random.Random(self.seed)
        anchor = to_ms(ANCHOR)
        bulk = anchor - 3 * DAY_MS
        span = 720 * DAY_MS // 1000
        for serial in range(1, count + 1):
            # whole seconds outside the cluster: natural collisions too
            modified = bulk if serial > count - cluster else anchor - rng.randint(0, span) * 1000
            row = self.listing(rng, serial, modified)
            yield row, self.media(row["ListingKey"], self.photos, row["PhotosChangeTimestamp"])


def default_cluster(count: int) -> int:
    """Bulk-update cluster size: bigger than a 2,500-row page whenever the feed is big enough."""
    return min(count // 2, max(2600, count * 3 // 10))


class Store:
    """SQLite file with `listings` and `media` plus pristine copies for reset().

    One connection per thread (WAL mode) so a streamed search never blocks a mutation.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.write_lock = threading.RLock()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()

    def has_feed(self) -> bool:
        """Whether this file already holds a generated feed (a kept state, see MockMLS.keep_state)."""
        return self.conn().execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'listings_orig'").fetchone()[0] > 0

    def counter(self, name: str, add: int = 0) -> int:
        """A number kept in the file (the mutate() call count of a kept state), after adding `add`."""
        conn = self.conn()
        with self.write_lock:
            conn.execute("CREATE TABLE IF NOT EXISTS mock_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            conn.execute("INSERT INTO mock_state VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                         (name, add, add))
            return int(conn.execute("SELECT value FROM mock_state WHERE name = ?", (name,)).fetchone()[0])

    def create(self, generator: Generator, count: int, cluster: int) -> None:
        """Generate and bulk-insert everything in one transaction, then snapshot for reset()."""
        conn = self.conn()
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        conn.executescript(
            f"""
            DROP TABLE IF EXISTS listings; DROP TABLE IF EXISTS media;
            DROP TABLE IF EXISTS listings_orig; DROP TABLE IF EXISTS media_orig;
            CREATE TABLE listings ({cols}, PRIMARY KEY ("ListingKey")) WITHOUT ROWID;
            CREATE TABLE media ({", ".join(MEDIA_COLUMNS)}, PRIMARY KEY (MediaKey)) WITHOUT ROWID;
            """
        )
        marks = ", ".join("?" * len(COLUMNS))
        conn.execute("BEGIN")
        batch: list[tuple[Any, ...]] = []
        media: list[tuple[Any, ...]] = []
        for row, photos in generator.rows(count, cluster):
            batch.append(tuple(row[c] for c in COLUMNS))
            media.extend(photos)
            if len(batch) >= 5000:
                self._flush(conn, marks, batch, media)
        self._flush(conn, marks, batch, media)
        conn.execute("COMMIT")
        conn.executescript(
            """
            CREATE INDEX ix_mod ON listings (ModificationTimestamp, ListingKey);
            CREATE INDEX ix_status ON listings (StandardStatus);
            CREATE INDEX ix_postal ON listings (PostalCode);
            CREATE INDEX ix_city ON listings (City);
            CREATE INDEX ix_media_key ON media (ResourceRecordKey, MediaOrder);
            CREATE INDEX ix_media_mod ON media (MediaModificationTimestamp);
            CREATE TABLE listings_orig AS SELECT * FROM listings;
            CREATE TABLE media_orig AS SELECT * FROM media;
            """
        )
        self.create_roster(generator.seed)

    def create_roster(self, seed: int) -> dict[str, int]:
        """Members, offices and open houses of the listings (see roster.py); also for a kept state
        an older mock made without them."""
        from . import roster

        with self.write_lock:
            made = roster.create(self.conn(), seed)
            self.conn().execute("ANALYZE")
        return made

    def has_roster(self) -> bool:
        from . import roster

        return roster.present(self.conn())

    @staticmethod
    def _flush(conn: sqlite3.Connection, marks: str, batch: list[tuple[Any, ...]],
               media: list[tuple[Any, ...]]) -> None:
        conn.executemany(f"INSERT INTO listings VALUES ({marks})", batch)
        conn.executemany(MEDIA_INSERT, media)
        batch.clear()
        media.clear()

    def restore(self) -> None:
        """Back to the generated state."""
        from . import roster

        with self.write_lock:
            self.conn().executescript(
                """
                BEGIN;
                DELETE FROM listings; INSERT INTO listings SELECT * FROM listings_orig;
                DELETE FROM media; INSERT INTO media SELECT * FROM media_orig;
                """ + roster.restore_sql() + "COMMIT;"
            )

    def query(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn().execute(sql, params)

    def listing(self, key: str) -> dict[str, Any] | None:
        cur = self.query("SELECT * FROM listings WHERE ListingKey = ?", (key,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def media_for(self, keys: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
        """Current photo rows of these listings, ordered, keyed by listing."""
        out: dict[str, list[tuple[Any, ...]]] = {k: [] for k in keys}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            for row in self.query(
                f"SELECT {', '.join(MEDIA_COLUMNS)} FROM media WHERE ResourceRecordKey IN ({marks}) "
                "ORDER BY ResourceRecordKey, MediaOrder",
                chunk,
            ):
                out[row[1]].append(row)
        return out
