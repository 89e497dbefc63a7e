"""`make stack` and `make airflow`: a real Airflow on this machine until Ctrl-C.

    make stack     docker-compose.yaml's distributed stack as native processes (devstack.topology):
                   CeleryExecutor, two workers, Redis, PostgreSQL, moto S3, the mock MLS. Throwaway:
                   its databases, bucket and broker keys are gone after Ctrl-C.
    make airflow   api-server, scheduler, dag-processor and triggerer (LocalExecutor) on `make demo`'s
                   data: the embedded PostgreSQL in .data/pg (Airflow's metadata in its database
                   `airflow`, the properties store where the demo keeps it, or MLS_DATABASE_URL), the
                   demo's mock MLS (.data/mock) and photos in .data/media. Kept between runs.

Both print the UI's address and login, and stop everything they started on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

from devstack import ROOT, embedded_postgres
from devstack import compose as cf
from devstack.topology import (
    ADMIN,
    Topology,
    databases,
    generated_secrets,
    start_airflow,
    topology,
    wait_until_interrupted,
    with_db,
)

# compose variables a user may set for `make stack` (the rest are generated)
STACK_VARIABLES = ("AIRFLOW_WORKER_CONCURRENCY", "MOCK_LISTINGS", "MOCK_PHOTOS_PER_LISTING")


def _say(message: str) -> None:
    print(message, flush=True)


def _banner(t: Topology, what: str) -> None:
    user, password = next(iter(t.passwords.items()))
    print(f"\n{what} is up. Airflow UI: {t.api_url}  (login {user} / {password})", flush=True)
    print(f"  MLS Sync dashboard: {t.api_url}/mls-sync/   mock MLS: {t.mock_url}")
    print(f"  services' logs: {t.home}/*.log; Ctrl-C stops everything.\n", flush=True)


def stack(args: argparse.Namespace) -> int:
    variables = {k: os.environ[k] for k in STACK_VARIABLES if os.environ.get(k)}
    _say(f"make stack: docker-compose.yaml's services as processes, {args.workers} Celery workers ...")
    with topology(listings=None, photos_per_listing=None, worker_concurrency=None, providers=(),
                  media_batch_listings=None, scheduled=True, workers=args.workers, prefer_machine_services=True,
                  tuning={}, variables=variables, on_ready=_say) as t:
        _say(f"S3 (moto): {t.s3_endpoint}, bucket {t.bucket}")
        _banner(t, "The distributed stack")
        code = wait_until_interrupted(t)
    _say("stopped.")
    return code


def _port(preferred: int) -> int:
    """The preferred port when it is free on 127.0.0.1, else any free one."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kept_secrets(path: Path) -> dict[str, str]:
    """make airflow's secrets, made once: the Fernet key must outlive a run (it encrypts connections
    saved in the metadata database) and the login stays the same."""
    if path.exists():
        return json.loads(path.read_text())
    values = generated_secrets()
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def airflow(args: argparse.Namespace) -> int:
    from devstack.demo import demo_mock

    data: Path = args.data_dir
    home = data / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as es:
        pg = es.enter_context(embedded_postgres(data / "pg"))
        es.enter_context(databases(pg, "airflow", keep=True))
        properties = os.environ.get("MLS_DATABASE_URL") or pg
        mock = es.enter_context(demo_mock(args.listings, args.photos_per_listing, data))
        port = _port(args.port)
        values = {**_kept_secrets(home / "secrets.json"), "AIRFLOW_ADMIN_USER": ADMIN,
                  "AIRFLOW_BASE_URL": f"http://127.0.0.1:{port}"}
        config = cf.load(values)
        endpoints = cf.Endpoints(postgres=with_db(pg, "airflow"), properties_db=properties, redis="", minio="",
                                 mock_mls=mock["url"], apiserver=f"http://127.0.0.1:{port}")
        overrides: dict[str, str | None] = {
            **cf.executor_overrides(config, "LocalExecutor"),
            # the demo's stores: its database by URL (as make demo reads it) and photos on this disk
            "AIRFLOW_CONN_MLS_PROPERTIES_DB": None,
            "AIRFLOW_CONN_AWS_DEFAULT": None,
            "MLS_MEDIA_STORAGE": json.dumps({"backend": "local", "root": str(data / "media")}),
        }
        _say(f"make airflow: PostgreSQL in {data / 'pg'} (Airflow metadata: database airflow), "
             f"mock MLS {mock['url']} ({data / 'mock'}), photos in {data / 'media'}; starting Airflow ...")
        t = start_airflow(es, config, endpoints, home, variables=values, port=port, workers=[], key_prefix=None,
                          overrides=overrides, extra_env={"MLS_DATABASE_URL": properties})
        _banner(t, "Airflow (LocalExecutor) on the demo's data")
        code = wait_until_interrupted(t)
    _say("stopped.")
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devstack.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("stack", help="the distributed stack (CeleryExecutor)")
    s.add_argument("--workers", type=int, default=2, help="Celery workers, each with its own host name (default 2)")
    a = sub.add_parser("airflow", help="Airflow on make demo's data (LocalExecutor)")
    a.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", 8080)),
                   help="UI port when free (default 8080, else any free one)")
    a.add_argument("--listings", type=int, default=int(os.environ.get("DEMO_LISTINGS", 300)))
    a.add_argument("--photos-per-listing", type=int, default=int(os.environ.get("DEMO_PHOTOS", 2)))
    a.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MLS_DEMO_DATA", ROOT / ".data")))
    args = ap.parse_args(argv)
    return stack(args) if args.what == "stack" else airflow(args)


if __name__ == "__main__":
    sys.exit(main())
