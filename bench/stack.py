"""The services a bench run needs, started like the tests start them and always stopped.

PostgreSQL: a throwaway database on the machine's server (127.0.0.1:5432, or MLS_BENCH_PG_URL),
dropped at the end; an embedded pgserver when none answers. S3: a moto server on 127.0.0.1.
The mock MLS runs as its own process (devstack.mock_mls_process) so its CPU and GIL are not ours.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from mls_sync.store.tables import TABLES

from devstack import airflow_env, control, embedded_postgres, mls_connections, mock_mls_process, pg_reachable

ADMIN_URL = os.environ.get("MLS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATA_TABLES = ("properties", "property_media", "property_status_history", "property_conflicts")


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh, migrated database URL; dropped (WITH FORCE) on exit."""
    from mls_sync.store.db import get_engine, migrate

    from devstack.topology import databases, with_db

    with ExitStack() as stack:
        admin_url = ADMIN_URL
        if not pg_reachable(admin_url):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mls_bench_pg_", ignore_cleanup_errors=True))
            admin_url = stack.enter_context(embedded_postgres(Path(tmp)))
        name = f"mls_bench_{uuid.uuid4().hex[:10]}"
        stack.enter_context(databases(admin_url, name))
        stack.callback(_dispose_engines)  # runs before the drop: no pooled connection left behind
        url = with_db(admin_url, name)
        migrate(get_engine(url))
        yield url


def _dispose_engines() -> None:
    from mls_sync.store import db as dbmod

    for eng in _seen_engines:
        eng.dispose()
    _seen_engines.clear()
    dbmod._engine_for.cache_clear()


_seen_engines: list[Any] = []


def engine(url: str) -> Any:
    """The engine the engine code itself uses for this URL (shared pool), remembered for disposal."""
    from mls_sync.store.db import get_engine

    eng = get_engine(url)
    if eng not in _seen_engines:
        _seen_engines.append(eng)
    return eng


# A provider's server metadata is kept between its runs in production; emptying the listings
# must not make every bench run fetch it again (the first run of a bench fills it).
KEPT_TABLES = ("mls_metadata_cache",)


def truncate(url: str) -> None:
    """Empty every store table but the metadata cache (a fresh full sync starts from no listings)."""
    names = [t for t in TABLES if t not in KEPT_TABLES]
    with engine(url).begin() as c:
        c.execute(sa.text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))


@contextmanager
def s3_endpoint(monitor: Any = None) -> Iterator[dict[str, Any]]:
    """moto's S3 server in its own process (uploads held in its memory are not ours) and a bucket;
    yields the MLS_MEDIA_STORAGE settings pointing at it."""
    from devstack.topology import moto_server
    from tests.integration.s3_server import CREDENTIALS, REGION, make_bucket, s3_client

    with tempfile.TemporaryDirectory(prefix="mls_bench_s3_") as tmp, \
            moto_server(Path(tmp) / "moto.log") as (endpoint_url, proc):
        if monitor is not None:
            monitor.watch(proc.pid, "s3")
        bucket = make_bucket(s3_client(endpoint_url))
        conn = {"conn_type": "aws", "login": CREDENTIALS["aws_access_key_id"],
                "password": CREDENTIALS["aws_secret_access_key"], "extra": {"region_name": REGION}}
        os.environ["AIRFLOW_CONN_MLS_BENCH_AWS"] = json.dumps(conn)
        yield {"backend": "s3", "bucket": bucket, "endpoint_url": endpoint_url, "region_name": REGION,
               "aws_conn_id": "mls_bench_aws", "prefix": "bench"}


@dataclass
class Mock:
    """A running mock MLS process."""

    url: str
    credentials: dict[str, str]
    pid: int
    listings: int
    extra: dict[str, Any] = field(default_factory=dict)

    def control(self, action: str, **body: Any) -> Any:
        return control(self.url, action, **body)

    def counters(self) -> dict[str, Any]:
        return self.control("counters")

    @contextmanager
    def configured(self, **settings: Any) -> Iterator[None]:
        """The mock behaving as `settings` say for the block, then as it did before."""
        before = self.control("state")["settings"]
        self.control("configure", **settings)
        try:
            yield
        finally:
            self.control("configure", **{k: before[k] for k in settings})

    def point_at(self) -> None:
        """The demo connections (AIRFLOW_CONN_MLS_DEMO_*) to this mock, when another one runs too."""
        os.environ.update(mls_connections(self.url, self.credentials))


@contextmanager
def mock_mls(listings: int, *, photos_per_listing: int = 2, seed: int = 1, stored_photos: bool = False,
             **settings: Any) -> Iterator[Mock]:
    """A mock MLS child process with the demo connections pointed at it (AIRFLOW_CONN_MLS_DEMO_*).

    `stored_photos`: photos are drawn once into a folder and served from their files (see
    `Mock.control("prerender")`), like a real server's stored photos.
    """
    args = ["--listings", str(listings), "--seed", str(seed), "--photos-per-listing", str(photos_per_listing)]
    with tempfile.TemporaryDirectory(prefix="mls_bench_mock_") as tmp:
        if stored_photos:
            args += ["--photo-dir", str(Path(tmp) / "photos")]
        with mock_mls_process(*args, data_dir=Path(tmp), timeout=300) as proc:
            mock = Mock(proc["url"], proc["credentials"], proc["pid"], listings)
            mock.point_at()
            if settings:
                mock.control("configure", **settings)
            yield mock


def set_airflow_env() -> None:
    """Airflow reads its settings at import: set them (as make does) before anything imports it."""
    for k, v in airflow_env().items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
