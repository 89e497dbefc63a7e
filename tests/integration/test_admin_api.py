"""The MLS Sync dashboard inside the real Airflow API server (plugin loaded from plugins/).

One API server per module, on 127.0.0.1 and a free port, with the simple auth manager and two
users: `admin` (may trigger and edit) and `viewer` (read-only). Its Airflow metadata DB is SQLite
in a temp AIRFLOW_HOME with the DAGs serialized by `airflow dags reserialize`; no scheduler runs,
so a triggered run stays queued, which is what the grid shows. The properties database is the
test session's PostgreSQL, filled by a real sync of the demo RESO provider against the mock MLS.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from devstack import free_port, mls_connections
from devstack.topology import AIRFLOW, api_server_cmd, api_server_env, clean_env, run_cli, spawn, stop_group, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

PROVIDER = "demo_reso"
DAG_ID = f"mls_sync__{PROVIDER}"
XSS = "<script>alert('mls')</script>"


# ---------------------------------------------------------------- stack helpers (shared with the browser test)

@dataclass
class Stack:
    base_url: str
    passwords: dict[str, str]
    home: Path
    pid: int

    def token(self, user: str) -> str:
        r = requests.post(f"{self.base_url}/auth/token", timeout=30,
                          json={"username": user, "password": self.passwords[user]})
        r.raise_for_status()
        return r.json()["access_token"]

    def session(self, user: str | None) -> requests.Session:
        """A client that sends what a browser on the dashboard sends: its token and Origin."""
        s = requests.Session()
        s.headers["Origin"] = self.base_url
        if user:
            s.headers["Authorization"] = f"Bearer {self.token(user)}"
        return s


def _server_env(home: Path, port: int, db_url: str, passwords_file: Path) -> dict[str, str]:
    env = clean_env()
    env.update(api_server_env(home, port, passwords_file, users="admin:admin,viewer:viewer"))
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "MLS_DATABASE_URL": db_url,
        "MLS_SYNC_TRIGGER_MIN_INTERVAL_SECONDS": "60",
    })
    return env


@contextmanager
def airflow_api_server(db_url: str) -> Iterator[Stack]:
    """Migrate a throwaway Airflow DB, serialize the DAGs, run `airflow api-server`; always stopped."""
    home = Path(tempfile.mkdtemp(prefix="mls_admin_airflow_"))
    port = free_port()
    passwords = {"admin": secrets.token_urlsafe(12), "viewer": secrets.token_urlsafe(12)}
    pw_file = home / "passwords.json"
    pw_file.write_text(json.dumps(passwords))
    env = _server_env(home, port, db_url, pw_file)
    log = home / "airflow.log"
    proc: subprocess.Popen | None = None
    try:
        run_cli([AIRFLOW, "db", "migrate"], env, log)
        run_cli([AIRFLOW, "dags", "reserialize"], env, log)
        proc = spawn(api_server_cmd(port), env, log)  # own session: the server and its uvicorn worker
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/v2/monitor/health", proc, log)
        yield Stack(base_url=base, passwords=passwords, home=home, pid=proc.pid)
    finally:
        if proc is not None:
            stop_group(proc)
        shutil.rmtree(home, ignore_errors=True)


def reset_properties_db(engine: sa.Engine) -> None:
    from mls_sync.store.tables import TABLES

    with engine.begin() as c:
        c.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


def real_sync(engine: sa.Engine, listings: int = 120) -> dict[str, Any]:
    """A real sync of the demo RESO provider (listings and roster) against the mock MLS; returns
    its history row."""
    from mls_sync import connections, sync
    from mls_sync.config import find_provider
    from mls_sync.roster import sync_roster
    from mls_sync.store import runs
    from mls_sync.store.tables import tables

    from mock_mls import MockMLS

    with MockMLS(listings=listings, seed=5, photos_per_listing=1) as mls:
        env = mls_connections(mls.url, mls.credentials)
        ctx = sync.SyncContext(provider=find_provider(PROVIDER), db=engine,
                               mls=connections.from_env("mls_demo_reso", env))
        plan = sync.plan(ctx, dag_id=DAG_ID, dag_run_id="manual__seed", conf={"include_photos": False},
                         trigger="manual")
        sync.fetch(ctx, plan)
        sync.transform_load(ctx, plan)
        sync.reconcile(ctx, plan)
        sync_roster(ctx, plan)
        sync.finalize(ctx, plan)
    with engine.connect() as c:
        return runs.get_run(c, tables(engine), plan["sync_id"])


def roster_held(engine: sa.Engine) -> dict[str, int]:
    """Live rows of each roster table for PROVIDER, as the database has them."""
    from mls_sync.columns import ROSTER_TABLES

    with engine.connect() as c:
        return {kind: c.execute(sa.text(f"SELECT count(*) FROM {table} WHERE provider_id = :p AND deleted_at IS NULL"),
                                {"p": PROVIDER}).scalar_one() for kind, table in ROSTER_TABLES.items()}


def make_conflict(engine: sa.Engine, index: int = 0) -> tuple[int, str]:
    """Edit a synced listing locally, then let the MLS change the same fields: an open conflict."""
    from mls_sync.columns import MAPPABLE_COLUMNS
    from mls_sync.mapping import row_hash
    from mls_sync.store import properties as prop_store
    from mls_sync.store.tables import tables

    t = tables(engine)
    p = t.properties
    with engine.begin() as c:
        cur = c.execute(sa.select(p).where(p.c.provider_id == PROVIDER, p.c.local_edits == sa.text("'{}'::jsonb"))
                        .order_by(p.c.listing_key).offset(index).limit(1)).mappings().one()
        key = cur["listing_key"]
        prop_store.edit_property(c, t, PROVIDER, key, {"price": 111111, "public_remarks": "Local remarks"}, "agent7")
        row = {col: cur[col] for col in MAPPABLE_COLUMNS}
        row.update(price=222222, public_remarks=f"MLS says {XSS}")
        prop_store.upsert_rows(c, t, PROVIDER, "manual", [(row, row_hash(row))], None)
        pc = t.property_conflicts
        cid = c.execute(sa.select(pc.c.id).where(pc.c.listing_key == key, pc.c.state == "open")).scalar_one()
    return int(cid), key


def make_error(engine: sa.Engine, ref: str, *, dead: bool) -> int:
    from mls_sync.store import errors as err_store
    from mls_sync.store.tables import tables

    t = tables(engine)
    e = t.mls_sync_errors
    with engine.begin() as c:
        err_store.record_error(c, t, provider_id=PROVIDER, stage="transform", category="data", ref=ref,
                               message=f"PostalCode rejected: {XSS}", payload={"Remarks": XSS},
                               max_attempts=1 if dead else 5)
        return int(c.execute(sa.select(e.c.id).where(e.c.ref == ref)).scalar_one())


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def seeded(migrated_engine: sa.Engine) -> dict[str, Any]:
    reset_properties_db(migrated_engine)
    run = real_sync(migrated_engine)
    assert run["state"] == "success" and run["added"] > 0
    return {"run": run}


@pytest.fixture(scope="module")
def stack(db_url: str, seeded: dict[str, Any]) -> Iterator[Stack]:
    with airflow_api_server(db_url) as s:
        yield s


@pytest.fixture(scope="module")
def admin(stack: Stack) -> requests.Session:
    return stack.session("admin")


@pytest.fixture(scope="module")
def viewer(stack: Stack) -> requests.Session:
    return stack.session("viewer")


def _url(stack: Stack, path: str) -> str:
    return f"{stack.base_url}/mls-sync{path}"


READ_PATHS = ["/", "/history", "/errors", "/conflicts", "/actions", "/runs/1", "/static/app.js",
              "/api/overview", "/api/history", "/api/errors", "/api/conflicts", "/api/runs/1"]
ACTIONS = [("/api/providers/demo_reso/trigger", {"dry_run": True}), ("/api/providers/demo_reso/cancel", {}),
           ("/api/errors/retry", {"ids": [1]}), ("/api/errors/dismiss", {"ids": [1]}),
           ("/api/conflicts/1/resolve", {"decision": "local"})]


# ---------------------------------------------------------------- tests

def test_plugin_is_registered_with_nav_entry(admin: requests.Session, stack: Stack) -> None:
    plugins = admin.get(f"{stack.base_url}/api/v2/plugins", timeout=30).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "mls_sync")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/mls-sync"
    assert ours["external_views"][0]["name"] == "MLS Sync"
    assert ours["external_views"][0]["url_route"] == "mls-sync"


def test_no_session_no_data(stack: Stack, seeded: dict[str, Any]) -> None:
    anon = requests.Session()
    for path in READ_PATHS:
        for headers in ({}, {"Accept": "text/html"}, {"Authorization": "Bearer not-a-token"},
                        {"Cookie": "_token=forged.jwt.value"}):
            r = anon.get(_url(stack, path), headers=headers, timeout=30)
            assert r.status_code in (401, 403), (path, headers, r.status_code)
            assert PROVIDER not in r.text and "records_fetched" not in r.text
    for path, body in ACTIONS:
        r = anon.post(_url(stack, path), json=body, timeout=30)
        assert r.status_code in (401, 403), (path, r.status_code)
    r = anon.get(_url(stack, "/"), headers={"Accept": "text/html"}, timeout=30)
    assert "Log in to Airflow" in r.text  # a page that says what to do, still without data


def test_viewer_reads_but_may_not_act(viewer: requests.Session, stack: Stack, migrated_engine: sa.Engine) -> None:
    cid, key = make_conflict(migrated_engine, index=10)
    eid = make_error(migrated_engine, "viewer-err", dead=True)
    r = viewer.get(_url(stack, "/api/overview"), timeout=30)
    assert r.status_code == 200
    assert [p["provider_id"] for p in r.json()["providers"] if p["provider_id"] == PROVIDER]
    card = next(p for p in r.json()["providers"] if p["provider_id"] == PROVIDER)
    assert card["can_trigger"] is False
    page = viewer.get(_url(stack, "/conflicts"), timeout=30).text
    assert key in page and "Keep local" not in page  # read-only: no action buttons
    for path, body in [*ACTIONS, (f"/api/conflicts/{cid}/resolve", {"decision": "mls"}),
                       ("/api/errors/retry", {"ids": [eid]})]:
        r = viewer.post(_url(stack, path), json=body, timeout=30)
        assert r.status_code == 403, (path, r.status_code, r.text)
    from mls_sync.store.tables import tables

    t = tables(migrated_engine)
    with migrated_engine.connect() as c:
        assert c.execute(sa.select(t.property_conflicts.c.state).where(t.property_conflicts.c.id == cid)
                         ).scalar_one() == "open"
        assert c.execute(sa.select(t.mls_sync_errors.c.dead_letter).where(t.mls_sync_errors.c.id == eid)
                         ).scalar_one() is True


def test_overview_last_run_counts_match_database(admin: requests.Session, stack: Stack,
                                                 seeded: dict[str, Any], migrated_engine: sa.Engine) -> None:
    from mls_sync.store.runs import COUNT_COLUMNS

    run = seeded["run"]
    card = next(p for p in admin.get(_url(stack, "/api/overview"), timeout=30).json()["providers"]
                if p["provider_id"] == PROVIDER)
    assert card["last_run"]["id"] == run["id"]
    assert card["last_run"]["counts"] == {k: int(run[k]) for k in COUNT_COLUMNS}
    assert card["last_run_mode"] == run["mode"] and card["state"] == "idle"
    assert card["dag_url"] == f"/dags/{DAG_ID}"
    html = admin.get(_url(stack, "/"), timeout=30).text
    for key in ("records_fetched", "added", "updated", "failed"):
        assert f'data-count="{key}">{int(run[key]):,}<' in html
    detail = admin.get(_url(stack, f"/api/runs/{run['id']}"), timeout=30).json()
    assert [s for s, _ in detail["timings"]][:3] == ["plan", "fetch", "transform_load"]
    # the roster: what is held per resource, and what the run fetched of it
    held = roster_held(migrated_engine)
    assert list(card["roster"]) == ["member", "office", "open_house"]
    for kind, n in held.items():
        assert card["roster"][kind]["held"] == n > 0, kind
        assert card["roster"][kind]["fetched"] == run["report"]["roster"][kind]["fetched"] == n, kind
        assert f'<tr data-roster="{kind}">' in html
    history = admin.get(_url(stack, f"/api/history?provider={PROVIDER}"), timeout=30).json()["rows"]
    assert next(r for r in history if r["id"] == run["id"])["roster"]["member"]["fetched"] == held["member"]


def test_trigger_dry_run_appears_in_airflow_then_refused_cancel_and_rate_limit(
        admin: requests.Session, stack: Stack) -> None:
    r = admin.post(_url(stack, f"/api/providers/{PROVIDER}/trigger"), timeout=60,
                   json={"listing_keys": "K1, K2", "cities": "Austin\nRound Rock", "dry_run": True,
                         "modified_since": "2026-01-02T03:04", "include_photos": False})
    assert r.status_code == 201, r.text
    assert r.json()["message"].startswith("Queued dry-run partial sync")
    run_id = r.json()["run_id"]
    runs = admin.get(f"{stack.base_url}/api/v2/dags/{DAG_ID}/dagRuns", timeout=30).json()["dag_runs"]
    ours = next(x for x in runs if x["dag_run_id"] == run_id)
    assert ours["state"] == "queued" and ours["run_type"] == "manual"
    assert ours["triggering_user_name"] == "admin"
    assert ours["conf"]["dry_run"] is True and ours["conf"]["listing_keys"] == ["K1", "K2"]
    # the same options, under the same names, as the DAG's trigger form (its Params)
    assert ours["conf"]["cities"] == ["Austin", "Round Rock"]
    assert ours["conf"]["modified_since"] == "2026-01-02T03:04:00Z"
    from mls_sync.run_options import PARAM_SCHEMAS

    assert set(ours["conf"]) == set(PARAM_SCHEMAS)

    again = admin.post(_url(stack, f"/api/providers/{PROVIDER}/trigger"), json={"dry_run": True}, timeout=60)
    assert again.status_code == 409
    assert "already queued" in again.json()["detail"] and run_id in again.json()["detail"]

    cancel = admin.post(_url(stack, f"/api/providers/{PROVIDER}/cancel"), json={}, timeout=60)
    assert cancel.status_code == 200, cancel.text
    state = admin.get(f"{stack.base_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30).json()["state"]
    assert state == "failed"

    limited = admin.post(_url(stack, f"/api/providers/{PROVIDER}/trigger"), json={"dry_run": True}, timeout=60)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "one per 60 s" in limited.json()["detail"]


def test_bad_trigger_input_and_csrf_guards(admin: requests.Session, stack: Stack) -> None:
    url = _url(stack, f"/api/providers/{PROVIDER}/trigger")
    partial = admin.post(url, json={"mode": "partial"}, timeout=30)  # the DAG's Params have no such mode
    assert partial.status_code == 400 and "mode" in partial.json()["detail"], partial.text
    assert admin.post(url, json={"listing_keys": "bad key;DROP"}, timeout=30).status_code == 400
    assert admin.post(url, json={"mode": "sideways"}, timeout=30).status_code == 400
    assert admin.post(url, json={"colour": "red"}, timeout=30).status_code == 400
    assert admin.post(url, data="mode=full", headers={"Content-Type": "application/x-www-form-urlencoded"},
                      timeout=30).status_code == 415
    assert admin.post(url, json={}, headers={"Origin": "https://evil.example"}, timeout=30).status_code == 403
    assert admin.get(url, timeout=30).status_code == 405  # actions are never GET
    assert admin.post(_url(stack, "/api/providers/nope/trigger"), json={}, timeout=30).status_code == 404


def test_actions_need_a_same_origin_origin_or_referer_or_the_action_header(admin: requests.Session,
                                                                           stack: Stack) -> None:
    """`Origin: null` and a missing Origin were accepted. An action that passes the guard answers
    404 here (no such error); one the guard refuses, 403."""
    from mls_sync_airflow.admin.auth import ACTION_HEADER

    url, body = _url(stack, "/api/errors/retry"), {"ids": [987654]}
    refused = [{"Origin": "null"}, {"Origin": None}, {"Origin": None, "Referer": "https://evil.example/mls-sync/"},
               {"Origin": "https://evil.example", ACTION_HEADER: "1"}]
    for headers in refused:
        r = admin.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 403, (headers, r.text)
    allowed = [{}, {"Origin": None, "Referer": f"{stack.base_url}/mls-sync/errors"},
               {"Origin": None, ACTION_HEADER: "1"}, {"Origin": "null", ACTION_HEADER: "1"}]
    for headers in allowed:
        r = admin.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 404, (headers, r.text)


def test_resolve_conflicts_applies_and_records(admin: requests.Session, stack: Stack,
                                               migrated_engine: sa.Engine) -> None:
    from mls_sync.store.tables import tables

    t = tables(migrated_engine)
    p, pc = t.properties, t.property_conflicts
    cid, key = make_conflict(migrated_engine, index=0)
    cid2, key2 = make_conflict(migrated_engine, index=1)
    before = datetime.now(UTC)
    r = admin.post(_url(stack, f"/api/conflicts/{cid}/resolve"), json={"decision": "mls"}, timeout=30)
    assert r.status_code == 200, r.text
    r2 = admin.post(_url(stack, f"/api/conflicts/{cid2}/resolve"), timeout=30,
                    json={"decision": "per_field", "fields": {"price": "local", "public_remarks": "mls"}})
    assert r2.status_code == 200, r2.text
    assert admin.post(_url(stack, f"/api/conflicts/{cid}/resolve"), json={"decision": "local"},
                      timeout=30).status_code == 409
    with migrated_engine.connect() as c:
        row = c.execute(sa.select(pc).where(pc.c.id == cid)).mappings().one()
        prop = c.execute(sa.select(p).where(p.c.listing_key == key)).mappings().one()
        prop2 = c.execute(sa.select(p).where(p.c.listing_key == key2)).mappings().one()
    assert row["state"] == "resolved" and row["resolution"] == "mls" and row["resolved_by"] == "admin"
    assert row["resolved_at"] >= before - timedelta(seconds=5)
    assert float(prop["price"]) == 222222 and prop["public_remarks"] == f"MLS says {XSS}"
    assert prop["local_edits"] == {}
    assert float(prop2["price"]) == 111111 and prop2["public_remarks"] == f"MLS says {XSS}"
    assert set(prop2["local_edits"]) == {"price"}


def test_retry_and_dismiss_errors(admin: requests.Session, stack: Stack, migrated_engine: sa.Engine) -> None:
    from mls_sync.store.tables import tables

    e = tables(migrated_engine).mls_sync_errors
    dead = make_error(migrated_engine, "dead-1", dead=True)
    other = make_error(migrated_engine, "retry-2", dead=False)
    gone = make_error(migrated_engine, "dismiss-3", dead=False)
    listed = admin.get(_url(stack, "/api/errors"), params={"state": "dead_letter", "category": "data"},
                       timeout=30).json()
    assert dead in [r["id"] for r in listed["rows"]] and other not in [r["id"] for r in listed["rows"]]
    r = admin.post(_url(stack, "/api/errors/retry"), json={"ids": [dead, other]}, timeout=30)
    assert r.status_code == 200 and r.json()["updated"] == 2
    d = admin.post(_url(stack, "/api/errors/dismiss"), json={"ids": [gone]}, timeout=30)
    assert d.status_code == 200 and d.json()["updated"] == 1
    assert admin.post(_url(stack, "/api/errors/retry"), json={"ids": [987654]}, timeout=30).status_code == 404
    with migrated_engine.connect() as c:
        rows = {r["id"]: r for r in c.execute(sa.select(e).where(e.c.id.in_([dead, other, gone]))).mappings()}
        now = c.execute(sa.select(sa.func.now())).scalar_one()
    for i in (dead, other):
        assert rows[i]["dead_letter"] is False and rows[i]["resolved_at"] is None
        assert abs((rows[i]["next_retry_at"] - now).total_seconds()) < 60
    assert rows[gone]["resolved_at"] is not None and rows[gone]["resolution"] == "dismissed by admin"


def test_mls_text_is_escaped(admin: requests.Session, stack: Stack, migrated_engine: sa.Engine) -> None:
    make_conflict(migrated_engine, index=20)
    make_error(migrated_engine, "xss-4", dead=False)
    for path in ("/conflicts", "/errors"):
        r = admin.get(_url(stack, path), timeout=30)
        assert r.status_code == 200
        assert XSS not in r.text
        assert "&lt;script&gt;alert(" in r.text
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]


def test_a_failed_runs_cause_who_and_filters_are_shown(admin: requests.Session, stack: Stack,
                                                       migrated_engine: sa.Engine) -> None:
    """The cause (first failing task, error class, message) on the card, the run page and the
    history; a partial run's filters and who triggered it in the history and on the run page.
    Must stay this module's last test: it leaves the provider's last run failed."""
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.sources.base import AuthError

    ctx = sync.SyncContext(provider=find_provider(PROVIDER), db=migrated_engine, mls=lambda: None)
    plan = sync.plan(ctx, dag_id=DAG_ID, dag_run_id="manual__cause", trigger="manual", triggered_by="agent7",
                     conf={"listing_keys": ["K9", "K10"], "cities": ["Round Rock"], "include_photos": False})
    sync.record_failure(ctx, plan, "fetch", AuthError("Login: RETS ReplyCode 20036 Invalid username or password"))
    closed = sync.finalize(ctx, plan, ["fetch"])
    assert closed["state"] == "failed"
    cause = "fetch failed: AuthError (auth): Login: RETS ReplyCode 20036 Invalid username or password"

    card = next(p for p in admin.get(_url(stack, "/api/overview"), timeout=30).json()["providers"]
                if p["provider_id"] == PROVIDER)
    assert card["last_run"]["cause"]["error"] == "AuthError" and card["last_run"]["cause"]["task"] == "fetch"
    overview = admin.get(_url(stack, "/"), timeout=30).text
    assert "Cause: " in overview and _text_of_html(cause) in _text_of_html(overview)

    run_page = admin.get(_url(stack, f"/runs/{plan['sync_id']}"), timeout=30).text
    assert _text_of_html(cause) in _text_of_html(run_page)
    assert "manual · agent7" in run_page and "keys K9, K10; cities Round Rock" in run_page

    history = admin.get(_url(stack, "/api/history"), params={"provider": PROVIDER}, timeout=30).json()
    row = next(r for r in history["rows"] if r["id"] == plan["sync_id"])
    assert row["triggered_by"] == "agent7" and row["filters"] == "keys K9, K10; cities Round Rock"
    assert row["cause"]["cause"].startswith("Login: RETS ReplyCode 20036")
    page = admin.get(_url(stack, "/history"), params={"provider": PROVIDER}, timeout=30).text
    assert "keys K9, K10; cities Round Rock" in page and _text_of_html(cause) in _text_of_html(page)

    # and the Errors page, filtered to auth, lists the run's failure (it was empty after a 401)
    errors = admin.get(_url(stack, "/api/errors"), params={"provider": PROVIDER, "category": "auth"},
                       timeout=30).json()["rows"]
    mine = [e for e in errors if e["ref"] == f"sync:{plan['sync_id']}"]
    assert len(mine) == 1 and mine[0]["stage"] == "fetch" and "20036" in mine[0]["message"], errors
    html = admin.get(_url(stack, "/errors"), params={"category": "auth"}, timeout=30).text
    assert "Invalid username or password" in html


def _text_of_html(html: str) -> str:
    """Page text without tags and with collapsed spaces, to find a sentence split by markup."""
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
