"""Batch planning and failure classification of the media stage (no services)."""

from __future__ import annotations

import pytest
from mls_sync.media import error_category
from mls_sync.media_select import batch_keys, label, listing_of, photo_ref, split


def test_split_uses_batch_size_when_the_map_fits() -> None:
    keys = [f"L{i:03d}" for i in range(250)]
    chunks = split(keys, 100, 200)
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert [k for c in chunks for k in c] == keys


def test_split_grows_batches_instead_of_exceeding_the_map_limit() -> None:
    keys = [f"L{i:05d}" for i in range(10_001)]
    chunks = split(keys, 10, 200)
    assert len(chunks) <= 200
    assert max(len(c) for c in chunks) == 51
    assert [k for c in chunks for k in c] == keys


@pytest.mark.parametrize(("keys", "expected"), [
    ([], []), (["A"], [["A"]]),
])
def test_split_small(keys: list[str], expected: list[list[str]]) -> None:
    assert split(keys, 100, 1) == expected


def test_label_is_readable_and_short() -> None:
    assert label("demo_rets", ["20230101000000000001", "20230405000000000099"]) == \
        "demo_rets 2023010100..-2023040500.. (2 listings)"
    assert label("demo_reso", ["A1"]) == "demo_reso A1 (1 listing)"


def test_refs_round_trip_with_colons_in_keys() -> None:
    assert listing_of(photo_ref("MLS:123", 4)) == "MLS:123"
    assert listing_of(photo_ref("L1", 0)) == "L1"


def test_batch_keys_dedupes_and_drops_empty() -> None:
    assert batch_keys({"keys": ["B", "A", "B", "", None]}) == ["B", "A"]
    assert batch_keys({}) == []


@pytest.mark.parametrize(("message", "category"), [
    ("HTTP 404 Not Found for photo X", "data"),
    ("RETS ReplyCode 20403 No Object Found", "data"),
    ("not an image (Content-Type text/html)", "data"),
    ("truncated: the image data ends early", "data"),
    ("Read timed out. (read timeout=120)", "network"),
    ("HTTP 503 Service Unavailable", "network"),
    ("Connection reset by peer", "network"),
])
def test_error_category(message: str, category: str) -> None:
    assert error_category(message) == category
