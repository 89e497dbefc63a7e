"""The object-store contract, run against S3 over HTTP (moto server) and against LocalStore."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from mls_sync import objectstore
from mls_sync.objectstore import (
    DEFAULT_CACHE_CONTROL,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreConfigError,
    S3Store,
    photo_key,
    store_from_settings,
)

from tests.integration.s3_server import CREDENTIALS, allow_public_read, make_bucket, moto_s3, s3_client

pytestmark = pytest.mark.integration

CDN = "https://d111111abcdef8.cloudfront.net"


@pytest.fixture(scope="module")
def endpoint_url() -> Iterator[str]:
    with moto_s3() as url:
        yield url


def count_calls(client: Any) -> Counter[str]:
    """How many S3 API calls of each kind the client makes from now on."""
    calls: Counter[str] = Counter()
    client.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
    return calls


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "media")
    client = s3_client(request.getfixturevalue("endpoint_url"))
    return S3Store(client, make_bucket(client), prefix="media", page_size=2)  # tiny pages: paging shows


def test_put_get_head_round_trip(store: ObjectStore) -> None:
    store.put("p/1/large.webp", b"RIFF-one", "image/webp")
    store.put("p/1/large.jpg", b"\xff\xd8two", "image/jpeg", cache_control="no-cache")
    assert store.get("p/1/large.webp") == b"RIFF-one"
    info = store.head("p/1/large.webp")
    assert (info.size, info.content_type, info.cache_control) == (8, "image/webp", DEFAULT_CACHE_CONTROL)
    assert store.head("p/1/large.jpg").cache_control == "no-cache"
    store.put("p/1/large.webp", b"RIFF-three", "image/webp")  # overwrite
    assert store.get("p/1/large.webp") == b"RIFF-three"
    assert store.exists("p/1/large.jpg") and not store.exists("p/1/nothing.jpg")
    with pytest.raises(ObjectNotFound):
        store.get("p/1/nothing.jpg")
    with pytest.raises(ObjectNotFound):
        store.head("p/nothing")


def test_put_many_uploads_everything_and_reports_failures(store: ObjectStore) -> None:
    items = [(f"m/{i}.webp", bytes([i]) * 3, "image/webp") for i in range(7)]
    assert store.put_many(items, workers=3) == 7
    assert list(store.list("m/")) == sorted(key for key, _, _ in items)
    assert store.get("m/6.webp") == b"\x06\x06\x06"
    with pytest.raises(ValueError, match="key"):
        store.put_many([("ok/1", b"x", "text/plain"), ("bad//key", b"x", "text/plain")])
    assert store.exists("ok/1")  # the good upload was not abandoned


def test_s3_objects_carry_their_headers(endpoint_url: str) -> None:
    client = s3_client(endpoint_url)
    bucket = make_bucket(client)
    S3Store(client, bucket, prefix="/media/").put("a/thumbnail.webp", b"x", "image/webp")
    head = client.head_object(Bucket=bucket, Key="media/a/thumbnail.webp")
    assert head["ContentType"] == "image/webp" and head["CacheControl"] == DEFAULT_CACHE_CONTROL


KEYS = ["a/1", "a/2", "a-b/1", "ab/1", "b/1"]


def test_list_is_a_string_prefix_in_byte_order(store: ObjectStore) -> None:
    for key in reversed(KEYS):
        store.put(key, key.encode(), "text/plain")
    calls = count_calls(store.client) if isinstance(store, S3Store) else None
    assert list(store.list()) == ["a-b/1", "a/1", "a/2", "ab/1", "b/1"]
    assert list(store.list("a/")) == ["a/1", "a/2"]
    assert list(store.list("a")) == ["a-b/1", "a/1", "a/2", "ab/1"]
    assert list(store.list("zz/")) == [] and list(store.list("a/1/")) == []
    if calls is not None:  # 5 keys at 2 a page: the paginator really paged
        assert calls["ListObjectsV2"] >= 3 + 2 + 2


def test_delete_is_batched_idempotent_and_works_while_listing(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objectstore, "DELETE_BATCH", 2)
    for key in KEYS:
        store.put(key, b"x", "text/plain")
    calls = count_calls(store.client) if isinstance(store, S3Store) else None
    assert store.delete(["a/1", "a/2", "a/1", "missing/1", "b/1"]) == 4  # dupes once, absent counts
    if calls is not None:
        assert calls["DeleteObjects"] == 2  # 4 distinct keys, 2 per call
    assert list(store.list()) == ["a-b/1", "ab/1"]
    assert store.delete(store.list()) == 2
    assert list(store.list()) == [] and store.delete([]) == 0
    if isinstance(store, LocalStore):  # S3 leaves no folders behind, neither may we
        assert [p.name for p in store.root.rglob("*") if p.is_file()] == []
        assert sorted(p.name for p in store.root.iterdir()) == [".meta", ".tmp"]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a\\b", "x\n"])
def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        store.put(key, b"x", "text/plain")


def test_public_url_serves_the_object(store: ObjectStore) -> None:
    store.put("p/1/large.jpg", b"\xff\xd8jpeg", "image/jpeg")
    url = store.public_url("p/1/large.jpg")
    if isinstance(store, S3Store):
        assert url == f"{store.client.meta.endpoint_url}/{store.bucket}/media/p/1/large.jpg"
        allow_public_read(store.client, store.bucket)
        reply = requests.get(url, timeout=10)
        assert reply.content == b"\xff\xd8jpeg" and reply.headers["Content-Type"] == "image/jpeg"
        assert reply.headers["Cache-Control"] == DEFAULT_CACHE_CONTROL
    else:
        assert url.startswith("file://") and Path(urlsplit(url).path).read_bytes() == b"\xff\xd8jpeg"
    store.public_base_url = CDN + "/"
    expected = "media/p/1/large.jpg" if isinstance(store, S3Store) else "p/1/large.jpg"
    assert store.public_url("p/1/large.jpg") == f"{CDN}/{expected}"


def test_aws_urls_are_virtual_hosted() -> None:
    import boto3

    client = boto3.client("s3", region_name="eu-west-3", **CREDENTIALS)
    url = S3Store(client, "photos").public_url("a/b.jpg")
    assert url == "https://photos.s3.eu-west-3.amazonaws.com/a/b.jpg"
    assert S3Store(client, "my.photos").public_url("a.jpg").endswith("amazonaws.com/my.photos/a.jpg")


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(3):
        store.put(f"k/{i}.jpg", b"x" * 10, "image/jpeg")
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert (tmp_path / "k" / "0.jpg").stat().st_mode & 0o044 == 0o044  # a static server can read it
    (tmp_path / "k" / "hand.png").write_bytes(b"x")  # dropped in by hand: type guessed
    assert store.head("k/hand.png").content_type == "image/png"


def test_store_from_settings(tmp_path: Path, endpoint_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    local = store_from_settings({"backend": "local", "root": str(tmp_path), "bucket": "ignored"})
    assert isinstance(local, LocalStore) and local.root == tmp_path.resolve()

    seen = []

    def factory(settings: Any) -> Any:
        seen.append(settings["aws_conn_id"])
        return s3_client(endpoint_url)

    settings = {"backend": "s3", "bucket": "b1", "prefix": "p", "aws_conn_id": "aws_media", "page_size": 7}
    s3 = store_from_settings({**settings, "public_base_url": CDN}, s3_client_factory=factory)
    assert isinstance(s3, S3Store) and seen == ["aws_media"]
    assert (s3.bucket, s3.prefix, s3.page_size, s3.public_base_url) == ("b1", "p", 7, CDN)

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    default = store_from_settings({"backend": "s3", "bucket": "bucket-two", "endpoint_url": endpoint_url})
    default.client.create_bucket(Bucket="bucket-two")
    default.put("k", b"v", "text/plain")
    assert default.get("k") == b"v"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "s3"}, "'bucket' is missing .* set bucket:"),
        ({"backend": "local"}, "'root' is missing"),
        ({"backend": "gcs", "bucket": "b"}, "'backend' must be 's3' or 'local', got 'gcs'"),
        ({"bakend": "s3"}, r"unknown .*\['bakend'\]: remove"),
        ({"backend": "s3", "bucket": 7}, "'bucket' must be a string"),
        ({"backend": "local", "root": "x", "public_base_url": "cdn.example.com"}, "http"),
        ({"backend": "s3", "bucket": "b", "page_size": 5000}, "'page_size'"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectStoreConfigError, match=message):
        store_from_settings(settings, s3_client_factory=lambda _: pytest.fail("no client for bad settings"))


def test_photo_key_layout() -> None:
    digest = "ab" * 32
    assert photo_key("photos", "demo", "L123", 0, digest, "large", "webp") == (
        "photos/demo/L123/0-abababababababab/large.webp"
    )
    assert photo_key("", "demo", "L1", 3, digest, "thumbnail", "jpg").startswith("demo/L1/3-")
    odd = photo_key("/a/b/", "demo", "12/34 #5", 1, digest, "medium", "jpg")
    assert odd.startswith("a/b/demo/12_34__5-") and odd.count("/") == 5
    # cleaning must not merge two listings into one folder
    slash, space = (photo_key("", "d", key, 0, digest, "large", "jpg") for key in ("A/1", "A 1"))
    assert slash != space
    assert photo_key("", "d", "..", 0, digest, "large", "jpg").startswith("d/_-")
    with pytest.raises(ValueError, match="content_hash"):
        photo_key("", "d", "L", 0, "xyz", "large", "jpg")
    with pytest.raises(ValueError, match="order"):
        photo_key("", "d", "L", -1, digest, "large", "jpg")
    with pytest.raises(ValueError, match="ext"):
        photo_key("", "d", "L", 0, digest, "large", "../jpg")
