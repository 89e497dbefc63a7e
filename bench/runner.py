"""Running one sync: through the engine's stage functions (what the Airflow tasks call) or the real DAG."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import requests
import sqlalchemy as sa

from bench.child import run_module
from bench.stack import DATA_TABLES, engine

SEARCH_PATHS = ("/rets/search", "/reso/odata/Property")
STAGES = ("plan", "fetch", "transform_load", "reconcile", "media", "finalize")


def media_available() -> bool:
    """True once plugins/mls_sync/media.py exists (a colleague is writing it)."""
    return importlib.util.find_spec("mls_sync.media") is not None


@contextmanager
def record_requests(paths: tuple[str, ...] = SEARCH_PATHS) -> Iterator[list[dict[str, Any]]]:
    """Record every search request this process sends (method, URL, body) for the floor's replay."""
    seen: list[dict[str, Any]] = []
    original = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        if request.url and any(p in request.url for p in paths):
            body = request.body
            seen.append({"method": request.method, "url": request.url,
                         "body": body.decode() if isinstance(body, bytes) else body})
        return original(self, request, **kw)

    with mock.patch.object(requests.Session, "send", send):
        yield seen


def context(provider_id: str, db_url: str) -> Any:
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env
    from mls_sync.sources import open_source

    cfg = find_provider(provider_id)
    return sync.SyncContext(provider=cfg, db=engine(db_url), mls=from_env(cfg.connection_id),
                            source_factory=open_source)


def tuples_written(db_url: str) -> int:
    """Rows inserted + updated + deleted in the data tables (pg_stat), after closing pooled sessions.

    Closing the pool makes every backend flush its pending statistics before we read them.
    """
    eng = engine(db_url)
    eng.dispose()
    time.sleep(0.3)
    with eng.connect() as c:
        c.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        n = c.execute(sa.text(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            "WHERE relname = ANY(:t)"), {"t": list(DATA_TABLES)}).scalar_one()
    eng.dispose()
    return int(n)


def history(db_url: str, sync_id: int) -> dict[str, Any]:
    with engine(db_url).connect() as c:
        row = c.execute(sa.text("SELECT * FROM mls_sync_history WHERE id = :i"), {"i": sync_id}).mappings().one()
    return dict(row)


def last_history(db_url: str, provider_id: str, dag_run_id: str | None = None) -> dict[str, Any] | None:
    q = "SELECT * FROM mls_sync_history WHERE provider_id = :p"
    if dag_run_id:
        q += " AND dag_run_id = :r"
    with engine(db_url).connect() as c:
        row = c.execute(sa.text(q + " ORDER BY id DESC LIMIT 1"), {"p": provider_id, "r": dag_run_id}
                        ).mappings().first()
    return dict(row) if row else None


def fetched_keys(db_url: str, provider_id: str, sync_id: int) -> set[str]:
    with engine(db_url).connect() as c:
        return set(c.execute(sa.text("SELECT listing_key FROM mls_raw_records WHERE provider_id = :p "
                                     "AND sync_id = :s"), {"p": provider_id, "s": sync_id}).scalars())


@contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """pyinstrument around the block; writes <path>.html and <path>.txt."""
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    prof = Profiler(interval=0.002)
    prof.start()
    try:
        yield
    finally:
        prof.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".html").write_text(prof.output_html())
        path.with_suffix(".txt").write_text(prof.output_text(unicode=False, color=False, show_all=False))


def engine_run(provider_id: str, db_url: str, conf: dict[str, Any], *, record: bool = False,
               store: Any = None, profile: Path | None = None) -> dict[str, Any]:
    """One sync through sync.plan/fetch/transform_load/reconcile/(media)/finalize, timed per call."""
    from mls_sync import sync

    ctx = context(provider_id, db_url)
    walls: dict[str, float] = {}
    recorded: list[dict[str, Any]] = []
    media_out: list[dict[str, Any]] = []
    started = time.monotonic()
    with profiled(profile):
        t = time.monotonic()
        plan = sync.plan(ctx, dag_id="bench", dag_run_id=f"bench-{time.time_ns()}", conf=conf, trigger="manual")
        walls["plan"] = time.monotonic() - t
        t = time.monotonic()
        with record_requests() if record else nullcontext([]) as seen:
            out_fetch = sync.fetch(ctx, plan)
        recorded = list(seen)
        walls["fetch"] = time.monotonic() - t
        t = time.monotonic()
        out_tl = sync.transform_load(ctx, plan)
        walls["transform_load"] = time.monotonic() - t
        t = time.monotonic()
        out_rc = sync.reconcile(ctx, plan)
        walls["reconcile"] = time.monotonic() - t
        if plan["include_photos"] and store is not None and media_available():
            from mls_sync import media

            t = time.monotonic()
            for batch in media.plan_batches(ctx, plan):
                media_out.append(media.run_batch(ctx, plan, batch, store))
            walls["media"] = time.monotonic() - t
        t = time.monotonic()
        summary = sync.finalize(ctx, plan, [])
        walls["finalize"] = time.monotonic() - t
    wall = time.monotonic() - started
    return {"wall": wall, "walls": walls, "plan": plan, "fetch": out_fetch, "transform_load": out_tl,
            "reconcile": out_rc, "media": media_out, "summary": summary, "recorded": recorded}


RESULT_MARK = "RUNNER_RESULT "


def dag_run(provider_id: str, conf: dict[str, Any], db_url: str, storage: dict[str, Any] | None = None,
            timeout: float = 1800, on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The provider's real DAG through `dag.test()`, in a child process of its own.

    Airflow per-task overhead is included. A process of its own, as Airflow gives each task: run
    in the bench process, dag.test() left its in-process API server, threads and ~700,000 objects
    behind, and the engine-only runs measured after it in the same process were up to 2x slower
    in transform_load (reproduced in the bench, not in a smaller script; the cause was not pinned
    down).
    """
    env = dict(os.environ, MLS_DATABASE_URL=db_url)
    if storage is not None:
        env["MLS_MEDIA_STORAGE"] = json.dumps(storage)
    return run_module("bench.runner", [provider_id, json.dumps(conf)], RESULT_MARK,
                      f"dag.test() of {provider_id}", env=env, timeout=timeout, on_start=on_start)


def _dag_run_here(provider_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Task retries are set to 0 on the in-memory DAG so that a failing task fails the run at once
    instead of waiting out its retry delay."""
    from airflow.dag_processing.dagbag import DagBag

    from devstack import ROOT

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    from mls_sync.config import sync_dag_id

    dag = bag.get_dag(sync_dag_id(provider_id))
    if dag is None:
        raise RuntimeError(f"DAG {sync_dag_id(provider_id)} not found: {bag.import_errors}")
    for task in dag.tasks:
        task.retries = 0
    started = time.monotonic()
    dr = dag.test(run_conf=conf)
    wall = time.monotonic() - started
    states: dict[str, str] = {}
    for ti in dr.get_task_instances():
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[name] = str(getattr(ti.state, "value", ti.state))
    return {"wall": wall, "run_id": dr.run_id, "state": str(getattr(dr.state, "value", dr.state)),
            "task_states": states}


def _main(argv: list[str]) -> dict[str, Any]:
    """`PROVIDER CONF_JSON`: what `dag_run` starts."""
    from bench.stack import set_airflow_env

    set_airflow_env()
    return _dag_run_here(argv[0], json.loads(argv[1]))


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(_main(sys.argv[1:]), default=str), flush=True)
