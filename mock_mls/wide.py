"""Production-width listings: the fields a real MLS's Property rows carry beyond the mock's 30.

A real Property class has hundreds of fields (the RESO Data Dictionary's Property resource about
600; an MLS's RETS class as many of its own), and a feed's COMPACT rows run to 2-5 KB where the
mock's are ~530 bytes. What a full record costs against a key list (a reconciliation's bytes)
depends on that width, so `extra_fields=N` adds N Character fields (`X_001`...) to RETS Property
searches that select every field, and to METADATA-TABLE. Their values are one of a few dozen
deterministic variants, picked by the listing key: a production row's bytes at little cost to serve.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

from .fields import Field

VARIANTS = 61
_WORDS = ("north", "garage", "updated", "kitchen", "oak", "tile", "corner", "lot", "view", "pool", "school",
          "district", "quiet", "street", "roof", "new", "central", "air", "gas", "water", "septic", "fence",
          "patio", "deck", "basement", "finished", "primary", "suite", "walk-in", "closet", "hoa", "dues")


@cache
def fields(n: int) -> tuple[Field, ...]:
    """The N extra fields, as RETS metadata describes them."""
    return tuple(Field(f"ExtraField{i:03d}", f"X_{i:03d}", "Character", 80, long_name=f"Extra Field {i}")
                 for i in range(1, n + 1))


@cache
def _variants(n: int) -> tuple[tuple[str, ...], ...]:
    rng = random.Random(f"wide:{n}")
    out = []
    for _ in range(VARIANTS):
        row = []
        for i in range(n):
            kind = i % 8
            if kind in (0, 1):  # a quarter of a real row's fields are empty
                row.append("")
            elif kind == 2:
                row.append(rng.choice(("Y", "N")))
            elif kind == 3:
                row.append(str(rng.randint(0, 250_000)))
            elif kind == 4:
                row.append(f"20{rng.randint(10, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
            elif kind == 5:
                row.append(f"{rng.randint(8, 24)}x{rng.randint(8, 24)}")
            else:  # feature lists, directions, remarks
                row.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 9))).capitalize())
        out.append(tuple(row))
    return tuple(out)


def values(key: str, n: int) -> tuple[str, ...]:
    """The extra fields' values of one listing (the same every time it is served)."""
    return _variants(n)[zlib.crc32(key.encode()) % VARIANTS]
