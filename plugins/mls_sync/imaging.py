"""Photo processing: MLS photo bytes in, web-ready variants out. Pure CPU, no IO.

MLS photos arrive from servers we do not control, so every input is treated as hostile: the
format is whitelisted, the pixel count is checked from the header before anything is decoded
(decompression bombs), and truncated or non-image bytes raise `ImageError` with a reason the
media stage records per photo. Outputs carry no metadata at all (agents' phones put GPS in EXIF).

Speed: the media stage spends its time here, so JPEGs are decoded at the smallest DCT scale that
still covers the largest variant, each smaller variant is resized from the previous one, and
batches go through a process pool (`PhotoProcessor` / `process_many`) to use every core.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import math
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_SIZES: Mapping[str, int] = {"thumbnail": 320, "medium": 800, "large": 1600}
DEFAULT_FORMATS: tuple[str, ...] = ("webp", "jpeg")
DEFAULT_QUALITY = 82
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 40 * 2**20
# libwebp effort 0..6. 4 (Pillow's default) is the smallest files; 2 is ~2.5x faster for ~5%
# larger files (measured on 1600px photos) -- the knob when CPU, not CDN bytes, is the limit.
DEFAULT_WEBP_METHOD = 4

# What MLS servers actually send (JPEG covers MPO, which the JPEG opener returns). Anything else
# (PSD, EPS, PDF, ...) is refused up front so the rarely exercised decoders never see untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
CONTENT_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"webp": "webp", "jpeg": "jpg", "png": "png"}
# Leading bytes of the accepted formats: tells "a damaged photo" from "an HTML error page".
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF8", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the picture a quarter
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0  # integer pre-reduction for big steps; beyond 3x it is visually lossless


class ImageError(ValueError):
    """The bytes cannot become photo variants. `reason`: not_an_image, truncated, too_large, corrupt.

    Data errors: the media stage logs them against the photo and never retries.
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # keeps `reason` across the process pool
        return (type(self), (str(self), self.reason))


@dataclass(frozen=True, slots=True)
class Variant:
    """One encoded rendition; `name` is the size name (thumbnail/medium/large), `fmt` the codec."""

    name: str
    fmt: str
    width: int
    height: int
    data: bytes
    content_type: str

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.fmt]


@dataclass(frozen=True, slots=True)
class ProcessedPhoto:
    """The variants of one photo plus what the database records about the original."""

    content_hash: str  # sha256 hex of the original bytes: the dedupe / cache-busting key
    width: int  # after EXIF orientation
    height: int
    format: str  # detected, lower case: jpeg, png, gif, webp, tiff, bmp, mpo
    variants: tuple[Variant, ...]

    def variant(self, name: str, fmt: str) -> Variant:
        for v in self.variants:
            if v.name == name and v.fmt == fmt:
                return v
        raise KeyError(f"no variant {name!r} in {fmt!r}")


def content_hash(data: bytes) -> str:
    """sha256 hex; exposed so callers can skip photos they already stored before decoding."""
    return hashlib.sha256(data).hexdigest()


def fit_size(width: int, height: int, box: int) -> tuple[int, int]:
    """Size within a `box` x `box` square, never upscaled; Pillow's `thumbnail()` rounding.

    Matching `thumbnail()` exactly keeps our variants pixel-for-pixel the size a plain Pillow
    loop would give, so the benchmark compares like with like.
    """
    if width <= box and height <= box:
        return width, height
    aspect = width / height
    x = y = box
    if x / y >= aspect:
        x = _round_aspect(y * aspect, lambda n: abs(aspect - n / y))
    else:
        y = _round_aspect(x / aspect, lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _round_aspect(number: float, key: Any) -> int:
    return max(min(math.floor(number), math.ceil(number), key=key), 1)


def _check_options(sizes: Mapping[str, int], formats: Sequence[str], quality: int) -> None:
    if not sizes:
        raise ValueError("sizes must name at least one variant, e.g. {'large': 1600}")
    bad = [f for f in formats if f not in CONTENT_TYPES]
    if bad or not formats:
        raise ValueError(f"formats {bad or formats!r} not supported; use some of {sorted(CONTENT_TYPES)}")
    if any(not isinstance(s, int) or s < 1 for s in sizes.values()):
        raise ValueError(f"sizes must be positive integers (pixels of the longest side), got {dict(sizes)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")


def _open(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open from the header only and refuse what we will not decode."""
    if len(data) > max_bytes:
        raise ImageError(
            f"too large: {len(data)} bytes exceeds the {max_bytes}-byte limit", reason="too_large"
        )
    if not data:
        raise ImageError("not an image: empty body", reason="not_an_image")
    try:
        im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large: {exc}", reason="too_large") from exc
    except UnidentifiedImageError as exc:
        sniffed = _sniff(data)
        if sniffed:
            raise ImageError(f"corrupt {sniffed} image: its header cannot be read", reason="corrupt") from exc
        head = data[:16]
        raise ImageError(
            f"not an image: no accepted image format ({', '.join(ACCEPTED_FORMATS)}) recognises "
            f"bytes starting {head!r}",
            reason="not_an_image",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}", reason="corrupt") from exc
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise ImageError(
            f"too large: {im.width}x{im.height} = {pixels} pixels exceeds the {max_pixels}-pixel limit "
            "(decompression bomb guard)",
            reason="too_large",
        )
    return im


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def _load(im: Image.Image) -> None:
    # LOAD_TRUNCATED_IMAGES is process-global and someone may have set it; we never accept
    # silently grey-padded photos. Only touched when set, as other threads may be decoding.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    if saved:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large: {exc}", reason="too_large") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        text = str(exc)
        if isinstance(exc, EOFError) or "truncated" in text or "broken data stream" in text:
            raise ImageError(f"truncated: the image data ends early ({text})", reason="truncated") from exc
        raise ImageError(f"corrupt image data: {text}", reason="corrupt") from exc
    finally:
        if saved:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    """Transform from an embedded profile to sRGB, or None when it already is sRGB / unusable.

    Cached: a listing's photos nearly always come from one camera with one profile.
    """
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if in_mode != "CMYK" and "srgb" in ImageCms.getProfileDescription(src).lower().replace(" ", ""):
            return None
        return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), in_mode, out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _to_srgb(im: Image.Image) -> Image.Image:
    """RGB, or RGBA when the alpha is really used; colours moved into sRGB when profiled.

    We strip the ICC profile from outputs, so a wide-gamut (Adobe RGB, Display P3) or CMYK photo
    must be converted now or browsers would show it washed out.
    """
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode.startswith("I") or mode == "F":  # 16-bit / float greyscale (PNG, TIFF)
        wide, scale = ("F", 255) if mode == "F" else ("I", 1 / 256)
        im = im.convert(wide).point(lambda v: v * scale).convert("L")
    if im.mode == "RGBA" and im.getchannel("A").getextrema()[0] == 255:
        im = im.convert("RGB")
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "CMYK", "L"):
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        transform = _srgb_transform(icc, im.mode, out_mode)
        if transform is not None:
            im = ImageCms.applyTransform(im, transform)
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")
    im.info = {}  # nothing of the original's metadata survives into the variants
    return im


def _flatten(im: Image.Image) -> Image.Image:
    """Alpha onto white: JPEG has no alpha, and black (Pillow's default) looks broken."""
    if im.mode != "RGBA":
        return im
    out = Image.new("RGB", im.size, (255, 255, 255))
    out.paste(im, mask=im.getchannel("A"))
    return out


def _encode(im: Image.Image, fmt: str, quality: int, webp_method: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        _flatten(im).save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=webp_method)
    else:
        im.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def make_variants(
    data: bytes,
    sizes: Mapping[str, int] = DEFAULT_SIZES,
    formats: Sequence[str] = DEFAULT_FORMATS,
    quality: int = DEFAULT_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    webp_method: int = DEFAULT_WEBP_METHOD,
) -> ProcessedPhoto:
    """Every size x format variant of one photo; raises `ImageError` for bytes we refuse.

    `sizes` are the longest side in pixels; a smaller original keeps its own size (never
    upscaled). Variants come in `sizes` order, then `formats` order.
    """
    _check_options(sizes, formats, quality)
    digest = content_hash(data)
    im = _open(data, max_pixels, max_bytes)
    detected = (im.format or "unknown").lower()
    orientation = _orientation(im)
    width, height = (im.height, im.width) if orientation in _SWAPS_AXES else (im.width, im.height)
    targets = {name: fit_size(width, height, box) for name, box in sizes.items()}
    largest = max(targets.values())
    # DCT-domain downscale: decodes 2-8x fewer pixels, never below the largest variant.
    im.draft(None, (largest[1], largest[0]) if orientation in _SWAPS_AXES else largest)
    _load(im)
    if orientation != 1:
        ImageOps.exif_transpose(im, in_place=True)
    try:
        current = _to_srgb(im)
    except (ValueError, OSError) as exc:  # exotic modes Pillow cannot convert: this photo only
        raise ImageError(f"unsupported image: {im.mode} {detected} cannot be converted ({exc})") from exc
    rendered: dict[str, Image.Image] = {}
    for name in sorted(targets, key=lambda n: targets[n], reverse=True):
        size = targets[name]
        if current.size != size:
            current = current.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP)
        rendered[name] = current
    variants = tuple(
        Variant(name, fmt, *image.size, _encode(image, fmt, quality, webp_method), CONTENT_TYPES[fmt])
        for name, image in ((name, rendered[name]) for name in sizes)
        for fmt in formats
    )
    return ProcessedPhoto(digest, width, height, detected, variants)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)  # Orientation
    except Exception:  # a broken EXIF block must not cost the photo
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def floor_variants(
    data: bytes,
    sizes: Mapping[str, int] = DEFAULT_SIZES,
    formats: Sequence[str] = DEFAULT_FORMATS,
    quality: int = DEFAULT_QUALITY,
    *,
    webp_method: int = DEFAULT_WEBP_METHOD,
) -> list[tuple[str, str, int, int, bytes]]:
    """The benchmark's reference: the plain Pillow loop anyone would write for the same variants.

    Same encoder settings as `make_variants`, no safety checks, no decode tricks, no cascade.
    """
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    im = im.convert("RGB")
    out = []
    for name, box in sizes.items():
        small = im.copy()
        small.thumbnail((box, box), _RESAMPLE)
        for fmt in formats:
            buf = io.BytesIO()
            if fmt == "jpeg":
                small.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
            else:
                small.save(buf, fmt.upper(), quality=quality, method=webp_method)
            out.append((name, fmt, small.width, small.height, buf.getvalue()))
    return out


def _process_one(options: dict[str, Any], data: bytes) -> ProcessedPhoto | ImageError:
    try:
        return make_variants(data, **options)
    except ImageError as exc:
        return exc


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start pool workers without re-running the parent's main script in them.

    forkserver and spawn re-run `__main__` in each worker. When that is a console script with no
    module spec and no `__main__` guard, such as Airflow's `airflow` entry point, the script runs
    again: inside an Airflow task it imports Airflow with the metadata database URL Airflow blocks
    in task processes, and every worker dies (BrokenProcessPool). The workers need only this
    module, so multiprocessing is not told where such a script is. A `python -m` module (with a
    spec) is re-imported as usual.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class PhotoProcessor:
    """A reusable process pool making variants for batches; results come back in input order.

    The pool starts on first use of a batch of two or more and is kept for later batches (single
    photos go to it too once it runs); a
    failing photo yields its `ImageError` in place instead of failing the batch. The default start
    method is forkserver on Linux: Airflow task processes run threads (uploads, heartbeats), and
    forking those is unsafe. Like spawn, it re-imports the main module in the workers, so a script
    using the pool needs the usual `if __name__ == "__main__":` guard.
    """

    def __init__(
        self, workers: int | None = None, *, start_method: str | None = None, **options: Any
    ) -> None:
        """`options` are `make_variants`' keyword arguments, checked here rather than per photo."""
        bound = inspect.signature(make_variants).bind(b"", **options)  # TypeError names a bad key
        bound.apply_defaults()
        _check_options(bound.arguments["sizes"], bound.arguments["formats"], bound.arguments["quality"])
        self.workers = max(1, workers or _cpu_count())
        self._options = {k: v for k, v in bound.arguments.items() if k != "data"}
        self._options.update(sizes=dict(self._options["sizes"]), formats=tuple(self._options["formats"]))
        self._start_method = start_method or ("forkserver" if sys.platform == "linux" else "spawn")
        self._pool: Executor | None = None

    def process(self, data: bytes) -> ProcessedPhoto | ImageError:
        """One photo in this process (no pool round trip)."""
        return _process_one(self._options, data)

    def map(self, items: Iterable[bytes]) -> Iterator[ProcessedPhoto | ImageError]:
        """Variants for each item, in order; parallel when there is more than one."""
        batch = list(items)
        # A single photo skips the pool only until the pool exists: a pipeline that feeds photos
        # one at a time (the media stage once its permits are all in use) would otherwise run
        # them all in the calling process's threads, next to its downloads and uploads.
        if self.workers == 1 or (len(batch) < 2 and self._pool is None):
            yield from (self.process(data) for data in batch)
            return
        if self._pool is None and multiprocessing.current_process().daemon:
            # A Celery prefork worker's tasks run in daemonic processes, which may not start
            # processes of their own; threads still overlap, as Pillow drops the GIL in resize/encode.
            self._pool = ThreadPoolExecutor(max_workers=self.workers)
        if self._pool is None:
            ctx = multiprocessing.get_context(self._start_method)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        with _main_script_hidden():  # the workers start on the first submit
            results = self._pool.map(functools.partial(_process_one, self._options), batch)
        yield from results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PhotoProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_many(
    items: Iterable[bytes],
    workers: int | None = None,
    **options: Any,
) -> list[ProcessedPhoto | ImageError]:
    """One-shot batch: `make_variants` over `items` on a throwaway pool (options as there)."""
    with PhotoProcessor(workers, **options) as processor:
        return list(processor.map(items))
