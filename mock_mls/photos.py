"""Real JPEGs made on request: deterministic from (listing, order, version), cached in a small LRU.

Drawing lazily keeps start-up fast at 100,000 listings; distinct bytes per version let clients
prove they re-download a replaced photo and skip an unchanged one. With a photo directory, each
photo is drawn once and then served from its file, as a real server serves stored photos (drawing
a 2048x1536 JPEG costs about 12 ms of CPU, which a benchmark on the same cores would pay).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageDraw

ORIENTATION_TAG = 0x0112


def render(key: str, order: int, version: int, width: int, height: int, orientation: int) -> bytes:
    """A JPEG of the given pixel size; `orientation` > 0 writes an EXIF Orientation tag."""
    rng = random.Random(f"{key}:{order}:{version}")
    sky = tuple(rng.randrange(90, 200) for _ in range(3))
    ground = tuple(rng.randrange(30, 140) for _ in range(3))
    # A vertical gradient from a 1x256 strip, stretched: far cheaper than per-pixel drawing.
    strip = Image.linear_gradient("L").resize((1, 256))
    grad = Image.merge(
        "RGB",
        [strip.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(sky, ground, strict=True)],
    ).resize((width, height))
    draw = ImageDraw.Draw(grad)
    for _ in range(rng.randint(3, 6)):
        x0, y0 = rng.randrange(width), rng.randrange(height // 3, height)
        w, h = rng.randrange(width // 10, width // 3), rng.randrange(height // 10, height // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
    draw.polygon(
        [(width * 0.3, height * 0.55), (width * 0.5, height * 0.3), (width * 0.7, height * 0.55)],
        fill=tuple(rng.randrange(60, 200) for _ in range(3)),
    )
    draw.text((12, 12), f"{key} #{order} v{version}", fill=(255, 255, 255))
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 80}
    if orientation:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        kwargs["exif"] = exif.tobytes()
    grad.save(out, "JPEG", **kwargs)
    return out.getvalue()


def corrupt(data: bytes) -> bytes:
    """A JPEG that starts right but stops a third of the way in, like a half-written upstream file."""
    return data[: len(data) // 3].rstrip(b"\xd9")


class PhotoCache:
    """Thread-safe LRU of rendered photos keyed by (key, order, version), over an optional folder
    of rendered files."""

    def __init__(self, size: int = 64, directory: str | Path | None = None) -> None:
        self.size = size
        self.directory = Path(directory) if directory else None
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _file(self, *ident: object) -> Path | None:
        """One file per drawing: named by everything the drawing depends on (a listing key may
        hold any character, so it is hashed rather than cleaned)."""
        if self.directory is None:
            return None
        return self.directory / (hashlib.sha1(repr(ident).encode(), usedforsecurity=False).hexdigest() + ".jpg")

    def get(self, key: str, order: int, version: int, width: int, height: int, orientation: int) -> bytes:
        ident = (key, order, version)
        with self._lock:
            if ident in self._items:
                self._items.move_to_end(ident)
                return self._items[ident]
        path = self._file(key, order, version, width, height, orientation)
        if path is not None and path.exists():
            data = path.read_bytes()
        else:
            data = render(key, order, version, width, height, orientation)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # whole files only, even with two threads drawing the same photo
        with self._lock:
            self._items[ident] = data
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data
