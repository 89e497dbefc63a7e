"""`python -m bench [SCENARIO ...] [--listings N] [--photos N] [--profile] ...`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import set_airflow_env

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAMES = {"full": "1", "incremental": "2", "nochange": "3", "media": "4", "full100k": "5", "window": "6",
         "celery": "7", "million": "8", "reconcile": "9", "parse": "10"}
DEFAULT = ("1", "2", "3", "4", "5", "6", "9", "10")
HELP = ("scenarios: 1/full (10,000 listings), 2/incremental (1%% changed), 3/nochange, 4/media (2,000 photos), "
        "5/full100k (100,000 listings), 6/window (row cap 2,500, Offset ignored), 7/celery (media stage through "
        "the Celery stack, 1 vs 2 workers, 500 listings x 8 photos; runs only when named), 8/million (1,000,000 "
        "records of every status over RETS and RESO, the RSS at a tenth of that, PostgreSQL space per record, then an "
        "incremental run; runs only when named), 9/reconcile (a key reconciliation of 100,000 listings vs their full "
        "sync), 10/parse (DagBag of dags/ with 1, 100 and 500 provider YAMLs, cold and warm); default: 1-6, 9 and 10")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=HELP)
    ap.add_argument("scenarios", nargs="*", help="scenario numbers or names (default: all)")
    ap.add_argument("--listings", type=int, help="listings for the selected scenarios "
                    "(default 10,000 for 1-3, 100,000 for 5, 6 and 9, 500 for 7, 1,000,000 for 8)")
    ap.add_argument("--photos", type=int, default=2000, help="photos for scenario 4 (default 2,000)")
    ap.add_argument("--providers", default="demo_rets,demo_reso", help="providers for scenarios 1-3")
    ap.add_argument("--photos-per-listing", type=int, default=8, help="photos per listing for scenario 7 (default 8)")
    ap.add_argument("--batch-listings", type=int, default=25, help="media.batch_listings for scenario 7 (default 25)")
    ap.add_argument("--profile", action="store_true", help="pyinstrument profile of the engine runs "
                    "(bench/results/profile-*.html and .txt)")
    ap.add_argument("--no-dag", action="store_true", help="skip the dag.test() run of scenario 1")
    ap.add_argument("--no-peer", action="store_true", help="skip the `rets` peer comparison")
    ap.add_argument("--peer-only", action="store_true", help="scenarios 1/5: only the `rets` peer comparison "
                    "at their sizes (no sync)")
    ap.add_argument("--repeat", type=int, help="engine-only full syncs (each with its floor) per provider; the "
                    "median ratio is quoted (default 5 for scenario 1, 1 for scenario 5); for 10, parses per point "
                    "(default 3)")
    ap.add_argument("--parse-sizes", default="1,100,500", help="provider counts of scenario 10's curve "
                    "(default 1,100,500)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    a = ap.parse_args(argv)
    picked = []
    for s in a.scenarios or DEFAULT:
        s = NAMES.get(s, s)
        if s not in NAMES.values():
            ap.error(f"unknown scenario {s!r}; {HELP}")
        picked.append(s)
    a.selected = sorted(set(picked), key=int)
    try:
        a.parse_sizes = tuple(sorted({int(x) for x in a.parse_sizes.split(",") if x.strip()}))
    except ValueError:
        ap.error(f"--parse-sizes: comma-separated provider counts, not {a.parse_sizes!r}")
    if not a.parse_sizes or min(a.parse_sizes) < 1:
        ap.error("--parse-sizes: at least one count, each >= 1")
    return a


def _quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mls_sync", "airflow", "urllib3", "botocore", "werkzeug", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "pool is full" from upload threads


def run(a: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.engine import make_url as sa_url

    from bench import report, runner
    from bench import scenarios as sc
    from bench.monitor import RssMonitor
    from bench.stack import mock_mls, throwaway_database, truncate

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc: dict[str, Any] = {"started": stamp, "command": "python -m bench " + " ".join(sys.argv[1:]),
                           "machine": report.machine(), "media_available": runner.media_available(),
                           "scenarios": []}
    monitor = RssMonitor().start()
    providers = tuple(p.strip() for p in a.providers.split(",") if p.strip())
    sel = set(a.selected)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            db_url = stack.enter_context(throwaway_database())
            monitor.database(sa_url(db_url).database)
            os.environ["MLS_DATABASE_URL"] = db_url
            b = sc.Bench(db_url=db_url, monitor=monitor, results_dir=a.results_dir, stamp=stamp, providers=providers,
                         profile=a.profile, dag=not a.no_dag, peer=not a.no_peer)
            stack.enter_context(b.stack)
            out = b.results
            # 10 first: the DagBag children measure CPU, best taken before the syncs warm the machine
            if "10" in sel:
                from bench.parse_curve import parse_scenario

                print(f"== scenario 10: DAG parse curve, {', '.join(map(str, a.parse_sizes))} providers", flush=True)
                out.append(parse_scenario(b, a.parse_sizes, a.repeat or 3))
            if a.peer_only:
                for s in sorted(sel & {"1", "5"}):
                    n = a.listings or (10_000 if s == "1" else 100_000)
                    with mock_mls(n) as mock:
                        monitor.watch(mock.pid, "mock")
                        print(f"-- {s} peer: ours vs rets, {n:,} listings", flush=True)
                        out.append(sc.peer_compare(b, s, n))
                sel = set()
            # Scenario 1 first, for every provider: its engine-only pairs are measured in this
            # process, and what a process did before slows the same sync later (the 10k RETS sync
            # used 1.04 CPU-s after scenarios 5-6 against 0.67 in a fresh one, RESO's transform_load
            # 0.97 s after the RETS media stage against 0.56). A fresh mock (same seed, same
            # listings) per provider and pass: one provider's 1 % of changes must not show up as
            # another's. (The DagBag of its real-DAG run lives in a child process.)
            if "1" in sel:
                n1 = a.listings or 10_000
                print(f"== scenario 1: mock MLS with {n1:,} listings", flush=True)
                for provider in providers:
                    with mock_mls(n1) as mock:
                        monitor.watch(mock.pid, "mock")
                        print(f"-- 1 full sync {provider}", flush=True)
                        got = sc.full_sync(b, mock, "1", provider, n1, with_dag=True, tag=f"s1-{provider}",
                                           label=f"full sync {n1:,}, records only", repeat=a.repeat or 5)
                        out += got
                        if provider == "demo_rets" and b.peer and got[0].get("_recorded"):
                            print("-- 1 peer: ours vs rets", flush=True)
                            out.append(sc.peer_compare(b, "1", n1, got[0]["_recorded"]))
            # 5 and 6 before the photo batches (4): their peak RSS is the 100k sync's own
            if sel & {"5", "6", "9"}:
                n = a.listings or 100_000
                print(f"== scenarios {sorted(sel & {'5', '6', '9'})}: mock MLS with {n:,} listings", flush=True)
                with mock_mls(n) as mock:
                    monitor.watch(mock.pid, "mock")
                    expected = None
                    if "5" in sel:
                        print("-- 5 full sync demo_rets", flush=True)
                        got = sc.full_sync(b, mock, "5", "demo_rets", n, with_dag=False, tag="s5",
                                           label=f"full sync {n:,}, records only", wall_goal=600,
                                           repeat=a.repeat or 1)
                        out += got
                        expected = got[0].get("records")
                        if b.peer and got[0].get("_recorded"):
                            print("-- 5 peer: ours vs rets", flush=True)
                            out.append(sc.peer_compare(b, "5", n, got[0]["_recorded"]))
                    if "6" in sel:
                        print("-- 6 window fallback demo_rets", flush=True)
                        out.append(sc.window_fallback(b, mock, n, expected))
                    if "9" in sel:  # last: it changes the mock
                        print("-- 9 key reconciliation demo_rets", flush=True)
                        out += sc.reconciliation(b, mock, n)
            if "8" in sel:
                from bench.million import million

                n8 = a.listings or 1_000_000
                print(f"== scenario 8: {n8:,} listings of every status, {', '.join(providers)}", flush=True)
                out += million(b, n8, providers)
            if sel & {"2", "3"}:
                n = a.listings or 10_000
                print(f"== scenarios {sorted(sel & {'2', '3'})}: mock MLS with {n:,} listings", flush=True)
                for provider in providers:
                    with mock_mls(n) as mock:
                        monitor.watch(mock.pid, "mock")
                        truncate(db_url)  # the full sync to change from (not reported)
                        runner.engine_run(provider, db_url, {"include_photos": False, "mode": "full"})
                        if "2" in sel:
                            print(f"-- 2 incremental {provider}", flush=True)
                            out.append(sc.incremental(b, mock, provider, n))
                        else:  # the first incremental after a full sync also takes in the overlap
                            runner.engine_run(provider, db_url, {"include_photos": False})
                        if "3" in sel:
                            print(f"-- 3 no changes {provider}", flush=True)
                            out.append(sc.no_change(b, mock, provider, n))
            if "4" in sel:
                print(f"== scenario 4: media stage, {a.photos:,} photos", flush=True)
                out.append(sc.media_stage(b, a.photos))
            if "7" in sel:
                from bench.celery_scale import celery_media_scale

                n7 = a.listings or 500
                print(f"== scenario 7: media stage through the Celery stack, {n7:,} listings x "
                      f"{a.photos_per_listing} photos, 1 then 2 workers", flush=True)
                out.append(celery_media_scale(b, n7, a.photos_per_listing, a.batch_listings))
            doc["scenarios"] = out
    finally:
        monitor.stop()
    doc["total_seconds"] = round(time.monotonic() - started, 1)
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    path = report.write(a.results_dir, stamp, doc)
    print()
    print(report.table(doc["scenarios"]))
    print(f"\nresults: {path} (and {a.results_dir / 'latest.json'}); total {doc['total_seconds']} s")
    return doc


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    set_airflow_env()
    _quiet()
    run(a)
    return 0
