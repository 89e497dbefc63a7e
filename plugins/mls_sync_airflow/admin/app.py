"""The MLS Sync dashboard: a FastAPI app the Airflow API server mounts at /mls-sync.

Server-rendered HTML (Jinja2, autoescape on: every MLS-sourced string is escaped) with a little
local JavaScript, plus the JSON API the pages' buttons call. Every route depends on Airflow's
`get_user`, so the Airflow session cookie (or a bearer token) is required, and every provider is
checked against the auth manager before its data is shown or an action runs.

Nothing touches a database at import time: every Airflow component (scheduler, workers, the
dag-processor) loads plugins, and only the API server serves this app.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, Response
from mls_sync.config import ConfigError, ProviderConfig, load_providers, sync_dag_id
from mls_sync.run_options import RunOptions, RunOptionsError
from mls_sync.store import conflicts as conflict_store
from mls_sync.store import errors as err_store
from mls_sync.store import reports
from mls_sync.store.errors import CATEGORIES
from mls_sync.store.tables import Tables, tables
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from mls_sync_airflow.admin import airflow_ops
from mls_sync_airflow.admin.auth import allowed, require, same_origin_json, user_name
from mls_sync_airflow.links import dag_url, run_url, ui_root

HERE = Path(__file__).resolve().parent
STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
MIN_TRIGGER_INTERVAL_ENV = "MLS_SYNC_TRIGGER_MIN_INTERVAL_SECONDS"
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _get_user_dep() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


User = Annotated[Any, Depends(_get_user_dep())]


# ---------------------------------------------------------------- providers and data access

@dataclass(frozen=True)
class Provider:
    provider_id: str
    dag_id: str
    name: str
    protocol: str
    schedule: str | None
    enabled: bool
    config: ProviderConfig | None
    config_error: str | None = None


def all_providers() -> list[Provider]:
    """Every provider YAML, including broken ones (shown with their error, never hidden)."""
    out = []
    for path, cfg in load_providers():
        if isinstance(cfg, ConfigError):
            out.append(Provider(path.stem, sync_dag_id(path.stem), path.stem, "?", None, False, None, str(cfg)))
        else:
            out.append(Provider(cfg.provider_id, cfg.dag_id(), cfg.name, cfg.protocol, cfg.schedule, cfg.enabled,
                                cfg))
    return out


def visible_providers(user: Any) -> list[Provider]:
    """The providers whose sync DAG this user may read; none at all is a 403, not an empty page."""
    seen = [p for p in all_providers() if allowed(user, p.dag_id, "read")]
    if not seen:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Your Airflow role cannot read any MLS sync DAG")
    return seen


def _pick(providers: Sequence[Provider], provider_id: str | None) -> Provider | None:
    if not provider_id:
        return None
    for p in providers:
        if p.provider_id == provider_id:
            return p
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"No provider {provider_id!r} visible to you")


@cache
def _engine() -> Engine:
    from mls_sync.store.db import migrate

    from mls_sync_airflow.hooks import PropertiesStoreHook

    engine = PropertiesStoreHook().get_conn()
    migrate(engine)  # cheap when current; the dashboard may be opened before the first sync
    return engine


def _db() -> tuple[Engine, Tables]:
    engine = _engine()
    return engine, tables(engine)


def min_trigger_interval() -> int:
    return int(os.environ.get(MIN_TRIGGER_INTERVAL_ENV, "60"))


# ---------------------------------------------------------------- links and rendering

def _fmt_dt(value: Any) -> str:
    if not isinstance(value, datetime):
        return "—" if value in (None, "") else str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_duration(seconds: Any) -> str:
    if seconds in (None, ""):
        return "—"
    s = round(float(seconds))
    if s < 60:
        return f"{float(seconds):.1f} s" if float(seconds) < 10 else f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def _fmt_num(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "—"


def _fmt_value(value: Any) -> str:
    """A field value as plain text for the side-by-side table (escaped later by the template)."""
    if value is None:
        return "∅"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def page_numbers(data: dict[str, Any]) -> list[int]:
    """Pages to link around the current one (first, last, and two either side)."""
    cur, last = data["page"], data["pages"]
    return sorted({1, last, *range(max(1, cur - 2), min(last, cur + 2) + 1)})


@cache
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(dt=_fmt_dt, dur=_fmt_duration, num=_fmt_num, val=_fmt_value)
    env.globals.update(page_numbers=page_numbers)
    return env


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    root = _root(request)

    def url(path: str = "", **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        return f"{root}/{path.lstrip('/')}" + (f"?{query}" if query else "")

    html = _templates().get_template(template).render(
        url=url, page=template.removesuffix(".html"), airflow_home=ui_root() or "/", **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def as_json(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data), status_code=status_code,
                        headers={"Cache-Control": "no-store", **(headers or {})})


# ---------------------------------------------------------------- overview

def setup_notes(p: Provider, pools: set[str]) -> dict[str, list[str]]:
    """What Airflow itself would not say on this page: problems that keep a valid provider from
    syncing, and notes on what happens by itself."""
    out: dict[str, list[str]] = {"problems": [], "notes": []}
    if p.config is None:
        return out
    if not airflow_ops.connection_defined(p.config.connection_id):
        out["problems"].append(
            f"MLS connection {p.config.connection_id!r} is not defined in Airflow: add it (Admin > Connections, "
            f"or `airflow connections add {p.config.connection_id} ...`); syncs fail until then.")
    if p.config.pool() not in pools:
        out["notes"].append(f"Pool {p.config.pool()!r} does not exist yet: the scheduler makes it from the YAML "
                            f"({p.config.limits.pool_slots} slots) when the provider's first run starts.")
    return out


def reconcile_view(figures: dict[str, Any] | None, config: ProviderConfig | None) -> dict[str, Any] | None:
    """The last reconciliation's figures, with whether its drift was above the YAML's threshold."""
    if not figures:
        return None
    limit = config.reconcile.max_drift if config else 0.0
    return {**figures, "max_drift": limit, "over": float(figures.get("drift") or 0) > limit}


def _display_state(state: str, active: Any) -> str:
    """The badge: our own state, unless Airflow already has a run of it queued or running
    (before `plan` marks the provider running, ours still says idle or failed)."""
    if state == "running" or active is None:
        return state
    return "queued" if active.state == "queued" else "running"


def _card(p: Provider, status_row: dict[str, Any] | None, dag: dict[str, Any], user: Any,
          pools: set[str]) -> dict[str, Any]:
    s = status_row or {}
    state = s.get("state") or ("disabled" if not p.enabled else "idle")
    active = dag.get("active_run")
    last = s.get("last_run")
    latest_airflow = dag.get("latest_run")
    last_run_id = (last or {}).get("dag_run_id") or (latest_airflow.run_id if latest_airflow else None)
    card = {k: s.get(k) for k in ("current_stage", "last_run_at", "last_run_mode", "last_success_at",
                                   "last_failure_at", "last_error", "last_duration_seconds", "current_run",
                                   "last_reconciled_at")}
    card["reconcile"] = reconcile_view(s.get("last_reconcile"), p.config)
    card["roster"] = s.get("roster") or {}
    card.update({k: s.get(k, 0) for k in ("errors_24h", "open_errors", "dead_letters", "open_conflicts")})
    card.update(
        provider_id=p.provider_id, name=p.name, protocol=p.protocol.upper(), dag_id=p.dag_id, schedule=p.schedule,
        config_error=p.config_error, state=state, display_state=_display_state(state, active),
        setup=setup_notes(p, pools),
        paused=dag.get("is_paused"), known_to_airflow=dag.get("known"),
        progress=s.get("progress") or {}, last_run=last, next_run_after=dag.get("next_run_after"),
        next_run_due=bool(dag.get("next_run_after") and dag["next_run_after"] <= datetime.now(UTC)),
        active_run=active, dag_url=dag_url(p.dag_id), last_run_url=run_url(p.dag_id, last_run_id),
        can_trigger=allowed(user, p.dag_id, "trigger"), can_cancel=allowed(user, p.dag_id, "cancel"),
    )
    return card


def overview_cards(user: Any) -> list[dict[str, Any]]:
    providers = visible_providers(user)
    engine, t = _db()
    with engine.connect() as conn:
        rows = reports.overview(conn, t, [p.provider_id for p in providers])
    dags = airflow_ops.dag_states(p.dag_id for p in providers)
    pools = airflow_ops.existing_pools(p.config.pool() for p in providers if p.config is not None)
    return [_card(p, rows.get(p.provider_id), dags[p.dag_id], user, pools) for p in providers]


# ---------------------------------------------------------------- request bodies

class IdsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(min_length=1, max_length=500)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["local", "mls", "per_field"]
    fields: dict[str, Literal["local", "mls"]] | None = None


# ---------------------------------------------------------------- routes

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, user: User) -> HTMLResponse:
    return render(request, "overview.html", cards=overview_cards(user), refresh_seconds=5)


@router.get("/api/overview")
def overview_api(user: User) -> JSONResponse:
    return as_json({"providers": overview_cards(user), "generated_at": datetime.now(UTC)})


def _report(user: Any, provider: str | None, query: Any, **kwargs: Any) -> tuple[list[Provider], dict[str, Any]]:
    """Run one of the reports queries limited to the providers this user may read."""
    providers = visible_providers(user)
    _pick(providers, provider)
    engine, t = _db()
    with engine.connect() as conn:
        data = query(conn, t, [p.provider_id for p in providers], provider_id=provider or None, **kwargs)
    return providers, data


def _mark_editable(user: Any, providers: list[Provider], rows: list[dict[str, Any]], done_state: str) -> None:
    """Flag rows this user may act on: not finished yet, and the provider's DAG is editable."""
    editable = {p.provider_id for p in providers if allowed(user, p.dag_id, "edit")}
    for r in rows:
        r["can_edit"] = r["provider_id"] in editable and r["state"] != done_state


def _history(user: Any, provider: str | None, state: str | None, page: int) -> tuple[list[Provider], dict]:
    providers, data = _report(user, provider, reports.history_page, state=state or None, page=page, per_page=25)
    names = {p.provider_id: p for p in providers}
    for r in data["rows"]:
        r["run_url"] = run_url(r["dag_id"], r["dag_run_id"]) if r["dag_id"] else None
        r["provider_name"] = names[r["provider_id"]].name if r["provider_id"] in names else r["provider_id"]
    return providers, data


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request, user: User, provider: str | None = None,
                 state: Literal["running", "success", "failed", "cancelled", ""] | None = None,
                 page: int = 1) -> HTMLResponse:
    providers, data = _history(user, provider, state, page)
    return render(request, "history.html", providers=providers, data=data,
                  filters={"provider": provider or "", "state": state or ""})


@router.get("/api/history")
def history_api(user: User, provider: str | None = None,
                state: Literal["running", "success", "failed", "cancelled", ""] | None = None,
                page: int = 1) -> JSONResponse:
    return as_json(_history(user, provider, state, page)[1])


def _run(user: Any, run_id: int) -> dict[str, Any]:
    providers = visible_providers(user)
    engine, t = _db()
    with engine.connect() as conn:
        run = reports.run_detail(conn, t, run_id, [p.provider_id for p in providers])
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No run {run_id} visible to you")
    run["run_url"] = run_url(run["dag_id"], run["dag_run_id"]) if run["dag_id"] else None
    if (run.get("report") or {}).get("reconcile"):
        config = next((p.config for p in providers if p.provider_id == run["provider_id"]), None)
        run["report"]["reconcile"] = reconcile_view(run["report"]["reconcile"], config)
    total = sum(s for _, s in run["timings"]) or 1.0
    run["timing_bars"] = [(name, secs, round(100 * secs / total, 1)) for name, secs in run["timings"]]
    _mark_editable(user, providers, run["errors"], "resolved")
    return run


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, user: User, run_id: int) -> HTMLResponse:
    return render(request, "run.html", run=_run(user, run_id))


@router.get("/api/runs/{run_id}")
def run_api(user: User, run_id: int) -> JSONResponse:
    return as_json(_run(user, run_id))


ErrorState = Literal["retrying", "dead_letter", "resolved", ""]


def _errors(user: Any, provider: str | None, category: str | None, state: str | None,
            page: int) -> tuple[list[Provider], dict[str, Any]]:
    if category and category not in CATEGORIES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"category must be one of {', '.join(CATEGORIES)}")
    providers, data = _report(user, provider, reports.errors_page, category=category or None,
                              state=state or None, page=page, per_page=50)
    _mark_editable(user, providers, data["rows"], "resolved")
    return providers, data


@router.get("/errors", response_class=HTMLResponse)
def errors_page(request: Request, user: User, provider: str | None = None, category: str | None = None,
                state: ErrorState | None = None, page: int = 1) -> HTMLResponse:
    providers, data = _errors(user, provider, category, state, page)
    return render(request, "errors.html", providers=providers, data=data, categories=CATEGORIES,
                  states=reports.ERROR_STATES,
                  filters={"provider": provider or "", "category": category or "", "state": state or ""})


@router.get("/api/errors")
def errors_api(user: User, provider: str | None = None, category: str | None = None,
               state: ErrorState | None = None, page: int = 1) -> JSONResponse:
    return as_json(_errors(user, provider, category, state, page)[1])


def _conflicts(user: Any, provider: str | None, state: str | None, page: int) -> tuple[list[Provider], dict]:
    providers, data = _report(user, provider, reports.conflicts_page, state=state or None, page=page, per_page=20)
    _mark_editable(user, providers, data["rows"], "resolved")
    return providers, data


ConflictState = Literal["open", "resolved", ""]


@router.get("/conflicts", response_class=HTMLResponse)
def conflicts_page(request: Request, user: User, provider: str | None = None,
                   state: ConflictState | None = "open", page: int = 1) -> HTMLResponse:
    providers, data = _conflicts(user, provider, state, page)
    return render(request, "conflicts.html", providers=providers, data=data,
                  filters={"provider": provider or "", "state": state or ""})


@router.get("/api/conflicts")
def conflicts_api(user: User, provider: str | None = None, state: ConflictState | None = "open",
                  page: int = 1) -> JSONResponse:
    return as_json(_conflicts(user, provider, state, page)[1])


@router.get("/actions", response_class=HTMLResponse)
def actions_page(request: Request, user: User, provider: str | None = None) -> HTMLResponse:
    cards = overview_cards(user)
    if provider:
        cards = [c for c in cards if c["provider_id"] == provider] or cards
    return render(request, "actions.html", cards=cards, min_interval=min_trigger_interval())


@router.get("/static/{name}")
def static_file(name: str, user: User) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not found")
    body = (HERE / "static" / name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name],
                    headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


# ---------------------------------------------------------------- actions (POST + JSON only)

actions = APIRouter(prefix="/api", dependencies=[Depends(same_origin_json)])


def _provider_for(user: Any, provider_id: str, action: Literal["trigger", "cancel", "edit"]) -> Provider:
    provider = _pick(visible_providers(user), provider_id)
    assert provider is not None
    require(user, provider.dag_id, action)
    return provider


@actions.post("/providers/{provider_id}/trigger")
def trigger_sync(provider_id: str, user: User, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
    """Queue the provider's sync DAG with this conf, through Airflow (it shows in the grid).

    The body is the run's conf, checked by the same RunOptions the DAG's plan task and its trigger
    form use: one set of options, refused here before a run exists.
    """
    provider = _provider_for(user, provider_id, "trigger")
    if provider.config is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Provider config is invalid: {provider.config_error}")
    try:
        opts = RunOptions.from_conf(body)
    except RunOptionsError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    conf = opts.model_dump(mode="json")
    try:
        ref = airflow_ops.trigger(provider.dag_id, conf, user_name(user), min_trigger_interval())
    except airflow_ops.ActionRefused as exc:
        return as_json({"ok": False, "detail": exc.message}, exc.status,
                       airflow_ops.retry_after_header(exc.retry_after))
    kind = "dry-run " if opts.dry_run else ""
    mode = "partial" if opts.partial else ("incremental" if opts.mode == "auto" else opts.mode)
    return as_json({"ok": True, "message": f"Queued {kind}{mode} sync: run {ref.run_id}", "dag_id": ref.dag_id,
                    "run_id": ref.run_id, "state": ref.state, "conf": conf,
                    "run_url": run_url(ref.dag_id, ref.run_id)}, status.HTTP_201_CREATED)


@actions.post("/providers/{provider_id}/cancel")
def cancel_sync(provider_id: str, user: User) -> JSONResponse:
    """Mark the provider's queued/running run failed in Airflow, then close its history row."""
    provider = _provider_for(user, provider_id, "cancel")
    try:
        ref = airflow_ops.cancel(provider.dag_id, user_name(user))
    except airflow_ops.ActionRefused as exc:
        return as_json({"ok": False, "detail": exc.message}, exc.status)
    closed = False
    if provider.config is not None:
        from mls_sync import sync

        from mls_sync_airflow.hooks import MlsHook

        engine, _ = _db()
        # closing the history row touches only the database: the MLS connection is never looked up
        ctx = sync.SyncContext(provider=provider.config, db=engine, mls=MlsHook(provider.config.connection_id).get_conn)
        closed = sync.mark_cancelled_if_running(ctx, ref.dag_id, ref.run_id)
    return as_json({"ok": True, "message": f"Cancelled run {ref.run_id}", "run_id": ref.run_id,
                    "history_closed": closed})


def editable_providers(user: Any) -> dict[str, Provider]:
    """Providers this user may edit; a read-only user is refused before anything is looked up."""
    providers = {p.provider_id: p for p in visible_providers(user) if allowed(user, p.dag_id, "edit")}
    if not providers:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Your Airflow role may not change MLS sync data")
    return providers


def _error_action(user: Any, ids: list[int], action: Literal["retry", "dismiss"]) -> JSONResponse:
    providers = editable_providers(user)
    engine, t = _db()
    with engine.begin() as conn:
        owners = reports.error_providers(conn, t, ids)
        missing = sorted(set(ids) - set(owners))
        if missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No errors {missing}")
        if any(pid not in providers for pid in owners.values()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Some of these errors belong to a provider you may not edit")
        who = user_name(user)
        done = err_store.retry_now(conn, t, ids) if action == "retry" else err_store.dismiss(conn, t, ids, who)
    for pid in set(owners.values()):
        airflow_ops.audit(f"mls_sync.errors.{action}", providers[pid].dag_id, who,
                          {"ids": [i for i, p in owners.items() if p == pid]})
    verb = "due for retry now" if action == "retry" else "dismissed"
    skipped = len(ids) - done
    note = f" ({skipped} already resolved)" if skipped else ""
    return as_json({"ok": True, "updated": done, "message": f"{done} error(s) {verb}{note}"})


@actions.post("/errors/retry")
def retry_errors(user: User, body: Annotated[IdsBody, Body()]) -> JSONResponse:
    """Make errors due now (dead letters get one more chance); the next run picks them up."""
    return _error_action(user, body.ids, "retry")


@actions.post("/errors/dismiss")
def dismiss_errors(user: User, body: Annotated[IdsBody, Body()]) -> JSONResponse:
    return _error_action(user, body.ids, "dismiss")


@actions.post("/conflicts/{conflict_id}/resolve")
def resolve_conflict(conflict_id: int, user: User, body: Annotated[ResolveBody, Body()]) -> JSONResponse:
    """Apply keep-local / take-MLS / per-field to the listing and record who decided, and when."""
    providers = editable_providers(user)
    engine, t = _db()
    who = user_name(user)
    with engine.begin() as conn:
        found = reports.conflict_detail(conn, t, conflict_id, list(providers))
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No conflict {conflict_id} you may resolve")
        provider = providers[found["provider_id"]]
        try:
            row = conflict_store.resolve(conn, t, conflict_id, body.decision, who, body.fields)
        except conflict_store.ConflictDecisionError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except conflict_store.ConflictClosedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    airflow_ops.audit("mls_sync.conflict.resolve", provider.dag_id, who,
                      {"conflict_id": conflict_id, "decision": body.decision, "fields": body.fields})
    return as_json({"ok": True, "message": f"Conflict {conflict_id} resolved ({body.decision}) by {who}",
                    "conflict": {k: row[k] for k in ("id", "state", "resolution", "resolution_detail", "resolved_by",
                                                     "resolved_at")}})


# ---------------------------------------------------------------- errors as pages or JSON

def _wants_html(request: Request) -> bool:
    path = request.url.path[len(_root(request)):]
    return not path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if _wants_html(request):
        login = None
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            try:
                from airflow.api_fastapi.app import get_auth_manager

                login = get_auth_manager().get_url_login(next_url=str(request.url))
            except Exception:
                login = f"{ui_root()}/auth/login"
        resp = render(request, "error.html", status_code=exc.status_code, code=exc.status_code,
                      detail=str(exc.detail), login_url=login)
        resp.headers.update(headers)
        return resp
    return as_json({"detail": exc.detail}, exc.status_code, headers)


def create_app() -> FastAPI:
    """The app the plugin mounts; built on demand so importing this module has no side effects."""
    app = FastAPI(title="MLS Sync dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    app.include_router(actions)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # FastAPI's HTTPException included
    return app
