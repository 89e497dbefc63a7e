"""`make demo`: a real sync, end to end, on this machine, then a short summary.

Starts the embedded defaults (PostgreSQL under .data/pg unless MLS_DATABASE_URL is set, the mock
MLS, photos into .data/media), runs each demo provider's real DAG with `dag.test()`, prints what
the runs did, and stops everything it started. Run it again: the second run is incremental, after
the mock MLS has made a few changes of every kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from devstack import ROOT, airflow_env, control, embedded_postgres, mls_connections, mock_mls_process

DEMO_PROVIDERS = ("demo_rets", "demo_reso")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__)
    p.add_argument("--listings", type=int, default=int(os.environ.get("DEMO_LISTINGS", 300)))
    p.add_argument("--photos-per-listing", type=int, default=int(os.environ.get("DEMO_PHOTOS", 2)))
    p.add_argument("--changes", type=int, default=10, help="changes of each kind the mock makes before a re-run")
    p.add_argument("--providers", nargs="+", default=list(DEMO_PROVIDERS), choices=DEMO_PROVIDERS)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MLS_DEMO_DATA", ROOT / ".data")),
                   help="where the embedded PostgreSQL, the mock's data and the photos live (default .data)")
    return p.parse_args(argv)


def demo_mock(listings: int, photos_per_listing: int, data_dir: Path) -> Any:
    """The demo's mock MLS; its data lives in data_dir/mock, so `make airflow` serves the same feed."""
    return mock_mls_process("--listings", str(listings), "--photos-per-listing", str(photos_per_listing),
                            "--seed", "1", "--mlg-can-view", "--keep-state", data_dir=data_dir / "mock")


def _quiet_logs() -> None:
    """Airflow's own chatter off; the engine's progress lines (stages, pages, batches, photos) on."""
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("airflow", "sqlalchemy", "urllib3", "botocore", "pgserver"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _show_progress() -> None:
    """Print the engine's INFO lines as they happen: called after Airflow has set up its logging."""
    engine_log = logging.getLogger("mls_sync")
    engine_log.setLevel(logging.INFO)
    engine_log.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("   %(message)s"))
    engine_log.handlers = [handler]


def _database(stack: ExitStack, data_dir: Path) -> str:
    from mls_sync.store.db import ENV_VAR, DatabaseConfigError, get_engine

    url = os.environ.get(ENV_VAR)
    if not url:
        url = stack.enter_context(embedded_postgres(data_dir / "pg"))
        os.environ[ENV_VAR] = url
        where = f"embedded PostgreSQL in {data_dir / 'pg'}"
    else:
        where = f"{ENV_VAR}"
    try:
        get_engine()
    except DatabaseConfigError as exc:
        raise SystemExit(f"make demo: {exc}") from None
    return where


def _history(provider_id: str) -> dict[str, Any] | None:
    import sqlalchemy as sa
    from mls_sync.store.db import get_engine

    with get_engine().connect() as c:
        row = c.execute(sa.text(
            "SELECT * FROM mls_sync_history WHERE provider_id = :p ORDER BY id DESC LIMIT 1"),
            {"p": provider_id}).mappings().first()
    return dict(row) if row else None


def _totals(provider_id: str) -> dict[str, int]:
    import sqlalchemy as sa
    from mls_sync.store.db import get_engine

    with get_engine().connect() as c:
        return dict(c.execute(sa.text(
            "SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS listings,"
            " count(*) FILTER (WHERE is_active AND deleted_at IS NULL) AS active,"
            " (SELECT count(*) FROM property_media m WHERE m.provider_id = :p AND m.state = 'stored') AS photos"
            " FROM properties WHERE provider_id = :p"), {"p": provider_id}).mappings().one())


ROSTER = (("member", "members", "Member"), ("office", "offices", "Office"), ("open_house", "open_houses", "OpenHouse"))


def _roster_lines(provider_id: str, run: dict[str, Any], mock_url: str) -> list[str]:
    """Per roster resource: what the run did, what the store holds, and whether that is the mock's set."""
    import sqlalchemy as sa
    from mls_sync.store.db import get_engine

    report = (run.get("report") or {}).get("roster") or {}
    out = []
    with get_engine().connect() as c:
        for kind, table, resource in ROSTER:
            if kind not in report:
                continue
            r = report[kind]
            held = c.execute(sa.text(f"SELECT count(*) FROM {table} WHERE provider_id = :p AND deleted_at IS NULL"),
                             {"p": provider_id}).scalar_one()
            served = len(control(mock_url, f"roster_keys?resource={resource}")["keys"])
            out.append(f"{table}: fetched {r.get('fetched', 0)}, added {r.get('added', 0)}, updated "
                       f"{r.get('updated', 0)}, deleted {r.get('deleted', 0)}; the store holds {held}, the mock "
                       f"serves {served}{' (they match)' if held == served else ''}")
    return out


def _explain(provider_id: str, run: dict[str, Any], mock_url: str, changed: dict[str, list[str]]) -> list[str]:
    """Why the run's numbers differ from what the mock says it generated or changed."""
    import sqlalchemy as sa
    from mls_sync.config import find_provider
    from mls_sync.store.db import get_engine

    if not run.get("id"):
        return []
    cfg = find_provider(provider_id)
    scope = list(cfg.full_sync_statuses)
    out = []
    with get_engine().connect() as c:
        removed = list(changed.get("remove", []))
        held_removed = c.execute(sa.text(
            "SELECT count(*) FROM properties WHERE provider_id = :p AND listing_key = ANY(:k)"
            " AND deleted_at IS NOT NULL"), {"p": provider_id, "k": removed}).scalar_one() if removed else 0
        added = dict(c.execute(sa.text(
            "SELECT count(*) FILTER (WHERE status = ANY(:s)) AS in_scope, count(*) FILTER (WHERE NOT status = ANY(:s))"
            " AS off_market FROM properties WHERE provider_id = :p AND first_sync_id = :r"),
            {"p": provider_id, "r": run["id"], "s": scope}).mappings().one())
    if run.get("mode") == "full":
        total = len(control(mock_url, "keys")["keys"])
        out.append(f"why {run.get('records_fetched')} of the mock's {total} listings: a full sync asks only for "
                   f"full_sync_statuses ({', '.join(scope)}); the rest are off market (Closed, Expired...)")
    elif added["off_market"]:
        out.append(f"why added {run.get('added')}: {added['in_scope']} new on the market, and "
                   f"{added['off_market']} off-market listings the mock changed: an incremental sync takes every "
                   "change since the watermark, whatever its status")
    if run.get("mode") in ("incremental", "reconcile") and run.get("unchanged"):
        out.append(f"why unchanged {run['unchanged']}: listings stamped within overlap_minutes "
                   f"({cfg.overlap_minutes}) of the last watermark are read again, and skipped when their row "
                   "is the same")
    if removed:
        out.append(f"why deleted {run.get('deleted')}: the mock removed {len(removed)}; {held_removed} of them "
                   "were held here (the others were off market and never synced)")
    figures = (run.get("report") or {}).get("reconcile")
    if figures:
        same = figures.get("store_count_after") == figures.get("mls_count")
        out.append(f"reconciled with the MLS's keys: the MLS lists {figures.get('mls_count', 0)} in scope, the store "
                   f"holds {figures.get('store_count_after', 0)}"
                   f"{' (they match)' if same else ' (see open conflicts: local edits wait for a decision)'}; "
                   f"repaired {figures.get('missing', 0)} missing, {figures.get('stale', 0)} stale, "
                   f"{figures.get('deleted', 0)} deleted")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _quiet_logs()
    for k, v in airflow_env().items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MLS_MEDIA_STORAGE", json.dumps({"backend": "local", "root": str(args.data_dir / "media")}))
    with ExitStack() as stack:
        where = _database(stack, args.data_dir)
        from mls_sync.store.db import get_engine, migrate

        migrate(get_engine())
        rerun = any(_history(p) for p in args.providers)
        mock = stack.enter_context(demo_mock(args.listings, args.photos_per_listing, args.data_dir))
        os.environ.update(mls_connections(mock["url"], mock["credentials"]))
        print(f"mock MLS: {mock['url']} ({args.listings} listings, {args.photos_per_listing} photos each)")
        print(f"properties store: {where}; photos: {os.environ['MLS_MEDIA_STORAGE']}")
        changed: dict[str, list[str]] = {}
        if rerun:
            n = args.changes
            changed = control(mock["url"], "mutate", price=n, status=n, photo=max(1, n // 2), new=n,
                              remove=max(1, n // 5), member_new=max(1, n // 5), member_change=max(1, n // 5),
                              office_change=1, open_house_new=max(1, n // 5), open_house_remove=1)
            print("mock MLS changes since last demo: " + ", ".join(f"{k} {len(v)}" for k, v in changed.items()))
        from airflow.dag_processing.dagbag import DagBag
        from mls_sync.config import sync_dag_id

        bag = DagBag(dag_folder=str(ROOT / "dags"))
        _show_progress()
        if bag.import_errors:
            for path, error in bag.import_errors.items():
                print(f"DAG import error in {path}: {error}", file=sys.stderr)
            return 1
        failures = 0
        for pid in args.providers:
            dag = bag.get_dag(sync_dag_id(pid))
            print(f"\n== {pid}: running its sync DAG {dag.dag_id} with dag.test()", flush=True)
            started = time.monotonic()
            # a re-run reconciles: the incremental changes, then every key and modification time
            # compared with the mock's, so removed listings and missed changes are repaired too
            dag.test(run_conf={"mode": "reconcile"} if rerun else {})
            wall = time.monotonic() - started
            h = _history(pid) or {}
            totals = _totals(pid)
            ok = h.get("state") == "success"
            failures += not ok
            print(f"== {pid}: {h.get('mode')} sync {h.get('state')} in {wall:.1f}s "
                  f"(run {h.get('dag_run_id')})")
            print(f"   fetched {h.get('records_fetched')} records in {h.get('pages_fetched')} pages, "
                  f"{h.get('requests')} MLS requests")
            print(f"   added {h.get('added')}, updated {h.get('updated')}, unchanged {h.get('unchanged')}, "
                  f"deleted {h.get('deleted')}, status changes {h.get('status_changes')}, "
                  f"conflicts {h.get('conflicted')}, rejected {h.get('failed')}")
            print(f"   photos added {h.get('photos_added')}, removed {h.get('photos_removed')}, "
                  f"failed {h.get('photos_failed')}, {h.get('photo_bytes', 0) / 1e6:.1f} MB downloaded")
            print(f"   store now holds {totals['listings']} listings ({totals['active']} active), "
                  f"{totals['photos']} photos")
            for line in _roster_lines(pid, h, mock["url"]):
                print(f"   {line}")
            for line in _explain(pid, h, mock["url"], changed):
                print(f"   {line}")
            if h.get("error_summary"):
                print(f"   errors: {h['error_summary']}")
    print("\nNext: `make demo` again (the mock changes, then a reconciling run repairs every kind of change); "
          "`make airflow` for the UI; `make test` for the suite.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
