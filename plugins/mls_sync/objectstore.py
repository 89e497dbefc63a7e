"""The one module that reaches object storage: S3 (or any S3 endpoint) in production, a folder
for the demo and the CLI. Both backends honour the same contract, tested by the same tests:

- keys are relative to the store's prefix, '/'-separated, no '.'/'..' segments;
- `put` overwrites and is atomic for readers; `delete` is idempotent (a missing key counts as
  deleted, as S3 does) and batched; `list` is a string-prefix match in byte order, like S3.

Photo keys embed the content hash, so a changed photo gets a new URL and objects can be cached
forever (`immutable`); stale keys are deleted, never overwritten with other bytes.
"""

from __future__ import annotations

import abc
import hashlib
import json
import mimetypes
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_CACHE_CONTROL = "public, max-age=31536000, immutable"
DELETE_BATCH = 1000  # S3 DeleteObjects accepts at most 1000 keys per call
MAX_KEY_BYTES = 1024  # S3's limit on a whole key


class ObjectStoreError(Exception):
    """Storage refused or failed an operation (after the client's own retries)."""


class ObjectNotFound(ObjectStoreError, LookupError):
    """`get`/`head` of a key that does not exist."""


class ObjectStoreConfigError(ObjectStoreError, ValueError):
    """The store settings are wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    cache_control: str | None


_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str) -> str:
    """Refuse keys that would mean different things on S3 and on disk (or escape the root)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string, got {key!r}")
    if key.startswith("/") or _BAD_KEY_CHARS.search(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"object key {key!r} must be relative, printable and at most {MAX_KEY_BYTES} bytes")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


def _batches(keys: Iterable[str], size: int) -> Iterator[list[str]]:
    """Distinct, checked keys in lists of `size`, without materialising `keys` (it may be a listing)."""
    batch: list[str] = []
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            continue
        seen.add(check_key(key))
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ObjectStore(abc.ABC):
    """Where photo variants live. Keys are relative to the store (its prefix is added inside)."""

    public_base_url: str | None = None

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes, content_type: str, cache_control: str | None = DEFAULT_CACHE_CONTROL
    ) -> None:
        """Write (or overwrite) one object with the headers the CDN will serve."""

    def put_many(
        self, objects: Iterable[tuple[str, bytes, str]], workers: int = 8, cache_control: str | None = None
    ) -> int:
        """Upload `(key, data, content_type)` items on a few threads; returns how many were written.

        A photo is six small objects, so uploads wait on round trips, not bandwidth; the first
        failure is raised after the in-flight uploads finish.
        """
        control = cache_control or DEFAULT_CACHE_CONTROL
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="objectstore-put") as pool:
            futures = [pool.submit(self.put, key, data, ctype, control) for key, data, ctype in objects]
        for future in futures:
            future.result()
        return len(futures)

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and headers of one object; `ObjectNotFound` if absent."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` if absent."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> int:
        """Delete in batches; returns how many keys are now gone (absent ones included)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a string prefix, not a folder), in byte order, lazily."""

    @abc.abstractmethod
    def _default_url(self, key: str) -> str: ...

    def public_url(self, key: str) -> str:
        """What agents' apps load: the CDN URL when configured, else the store's own URL."""
        check_key(key)
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{quote(self._full_key(key))}"
        return self._default_url(key)

    def _full_key(self, key: str) -> str:
        return key


class S3Store(ObjectStore):
    """Any S3 API: AWS, MinIO, moto. The boto3 client is built by the caller (Airflow's S3Hook)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        public_base_url: str | None = None,
        page_size: int = 1000,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.public_base_url = public_base_url
        self.page_size = page_size

    def _full_key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def put(
        self, key: str, data: bytes, content_type: str, cache_control: str | None = DEFAULT_CACHE_CONTROL
    ) -> None:
        extra = {"CacheControl": cache_control} if cache_control else {}
        self.client.put_object(
            Bucket=self.bucket, Key=self._full_key(key), Body=data, ContentType=content_type, **extra
        )

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except self.client.exceptions.ClientError as exc:
            raise self._missing_or_raise(exc, key) from exc
        return ObjectInfo(key, meta["ContentLength"], meta.get("ContentType", ""), meta.get("CacheControl"))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))["Body"].read()
        except self.client.exceptions.ClientError as exc:
            raise self._missing_or_raise(exc, key) from exc

    def _missing_or_raise(self, exc: Any, key: str) -> Exception:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return ObjectNotFound(f"s3://{self.bucket}/{self._full_key(key)} does not exist")
        return exc

    def delete(self, keys: Iterable[str]) -> int:
        gone = 0
        for batch in _batches(keys, DELETE_BATCH):
            objects = [{"Key": self._full_key(k)} for k in batch]
            reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            errors = reply.get("Errors", [])
            gone += len(objects) - len(errors)
            if errors:
                detail = "; ".join(f"{e.get('Key')}: {e.get('Code')} {e.get('Message')}" for e in errors[:5])
                raise ObjectStoreError(
                    f"s3://{self.bucket}: {len(errors)} of a {len(objects)}-key delete failed "
                    f"({gone} deleted so far): {detail}"
                )
        return gone

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # console-made "folder" markers
                    yield item["Key"][len(base) :]

    def _default_url(self, key: str) -> str:
        endpoint = self.client.meta.endpoint_url.rstrip("/")
        host = urlsplit(endpoint).hostname or ""
        path = quote(self._full_key(key))
        if host.endswith("amazonaws.com") and "." not in self.bucket:
            region = self.client.meta.region_name or "us-east-1"
            return f"https://{self.bucket}.s3.{region}.amazonaws.com/{path}"
        return f"{endpoint}/{self.bucket}/{path}"  # path style: MinIO, moto, dotted buckets


class LocalStore(ObjectStore):
    """A folder standing in for a bucket (demo, CLI, tests), with S3's semantics.

    Objects are files under `root`; their headers live in `root/.meta/<key>.json`; writes go
    through `root/.tmp/` and a rename, so readers (and a static file server) never see half a photo.
    """

    _RESERVED = (".meta", ".tmp")

    def __init__(self, root: Path | str, public_base_url: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url

    def _path(self, key: str) -> Path:
        if check_key(key).split("/", 1)[0] in self._RESERVED:
            raise ValueError(f"object key {key!r} uses a name LocalStore keeps for itself")
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / f"{key}.json"

    def _write(self, target: Path, data: bytes) -> None:
        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide photos from a static file server
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(
        self, key: str, data: bytes, content_type: str, cache_control: str | None = DEFAULT_CACHE_CONTROL
    ) -> None:
        path = self._path(key)
        try:
            meta = {"content_type": content_type, "cache_control": cache_control}
            self._write(self._meta_path(key), json.dumps(meta).encode())
            self._write(path, data)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectStoreError(f"{key!r} clashes with an existing key on disk: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{path} does not exist")
        try:
            meta = json.loads(self._meta_path(key).read_text())
        except (OSError, ValueError):  # written by hand: guess like a web server would
            meta = {"content_type": mimetypes.guess_type(key)[0] or "application/octet-stream"}
        return ObjectInfo(key, path.stat().st_size, meta["content_type"], meta.get("cache_control"))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{path} does not exist") from exc

    def delete(self, keys: Iterable[str]) -> int:
        gone = 0
        for batch in _batches(keys, DELETE_BATCH):
            for key in batch:
                path = self._path(key)
                if path.is_dir():
                    raise ObjectStoreError(f"cannot delete {key!r}: it is a folder of other keys on disk")
                path.unlink(missing_ok=True)
                self._meta_path(key).unlink(missing_ok=True)
                self._prune(path.parent, self.root)
                self._prune(self._meta_path(key).parent, self.root / ".meta")
                gone += 1
        return gone

    @staticmethod
    def _prune(folder: Path, stop: Path) -> None:
        """Drop folders emptied by a delete, as S3 has no folders to leave behind."""
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            folder = folder.parent

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        if folder and self._path(folder).is_file():
            return
        start = self.root / folder if folder else self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d not in self._RESERVED]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys += [k for f in filenames if (k := f if rel == "." else f"{rel}/{f}").startswith(prefix)]
        yield from sorted(keys, key=lambda k: k.encode())

    def _default_url(self, key: str) -> str:
        return self._path(key).as_uri()


# -- key layout ---------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]*")


def safe_segment(value: str) -> str:
    """One key segment made of S3's safe characters; altered values get a short hash suffix so
    two listing keys that clean to the same text ('A/1', 'A 1') still get distinct folders."""
    text = str(value)
    cleaned = _UNSAFE.sub("_", text)
    if cleaned in ("", ".", ".."):
        cleaned = "_"
    if cleaned != text:
        cleaned = f"{cleaned}-{hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]}"
    return cleaned


def prefix_parts(prefix: str) -> list[str]:
    """The configured media prefix as key segments ('/listings/' -> ['listings'])."""
    return [p for p in prefix.strip("/").split("/") if p]


def listing_prefix(prefix: str, provider: str, listing_key: str) -> str:
    """`<prefix>/<provider>/<listing>/`: list or delete every stored photo of one listing."""
    return "/".join([*prefix_parts(prefix), safe_segment(provider), safe_segment(listing_key)]) + "/"


def photo_key(
    prefix: str, provider: str, listing_key: str, order: int, content_hash: str, variant: str, ext: str
) -> str:
    """`<prefix>/<provider>/<listing>/<order>-<hash16>/<variant>.<ext>`.

    The hash in the folder makes the key change with the photo's bytes, which is what lets
    every object be served `immutable`; the order first keeps a listing's photos sorted.
    """
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"photo order must be a non-negative int, got {order!r}")
    digest = content_hash.lower()
    if len(digest) < 16 or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(f"content_hash must be hex of at least 16 characters, got {content_hash!r}")
    for name, token in (("variant", variant), ("ext", ext)):
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"{name} must be lower-case letters, digits, '-' or '_', got {token!r}")
    return check_key(f"{listing_prefix(prefix, provider, listing_key)}{order}-{digest[:16]}/{variant}.{ext}")


# -- configuration ------------------------------------------------------------------------------

_SETTINGS = {
    "backend": "'s3' or 'local'",
    "bucket": "S3 bucket name (s3)",
    "prefix": "key prefix inside the bucket (s3)",
    "root": "folder for the local backend, e.g. .data/media",
    "public_base_url": "CDN base URL such as https://dxxxx.cloudfront.net",
    "endpoint_url": "S3 endpoint for MinIO/moto (s3)",
    "region_name": "AWS region (s3)",
    "aws_conn_id": "Airflow connection the client factory uses (s3)",
    "page_size": "keys per list request, 1..1000 (s3)",
}


def _setting(settings: Mapping[str, Any], key: str, *, required: bool = False) -> Any:
    value = settings.get(key)
    if value in (None, ""):
        if required:
            raise ObjectStoreConfigError(
                f"object store setting {key!r} is missing for backend {settings.get('backend')!r}: "
                f"set {key}: <{_SETTINGS[key]}>"
            )
        return None
    if key != "page_size" and not isinstance(value, str):
        raise ObjectStoreConfigError(f"object store setting {key!r} must be a string, got {value!r}")
    return value


def default_s3_client(settings: Mapping[str, Any]) -> Any:
    """boto3's own credential chain; used by the CLI and demo when no Airflow hook is around."""
    import boto3  # imported here: slow, and only the s3 backend needs it
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.get("endpoint_url") or None,
        region_name=settings.get("region_name") or None,
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


def store_from_settings(
    settings: Mapping[str, Any],
    s3_client_factory: Callable[[Mapping[str, Any]], Any] | None = None,
) -> ObjectStore:
    """Build the configured store. `s3_client_factory(settings)` returns a boto3 S3 client;
    the Airflow side passes one reading `aws_conn_id` through S3Hook, the CLI uses boto3's chain.

    Settings of the other backend are ignored (switching backends is a one-line change); unknown
    keys are refused, since a misspelt `bucket` must not silently write somewhere else.
    """
    check_settings(settings)
    base_url = _setting(settings, "public_base_url")
    if settings.get("backend") == "local":
        return LocalStore(Path(_setting(settings, "root", required=True)), public_base_url=base_url)
    client = (s3_client_factory or default_s3_client)(settings)
    return S3Store(client, _setting(settings, "bucket", required=True), prefix=_setting(settings, "prefix") or "",
                   public_base_url=base_url, page_size=settings.get("page_size") or 1000)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse store settings that cannot work, without touching any store (no IO, no client): the
    provider YAML's `storage` is checked with the rest of the YAML, not when photos first run."""
    if not isinstance(settings, Mapping):
        kind = type(settings).__name__
        raise ObjectStoreConfigError(f"object store settings must be a mapping, got {kind}")
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ObjectStoreConfigError(
            f"unknown object store setting(s) {unknown}: remove them; known settings are {sorted(_SETTINGS)}"
        )
    for key in settings:
        _setting(settings, key)  # each one present has its type
    backend = settings.get("backend")
    base_url = _setting(settings, "public_base_url")
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        raise ObjectStoreConfigError(
            f"object store setting 'public_base_url' must be an http(s) URL, got {base_url!r}"
        )
    if backend == "local":
        _setting(settings, "root", required=True)
        return
    if backend == "s3":
        _setting(settings, "bucket", required=True)
        page_size = settings.get("page_size") or 1000
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise ObjectStoreConfigError(
                f"object store setting 'page_size' must be an int in 1..1000, got {page_size!r}"
            )
        return
    raise ObjectStoreConfigError(
        f"object store setting 'backend' must be 's3' or 'local', got {backend!r}: "
        "set backend: s3 (with bucket) or backend: local (with root)"
    )


STORAGE_ENV = "MLS_MEDIA_STORAGE"
DEFAULT_LOCAL_ROOT = Path(__file__).resolve().parents[2] / ".data" / "media"


def storage_settings(provider_storage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Which store photos go to: the provider YAML's `storage`, else MLS_MEDIA_STORAGE (JSON), else
    the local folder `.data/media` (the demo's default, so a person can open the photos)."""
    if provider_storage:
        return dict(provider_storage)
    raw = os.environ.get(STORAGE_ENV)
    if raw:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ObjectStoreConfigError(
                f"{STORAGE_ENV} is not valid JSON ({exc.msg}); expected e.g. "
                '{"backend": "s3", "bucket": "my-photos", "aws_conn_id": "aws_default"}') from None
        if not isinstance(value, dict):
            raise ObjectStoreConfigError(f"{STORAGE_ENV} must be a JSON object of store settings")
        return value
    return {"backend": "local", "root": str(DEFAULT_LOCAL_ROOT)}
