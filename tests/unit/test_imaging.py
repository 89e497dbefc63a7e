"""Photo variants: sizes, orientation, metadata stripping, odd modes, hostile bytes, the pool."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import pytest
from mls_sync import imaging
from mls_sync.imaging import ImageError, fit_size, floor_variants, make_variants, process_many
from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageStat

from tests.shared_fixtures import SHARED_FIXTURES

FIXTURES = SHARED_FIXTURES / "librets" / "unit"
SMALL = {"thumbnail": 64, "medium": 200, "large": 400}  # keeps the suite fast


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A photo-ish picture with distinct quadrants, so orientation mistakes are visible."""
    im = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, width // 2, height // 2), fill=(220, 30, 30))  # red top-left
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(250, 220, 40))
    if mode == "P":  # adaptive, so each flat area is one palette index (no dithering)
        return im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return im if mode == "RGB" else im.convert(mode)


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def rapattoni_jpegs() -> list[bytes]:
    """The three JPEG parts of a real multipart GetObject answer."""
    body = (FIXTURES / "get-object-response-rapattoni.txt").read_bytes()
    parts = body.split(b"--simple boundary")[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") for part in parts]


def test_variants_have_the_requested_sizes_formats_and_hash() -> None:
    data = encode(picture(1000, 750))
    photo = make_variants(data, sizes=SMALL)
    assert photo.content_hash == imaging.content_hash(data) and len(photo.content_hash) == 64
    assert (photo.width, photo.height, photo.format) == (1000, 750, "jpeg")
    expected = {"thumbnail": (64, 48), "medium": (200, 150), "large": (400, 300)}
    assert [(v.name, v.fmt) for v in photo.variants] == [
        (n, f) for n in ("thumbnail", "medium", "large") for f in ("webp", "jpeg")
    ]
    for v in photo.variants:
        im = decode(v.data)
        assert im.format == v.fmt.upper() and v.content_type == f"image/{v.fmt}"
        assert im.size == (v.width, v.height) == expected[v.name]
        assert im.mode == "RGB"
    assert decode(photo.variant("large", "jpeg").data).info.get("progressive")


def test_default_sizes_on_a_camera_sized_photo_match_the_plain_pillow_loop() -> None:
    data = encode(picture(2048, 1536), quality=90)
    photo = make_variants(data)
    sizes = {(v.name, v.width, v.height) for v in photo.variants}
    assert sizes == {("thumbnail", 320, 240), ("medium", 800, 600), ("large", 1600, 1200)}
    floor = {(name, w, h) for name, _fmt, w, h, _data in floor_variants(data)}
    assert floor == sizes


def test_pixels_match_the_plain_pillow_loop() -> None:
    """Reduced-size decoding and the resize cascade must not cost visible quality."""
    noisy = Image.blend(picture(1600, 1200), Image.effect_noise((1600, 1200), 50).convert("RGB"), 0.3)
    data = encode(noisy, quality=90)
    ours = make_variants(data, sizes=SMALL)
    for name, fmt, _w, _h, reference in floor_variants(data, SMALL):
        diff = ImageChops.difference(decode(ours.variant(name, fmt).data), decode(reference))
        assert max(ImageStat.Stat(diff).mean) < 3, (name, fmt)


def test_never_upscales() -> None:
    photo = make_variants(encode(picture(150, 100)), sizes=SMALL)
    assert {(v.name, v.width, v.height) for v in photo.variants} == {
        ("thumbnail", 64, 43),
        ("medium", 150, 100),
        ("large", 150, 100),
    }


@pytest.mark.parametrize(("width", "height", "box"), [(601, 400, 320), (400, 601, 320), (3, 1000, 10)])
def test_fit_size_rounds_like_pillow_thumbnail(width: int, height: int, box: int) -> None:
    im = Image.new("L", (width, height))
    im.thumbnail((box, box))
    assert fit_size(width, height, box) == im.size


@pytest.mark.parametrize("scale", [1, 4])  # 4: the JPEG is decoded at reduced size first
def test_exif_orientation_is_applied_and_then_dropped(scale: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    data = encode(picture(400 * scale, 300 * scale), exif=exif.tobytes())
    photo = make_variants(data, sizes=SMALL)
    assert (photo.width, photo.height) == (300 * scale, 400 * scale)
    large = decode(photo.variant("large", "jpeg").data)
    assert large.size == (300, 400)
    r, g, b = large.getpixel((280, 20))  # stored top-left red is now top-right
    assert r > 180 and g < 80 and b < 80
    assert 0x0112 not in large.getexif()


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (40.0, 26.0, 46.0), 3: "W", 4: (79.0, 58.0, 56.0)}  # GPS IFD
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b"<x:xmpmeta>agent</x:xmpmeta>"
    data = encode(picture(500, 400), exif=exif.tobytes(), icc_profile=srgb, xmp=xmp)
    assert decode(data).getexif().get_ifd(0x8825)  # the input really carries GPS
    for v in make_variants(data, sizes=SMALL).variants:
        im = decode(v.data)
        assert not im.getexif() and "icc_profile" not in im.info and "xmp" not in im.info
        assert b"PhoneMaker" not in v.data and b"agent" not in v.data


def red_blue_swapped_profile() -> bytes:
    """An RGB profile that is not sRGB: sRGB with the red and blue colorants exchanged."""
    srgb = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", srgb[128:132])[0]
    table = {bytes(srgb[132 + 12 * i : 136 + 12 * i]): 136 + 12 * i for i in range(count)}
    red, blue = table[b"rXYZ"], table[b"bXYZ"]
    srgb[red : red + 8], srgb[blue : blue + 8] = srgb[blue : blue + 8], srgb[red : red + 8]
    return bytes(srgb).replace("sRGB".encode("utf-16-be"), "tRGB".encode("utf-16-be"))


@pytest.mark.parametrize(("profile", "expected"), [("sRGB", (255, 0, 0)), ("swapped", (0, 0, 255))])
def test_colours_are_converted_to_srgb_before_the_profile_is_dropped(
    profile: str, expected: tuple[int, int, int]
) -> None:
    icc = (
        ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        if profile == "sRGB"
        else red_blue_swapped_profile()
    )
    data = encode(Image.new("RGB", (80, 60), (255, 0, 0)), "PNG", icc_profile=icc)
    photo = make_variants(data, sizes=SMALL, formats=("webp",))
    pixel = decode(photo.variant("large", "webp").data).getpixel((40, 30))
    assert all(abs(a - b) < 8 for a, b in zip(pixel, expected, strict=True)), pixel


def test_cmyk_jpeg_becomes_rgb() -> None:
    photo = make_variants(encode(picture(300, 200, "CMYK")), sizes=SMALL)
    large = decode(photo.variant("large", "jpeg").data)
    assert large.mode == "RGB" and large.size == (300, 200)
    r, g, b = large.getpixel((10, 10))
    assert r > 180 and g < 90 and b < 90


def test_palette_greyscale_and_16_bit_inputs() -> None:
    for im in (picture(300, 200, "P"), picture(300, 200, "L"), picture(300, 200, "LA")):
        photo = make_variants(encode(im, "PNG"), sizes=SMALL, formats=("jpeg",))
        assert decode(photo.variant("large", "jpeg").data).mode == "RGB", im.mode
    deep = Image.linear_gradient("L").resize((300, 200)).convert("I").point(lambda v: v * 256)
    for data in (encode(deep.convert("I;16"), "PNG"), encode(deep.convert("I;16B"), "TIFF")):
        large = decode(make_variants(data, sizes=SMALL).variant("large", "jpeg").data)
        low, high = large.getextrema()[0]
        assert large.mode == "RGB" and low < 10 and high > 245  # 16-bit range kept, not clipped
    gif = (FIXTURES / "abc123-1.gif").read_bytes()
    photo = make_variants(gif, sizes=SMALL)
    assert photo.format == "gif" and all(v.width == photo.width for v in photo.variants)


def test_transparency_flattened_onto_white_for_jpeg_kept_for_webp() -> None:
    im = picture(300, 200, "RGBA")
    im.putalpha(Image.new("L", im.size, 255))
    ImageDraw.Draw(im).rectangle((0, 0, 99, 199), fill=(0, 0, 0, 0))  # transparent left third
    photo = make_variants(encode(im, "PNG"), sizes=SMALL)
    jpeg = decode(photo.variant("large", "jpeg").data)
    assert jpeg.mode == "RGB" and min(jpeg.getpixel((10, 100))) > 245
    webp = decode(photo.variant("large", "webp").data)
    assert webp.mode == "RGBA" and webp.getpixel((10, 100))[3] == 0
    # a palette GIF with a transparent index takes the same path
    pal = picture(120, 80, "P")
    gif = make_variants(encode(pal, "GIF", transparency=pal.getpixel((0, 0))), sizes=SMALL)
    assert min(decode(gif.variant("large", "jpeg").data).getpixel((5, 5))) > 245


def test_opaque_alpha_is_dropped() -> None:
    photo = make_variants(encode(picture(100, 80, "RGBA"), "PNG"), sizes=SMALL, formats=("webp",))
    assert decode(photo.variant("large", "webp").data).mode == "RGB"


def test_real_mls_photos() -> None:
    jpegs = rapattoni_jpegs()
    assert len(jpegs) == 3
    for data in jpegs:
        photo = make_variants(data, sizes=SMALL)
        assert photo.format == "jpeg" and len(photo.variants) == 6


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "not_an_image", "not an image"),
        (b"<html>Service Unavailable</html>", "not_an_image", "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not_an_image", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt", "corrupt jpeg"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt", "corrupt png"),
    ],
)
def test_non_images_are_refused_clearly(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ImageError, match=words) as err:
        make_variants(data, sizes=SMALL)
    assert err.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused(fmt: str) -> None:
    noisy = Image.effect_noise((300, 200), 60).convert("RGB")
    data = encode(noisy, fmt)
    with pytest.raises(ImageError, match="truncated") as err:
        make_variants(data[: len(data) // 2], sizes=SMALL)
    assert err.value.reason == "truncated"


def png_header_only(width: int, height: int) -> bytes:
    """A 60-byte PNG that claims to be huge: what a decompression bomb looks like to the opener."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


@pytest.mark.parametrize("side", [8_000, 100_000])  # over our limit; over Pillow's own as well
def test_decompression_bombs_are_refused_before_decoding(side: int) -> None:
    with pytest.raises(ImageError, match="too large") as err:
        make_variants(png_header_only(side, side), sizes=SMALL)
    assert err.value.reason == "too_large"


def test_byte_and_pixel_limits_are_configurable() -> None:
    data = encode(picture(300, 200))
    with pytest.raises(ImageError, match=r"too large.*pixel"):
        make_variants(data, sizes=SMALL, max_pixels=300 * 200 - 1)
    with pytest.raises(ImageError, match=r"too large.*byte"):
        make_variants(data, sizes=SMALL, max_bytes=len(data) - 1)


def test_bad_options_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="formats"):
        make_variants(b"", formats=("gif",))
    with pytest.raises(ValueError, match="sizes"):
        make_variants(b"", sizes={"large": 0})


def test_image_error_survives_pickling() -> None:
    blob = pickle.dumps(ImageError("truncated: x", reason="truncated"))
    err = pickle.loads(blob)  # noqa: S301 - our own bytes, as the process pool does
    assert (str(err), err.reason) == ("truncated: x", "truncated")


def test_process_pool_matches_serial_results() -> None:
    items = [encode(picture(600, 400)), b"not an image", *rapattoni_jpegs()[:2]]
    serial = [imaging.PhotoProcessor(workers=1, sizes=SMALL).process(data) for data in items]
    pooled = process_many(items, workers=2, sizes=SMALL)
    assert [type(r) for r in pooled] == [imaging.ProcessedPhoto, ImageError, *[imaging.ProcessedPhoto] * 2]
    assert pooled[0] == serial[0] and pooled[2:] == serial[2:]
    assert isinstance(serial[1], ImageError) and pooled[1].reason == serial[1].reason == "not_an_image"


def test_pool_works_under_a_console_script_that_must_not_run_twice(tmp_path) -> None:
    """Airflow runs a task under its `airflow` console script and blocks the metadata database in
    the task's environment; a pool worker that re-ran that script would import Airflow there and
    die (BrokenProcessPool: every photo of a LocalExecutor media task failed). The workers need
    only this module, so a script without a module spec is not re-run in them."""
    import subprocess
    import sys

    from devstack import ROOT

    script = tmp_path / "console-script"  # no .py, no __main__ guard, like bin/airflow
    script.write_text(
        "import os, sys\n"
        "if os.environ.get('IN_CHILD'):\n"
        "    sys.exit('the parent script ran again in a pool worker')\n"
        "os.environ['IN_CHILD'] = '1'  # what the children inherit, like AIRFLOW__DATABASE__SQL_ALCHEMY_CONN\n"
        "from mls_sync.imaging import PhotoProcessor\n"
        "from PIL import Image\n"
        "import io\n"
        "buf = io.BytesIO(); Image.new('RGB', (300, 200), 'red').save(buf, 'JPEG')\n"
        "with PhotoProcessor(workers=2, sizes={'thumbnail': 64}) as p:\n"
        "    out = list(p.map([buf.getvalue()] * 3))\n"
        "print('variants', sum(len(r.variants) for r in out))\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "variants 6"
