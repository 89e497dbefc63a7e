"""Read-only queries behind the admin dashboard: overview, run history, errors, conflicts.

Kept in the engine (no Airflow here) so the same answers serve the Airflow plugin, the CLI and
tests. Every function takes `provider_ids`: the caller passes the providers the user may see, and
nothing outside that list is ever returned (None means no restriction, for trusted callers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mls_sync.columns import ROSTER_TABLES
from mls_sync.store.runs import COUNT_COLUMNS, first_failure
from mls_sync.store.tables import Tables

ERROR_STATES = ("retrying", "dead_letter", "resolved")
CONFLICT_STATES = ("open", "resolved")
STAGE_ORDER = ("plan", "fetch", "transform_load", "reconcile", "sync_roster", "media", "finalize")
ROSTER_COUNTS = ("fetched", "added", "updated", "unchanged", "deleted", "failed")
MAX_PER_PAGE = 200
PAYLOAD_PREVIEW = 2000


def _allowed(column: sa.ColumnElement, provider_ids: Sequence[str] | None) -> sa.ColumnElement[bool]:
    """Restrict a query to the providers the caller may see (an empty list sees nothing)."""
    if provider_ids is None:
        return sa.true()
    return column.in_(list(provider_ids))


def _page_args(page: int, per_page: int) -> tuple[int, int]:
    per_page = max(1, min(int(per_page), MAX_PER_PAGE))
    return max(1, int(page)), per_page


def _paged(conn: Connection, query: sa.Select, page: int, per_page: int) -> dict[str, Any]:
    """Run a select one page at a time, with the total so the UI can say "page 2 of 7"."""
    page, per_page = _page_args(page, per_page)
    total = int(conn.execute(sa.select(sa.func.count()).select_from(query.order_by(None).subquery())).scalar_one())
    rows = [dict(r) for r in conn.execute(query.limit(per_page).offset((page - 1) * per_page)).mappings()]
    return {"rows": rows, "total": total, "page": page, "per_page": per_page,
            "pages": max(1, math.ceil(total / per_page))}


def run_counts(run: dict[str, Any]) -> dict[str, int]:
    """The counters of one history row, in the order the dashboard shows them."""
    return {k: int(run.get(k) or 0) for k in COUNT_COLUMNS}


FILTER_LABELS = (("listing_keys", "keys"), ("postal_codes", "postal codes"), ("cities", "cities"),
                 ("modified_since", "modified since"))


def roster_held(conn: Connection, t: Tables, provider_ids: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per provider and roster resource: the rows held (live) and what the last sync of that
    resource fetched, wrote and deleted (`mls_resource_sync.last_counts`: its counts when the
    resource last finished, so a run that failed in it or skipped it does not blank them)."""
    s = t.mls_resource_sync
    order = {kind: i for i, kind in enumerate(ROSTER_TABLES)}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    rows = conn.execute(sa.select(s.c.provider_id, s.c.resource, s.c.last_counts).where(
        s.c.provider_id.in_(list(provider_ids)))).mappings()
    for r in sorted(rows, key=lambda r: (r["provider_id"], order.get(r["resource"], len(order)), r["resource"])):
        last = r["last_counts"] or {}
        if not last:  # a first walk still running (or failed): nothing finished to show yet
            continue
        figures: dict[str, Any] = {k: int(last.get(k) or 0) for k in ROSTER_COUNTS}
        figures.update(held=int(last.get("store_count") or 0), mode=last.get("mode"), sync_id=last.get("sync_id"))
        out.setdefault(r["provider_id"], {})[r["resource"]] = figures
    return out


def roster_counts(run: dict[str, Any]) -> dict[str, dict[str, int]]:
    """What the run did to each roster resource (report.roster): fetched, added, updated, unchanged,
    deleted, failed, and the rows held after it; empty when it synced none (the YAML names none, a
    dry or partial run, a roster stage that failed)."""
    roster = (run.get("report") or {}).get("roster") or {}
    return {kind: {**{k: int(v.get(k) or 0) for k in ROSTER_COUNTS}, "held": int(v.get("store_count") or 0)}
            for kind, v in roster.items() if isinstance(v, dict)}


def run_filters(conf: dict[str, Any] | None) -> str | None:
    """What a manual run was limited to, in a few words ("keys A1, A2; cities Austin")."""
    parts = []
    for key, label in FILTER_LABELS:
        value = (conf or {}).get(key)
        if not value:
            continue
        items = value if isinstance(value, list) else [value]
        shown = ", ".join(str(v) for v in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        parts.append(f"{label} {shown}")
    return "; ".join(parts) or None


def run_cause(run: dict[str, Any]) -> dict[str, Any] | None:
    """The first failure recorded on a failed run: task, error class, category, message."""
    return first_failure(run) if run.get("state") == "failed" else None


def _with_who_and_why(out: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    out["filters"] = run_filters(run.get("conf"))
    out["triggered_by"] = (run.get("report") or {}).get("triggered_by")
    out["cause"] = run_cause(run)
    return out


def _run_summary(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    keep = ("id", "provider_id", "dag_id", "dag_run_id", "mode", "trigger", "dry_run", "state", "started_at",
            "finished_at", "duration_seconds", "error_summary")
    out = {k: run.get(k) for k in keep}
    out["counts"] = run_counts(run)
    return _with_who_and_why(out, run)


def overview(conn: Connection, t: Tables, provider_ids: Sequence[str] | None = None,
             now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per provider: its status row, last finished and current run, errors in 24 h, open conflicts,
    the roster resources held (`roster_held`).

    Providers that never ran have no status row; they are absent here and the caller shows
    them from their YAML alone.
    """
    now = now or datetime.now(UTC)
    s, h, e, c = t.mls_sync_status, t.mls_sync_history, t.mls_sync_errors, t.property_conflicts
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(sa.select(s).where(_allowed(s.c.provider_id, provider_ids))
                            .order_by(s.c.provider_id)).mappings():
        item = dict(row)
        item.update(errors_24h=0, open_errors=0, dead_letters=0, open_conflicts=0, last_run=None, current_run=None,
                    roster={})
        out[row["provider_id"]] = item
    if not out:
        return out
    ids = list(out)
    since = now - timedelta(hours=24)
    err_q = sa.select(
        e.c.provider_id,
        sa.func.count().filter(e.c.last_seen_at >= since).label("errors_24h"),
        sa.func.count().filter(e.c.resolved_at.is_(None)).label("open_errors"),
        sa.func.count().filter(e.c.resolved_at.is_(None), e.c.dead_letter.is_(True)).label("dead_letters"),
    ).where(e.c.provider_id.in_(ids)).group_by(e.c.provider_id)
    for r in conn.execute(err_q).mappings():
        out[r["provider_id"]].update(errors_24h=r["errors_24h"], open_errors=r["open_errors"],
                                     dead_letters=r["dead_letters"])
    conf_q = sa.select(c.c.provider_id, sa.func.count()).where(
        c.c.provider_id.in_(ids), c.c.state == "open").group_by(c.c.provider_id)
    for pid, n in conn.execute(conf_q):
        out[pid]["open_conflicts"] = int(n)
    for pid, roster in roster_held(conn, t, ids).items():
        out[pid]["roster"] = roster
    # newest finished run per provider, and the running one if any
    finished = (sa.select(h).where(h.c.provider_id.in_(ids), h.c.finished_at.isnot(None))
                .distinct(h.c.provider_id).order_by(h.c.provider_id, h.c.finished_at.desc(), h.c.id.desc()))
    for r in conn.execute(finished).mappings():
        out[r["provider_id"]]["last_run"] = _run_summary(dict(r))
    running = (sa.select(h).where(h.c.provider_id.in_(ids), h.c.state == "running")
               .distinct(h.c.provider_id).order_by(h.c.provider_id, h.c.started_at.desc(), h.c.id.desc()))
    for r in conn.execute(running).mappings():
        out[r["provider_id"]]["current_run"] = _run_summary(dict(r))
    return out


def history_page(conn: Connection, t: Tables, provider_ids: Sequence[str] | None = None, *,
                 provider_id: str | None = None, state: str | None = None, page: int = 1,
                 per_page: int = 25) -> dict[str, Any]:
    """Runs newest first, one page at a time, optionally for one provider or one outcome."""
    h = t.mls_sync_history
    cols = [h.c[k] for k in ("id", "provider_id", "dag_id", "dag_run_id", "mode", "trigger", "dry_run", "state",
                             "started_at", "finished_at", "duration_seconds", "error_summary", "conf", "report",
                             *COUNT_COLUMNS)]
    q = sa.select(*cols).where(_allowed(h.c.provider_id, provider_ids))
    if provider_id:
        q = q.where(h.c.provider_id == provider_id)
    if state:
        q = q.where(h.c.state == state)
    out = _paged(conn, q.order_by(h.c.started_at.desc(), h.c.id.desc()), page, per_page)
    for r in out["rows"]:
        r["counts"] = run_counts(r)
        r["roster"] = roster_counts(r)
        _with_who_and_why(r, r)
        del r["report"]  # previews and notes: the run page shows them
    return out


def stage_timings(run: dict[str, Any]) -> list[tuple[str, float]]:
    """(stage, seconds) in pipeline order; stages this code does not know come last."""
    timings = dict(run.get("stage_timings") or {})
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(((k, float(v)) for k, v in timings.items() if isinstance(v, (int, float))),
                  key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def run_detail(conn: Connection, t: Tables, run_id: int,
               provider_ids: Sequence[str] | None = None) -> dict[str, Any] | None:
    """One run with its stage timings and the errors it recorded; None when not visible."""
    h, e = t.mls_sync_history, t.mls_sync_errors
    row = conn.execute(sa.select(h).where(h.c.id == run_id, _allowed(h.c.provider_id, provider_ids))).mappings().first()
    if row is None:
        return None
    run = dict(row)
    run["counts"] = run_counts(run)
    run["roster"] = roster_counts(run)
    run["timings"] = stage_timings(run)
    _with_who_and_why(run, run)
    errs = conn.execute(sa.select(e).where(e.c.sync_id == run_id, e.c.provider_id == run["provider_id"])
                        .order_by(e.c.last_seen_at.desc(), e.c.id.desc()).limit(500)).mappings()
    run["errors"] = [_error_row(dict(r)) for r in errs]
    return run


def error_state(row: dict[str, Any]) -> str:
    """retrying | dead_letter | resolved: the three states an operator filters by."""
    if row.get("resolved_at") is not None:
        return "resolved"
    return "dead_letter" if row.get("dead_letter") else "retrying"


def _error_row(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.pop("payload", None)
    row["state"] = error_state(row)
    text = None if payload is None else json.dumps(payload, default=str, ensure_ascii=False)
    row["payload_preview"] = None if text is None else text[:PAYLOAD_PREVIEW]
    return row


def errors_page(conn: Connection, t: Tables, provider_ids: Sequence[str] | None = None, *,
                provider_id: str | None = None, category: str | None = None, state: str | None = None,
                page: int = 1, per_page: int = 50) -> dict[str, Any]:
    """Errors filtered by provider, category and state, most recently seen first."""
    e = t.mls_sync_errors
    q = sa.select(e).where(_allowed(e.c.provider_id, provider_ids))
    if provider_id:
        q = q.where(e.c.provider_id == provider_id)
    if category:
        q = q.where(e.c.category == category)
    if state == "resolved":
        q = q.where(e.c.resolved_at.isnot(None))
    elif state == "dead_letter":
        q = q.where(e.c.resolved_at.is_(None), e.c.dead_letter.is_(True))
    elif state == "retrying":
        q = q.where(e.c.resolved_at.is_(None), e.c.dead_letter.is_(False))
    elif state:
        raise ValueError(f"unknown error state {state!r}; use one of {', '.join(ERROR_STATES)}")
    out = _paged(conn, q.order_by(e.c.last_seen_at.desc(), e.c.id.desc()), page, per_page)
    out["rows"] = [_error_row(r) for r in out["rows"]]
    return out


def error_providers(conn: Connection, t: Tables, ids: Sequence[int]) -> dict[int, str]:
    """Which provider each error belongs to, so actions can be authorised per provider."""
    e = t.mls_sync_errors
    if not ids:
        return {}
    return {int(i): p for i, p in conn.execute(sa.select(e.c.id, e.c.provider_id).where(e.c.id.in_(list(ids))))}


def _side_by_side(conflict: dict[str, Any], current: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for col, f in sorted((conflict.get("fields") or {}).items()):
        f = f if isinstance(f, dict) else {}
        rows.append({"column": col, "local": f.get("local"), "mls": f.get("mls"), "mls_before": f.get("mls_before"),
                     "current": None if current is None else current.get(col),
                     "differs": f.get("local") != f.get("mls")})
    return rows


def _with_listing(conn: Connection, t: Tables, conflicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attach each conflict's listing (address, current values, deleted) and its field table."""
    p = t.properties
    keys = {(c["provider_id"], c["listing_key"]) for c in conflicts}
    listings: dict[tuple[str, str], dict[str, Any]] = {}
    if keys:
        q = sa.select(p).where(sa.tuple_(p.c.provider_id, p.c.listing_key).in_(list(keys)))
        for r in conn.execute(q).mappings():
            listings[(r["provider_id"], r["listing_key"])] = dict(r)
    for c in conflicts:
        cur = listings.get((c["provider_id"], c["listing_key"]))
        c["listing"] = None if cur is None else {
            k: cur.get(k) for k in ("id", "address", "city", "postal_code", "status", "deleted_at", "deleted_reason",
                                    "local_edited_by", "local_edited_at")}
        c["side_by_side"] = _side_by_side(c, cur)
    return conflicts


def conflicts_page(conn: Connection, t: Tables, provider_ids: Sequence[str] | None = None, *,
                   provider_id: str | None = None, state: str | None = "open", page: int = 1,
                   per_page: int = 25) -> dict[str, Any]:
    """Conflicts with local and MLS values side by side per field, newest first."""
    c = t.property_conflicts
    q = sa.select(c).where(_allowed(c.c.provider_id, provider_ids))
    if provider_id:
        q = q.where(c.c.provider_id == provider_id)
    if state:
        if state not in CONFLICT_STATES:
            raise ValueError(f"unknown conflict state {state!r}; use one of {', '.join(CONFLICT_STATES)}")
        q = q.where(c.c.state == state)
    out = _paged(conn, q.order_by(c.c.created_at.desc(), c.c.id.desc()), page, per_page)
    out["rows"] = _with_listing(conn, t, out["rows"])
    return out


def conflict_detail(conn: Connection, t: Tables, conflict_id: int,
                    provider_ids: Sequence[str] | None = None) -> dict[str, Any] | None:
    c = t.property_conflicts
    row = conn.execute(sa.select(c).where(c.c.id == conflict_id, _allowed(c.c.provider_id, provider_ids))
                       ).mappings().first()
    return None if row is None else _with_listing(conn, t, [dict(row)])[0]
