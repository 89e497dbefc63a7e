"""Generator and photo rendering of the mock MLS: deterministic, varied, realistic."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mock_mls.data import Generator, Store, default_cluster
from mock_mls.fields import BY_RESO, LOOKUPS, STATUSES, decode, encode
from mock_mls.photos import ORIENTATION_TAG, PhotoCache, corrupt, render


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    gen = Generator(seed=11, photos_per_listing=3)
    return [row for row, _media in gen.rows(3000, cluster=900)]


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = [r for r, _ in Generator(5, 2).rows(50, 10)]
    b = [r for r, _ in Generator(5, 2).rows(50, 10)]
    c = [r for r, _ in Generator(6, 2).rows(50, 10)]
    assert a == b
    assert a != c


def test_statuses_cover_all_eleven_and_mostly_active(rows: list[dict]) -> None:
    counts = Counter(r["StandardStatus"] for r in rows)
    assert set(counts) == {std for _long, std in STATUSES.values()}
    assert counts["Active"] / len(rows) > 0.45
    assert all(r["StandardStatus"] == STATUSES[r["MlsStatus"]][1] for r in rows)


def test_fields_look_like_listings(rows: list[dict]) -> None:
    keys = [r["ListingKey"] for r in rows]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 20 and k.isdigit() for k in keys)
    assert any("-" in r["PostalCode"] for r in rows)  # ZIP+4 on a few
    assert sum("-" in r["PostalCode"] for r in rows) < len(rows) / 4
    assert any("<" in r["PublicRemarks"] for r in rows) and any("&amp;" in r["PublicRemarks"] for r in rows)
    assert any("," in r["Appliances"] for r in rows)
    assert len({r["City"] for r in rows}) > 10
    assert all(r["ListingId"].startswith("MLS") for r in rows)


def test_bulk_cluster_shares_one_timestamp(rows: list[dict]) -> None:
    top = Counter(r["ModificationTimestamp"] for r in rows).most_common(1)[0][1]
    assert top == 900
    assert default_cluster(10_000) > 2500
    assert default_cluster(100_000) > 2500
    assert default_cluster(2000) == 1000


def test_lookup_decode_encode_round_trip() -> None:
    f = BY_RESO["Appliances"]
    assert decode(f, "DW,MW") == "Dishwasher,Microwave"
    assert encode(BY_RESO["MlsStatus"], "Pending") == "PND"
    assert all("," not in long for table in LOOKUPS.values() for long in table.values())


def test_store_create_restore(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.sqlite")
    store.create(Generator(3, 2), 200, 50)
    assert store.query("SELECT COUNT(*) FROM listings").fetchone()[0] == 200
    assert store.query("SELECT COUNT(*) FROM media").fetchone()[0] == 400
    store.conn().execute("DELETE FROM listings")
    store.restore()
    assert store.query("SELECT COUNT(*) FROM listings").fetchone()[0] == 200
    store.close()


def test_photos_are_real_distinct_jpegs() -> None:
    a = render("k1", 0, 1, 1024, 768, 0)
    assert a == render("k1", 0, 1, 1024, 768, 0)
    assert a != render("k1", 0, 2, 1024, 768, 0) != render("k1", 1, 1, 1024, 768, 0)
    big = Image.open(io.BytesIO(render("k2", 0, 1, 2048, 1536, 1)))
    assert big.size == (2048, 1536) and big.format == "JPEG"
    rotated = Image.open(io.BytesIO(render("k3", 0, 1, 1024, 768, 6)))
    assert rotated.getexif()[ORIENTATION_TAG] == 6
    with pytest.raises(OSError):
        Image.open(io.BytesIO(corrupt(a))).load()


def test_media_rows_vary_in_size_and_orientation() -> None:
    gen = Generator(1, 5)
    shapes = {(r[4], r[5], r[6]) for i in range(200) for r in gen.media(f"k{i}", 5, 0)}
    assert {(768, 1024, 0), (2048, 1536, 1), (1024, 768, 6), (1024, 768, 0)} <= shapes


def test_photo_cache_is_bounded() -> None:
    cache = PhotoCache(size=2)
    for order in range(4):
        cache.get("k", order, 1, 64, 48, 0)
    assert len(cache._items) == 2


def test_photo_folder_draws_each_photo_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PhotoCache(size=1, directory=tmp_path)
    first = cache.get("k/1", 0, 1, 64, 48, 0)
    assert first == render("k/1", 0, 1, 64, 48, 0)
    assert [p.suffix for p in tmp_path.iterdir()] == [".jpg"]  # one file, no temp files left behind
    cache.get("k_1", 0, 1, 64, 48, 0)  # a key that a cleaned-up file name would confuse with k/1
    assert len(list(tmp_path.iterdir())) == 2

    def no_drawing(*_: object) -> bytes:
        raise AssertionError("a stored photo was drawn again")

    monkeypatch.setattr("mock_mls.photos.render", no_drawing)
    assert PhotoCache(size=1, directory=tmp_path).get("k/1", 0, 1, 64, 48, 0) == first
