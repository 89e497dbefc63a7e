"""`mls_sync_errors`: every rejected record and failed request, with retry scheduling.

One open row per (provider, stage, ref): a record that fails again bumps `attempts` and pushes
`next_retry_at` out exponentially; past the maximum it becomes a dead letter for review.
A later success resolves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.store import bulk
from mls_sync.store.tables import Tables

CATEGORIES = ("network", "auth", "data", "rate_limit", "config")
RUN_REF_PREFIX = "sync:"  # ref of a run-level failure: sync:<history id>
MAX_PAYLOAD = 64 * 1024


def _payload(p: Any) -> Any:
    if p is None:
        return None
    text = json.dumps(p, default=str)
    if len(text) > MAX_PAYLOAD:
        return {"truncated": True, "head": text[:MAX_PAYLOAD]}
    return json.loads(text)


def record_error(conn: Connection, t: Tables, *, provider_id: str, stage: str, category: str, ref: str,
                 message: str, payload: Any = None, sync_id: int | None = None, max_attempts: int = 5,
                 base_minutes: int = 15) -> None:
    """Insert or bump the open error for this ref and schedule its next retry."""
    if category not in CATEGORIES:
        category = "network"
    e = t.mls_sync_errors
    now = datetime.now(UTC)
    stmt = pg_insert(e).values(
        provider_id=provider_id, stage=stage, category=category, ref=ref, message=message[:4000],
        payload=_payload(payload), sync_id=sync_id, attempts=1, first_seen_at=now, last_seen_at=now,
        next_retry_at=now + timedelta(minutes=base_minutes), dead_letter=max_attempts <= 1)
    attempts = e.c.attempts + 1
    # backoff: base * 2^(attempts-1), computed in SQL from the row's own attempt count
    delay = sa.func.make_interval(0, 0, 0, 0, 0, 0, base_minutes * 60 * sa.func.power(2, e.c.attempts))
    stmt = stmt.on_conflict_do_update(
        index_elements=["provider_id", "stage", "ref"], index_where=sa.text("resolved_at IS NULL"),
        set_={"attempts": attempts, "message": stmt.excluded.message, "category": stmt.excluded.category,
              "payload": stmt.excluded.payload, "sync_id": stmt.excluded.sync_id, "last_seen_at": now,
              "next_retry_at": sa.case((attempts >= max_attempts, None), else_=sa.func.now() + delay),
              "dead_letter": attempts >= max_attempts})
    conn.execute(stmt)


def resolve(conn: Connection, t: Tables, provider_id: str, stage: str, refs: Iterable[str],
            resolution: str = "succeeded") -> int:
    refs = list(refs)
    if not refs:
        return 0
    e = t.mls_sync_errors
    res = conn.execute(e.update().where(
        e.c.provider_id == provider_id, e.c.stage == stage, bulk.any_of(e.c.ref, refs), e.c.resolved_at.is_(None)
    ).values(resolved_at=sa.func.now(), resolution=resolution))
    return res.rowcount or 0


def resolve_run_failures(conn: Connection, t: Tables, provider_id: str, *, stage: str | None = None,
                         sync_id: int | None = None) -> int:
    """A stage (or a whole run) that succeeded resolves the run-level failures it outlived: the
    stage's own in this run (an Airflow retry that worked), or every open one of the provider."""
    e = t.mls_sync_errors
    where = [e.c.provider_id == provider_id, e.c.resolved_at.is_(None)]
    if sync_id is not None:
        where.append(e.c.ref == f"{RUN_REF_PREFIX}{sync_id}")
    else:
        where.append(e.c.ref.startswith(RUN_REF_PREFIX, autoescape=True))
    if stage is not None:
        where.append(e.c.stage == stage)
    return conn.execute(e.update().where(*where).values(resolved_at=sa.func.now(),
                                                        resolution="succeeded")).rowcount or 0


def open_stages(conn: Connection, t: Tables, provider_id: str) -> set[str]:
    """Stages with unresolved errors: a load skips resolving stages that have none."""
    e = t.mls_sync_errors
    return set(conn.execute(sa.select(e.c.stage).distinct().where(
        e.c.provider_id == provider_id, e.c.resolved_at.is_(None))).scalars())


def due_refs(conn: Connection, t: Tables, provider_id: str, stage: str, limit: int = 5000) -> list[str]:
    """Refs whose retry time has come (not dead letters), oldest first."""
    e = t.mls_sync_errors
    return list(conn.execute(sa.select(e.c.ref).where(
        e.c.provider_id == provider_id, e.c.stage == stage, e.c.resolved_at.is_(None), e.c.dead_letter.is_(False),
        e.c.next_retry_at <= sa.func.now(), e.c.ref != "").order_by(e.c.next_retry_at).limit(limit)).scalars())


def unresolved_count(conn: Connection, t: Tables, provider_id: str) -> int:
    e = t.mls_sync_errors
    return int(conn.execute(sa.select(sa.func.count()).select_from(e).where(
        e.c.provider_id == provider_id, e.c.resolved_at.is_(None))).scalar_one())


def retry_now(conn: Connection, t: Tables, ids: Iterable[int]) -> int:
    """Operator action: make these errors due at once (dead letters get one more chance)."""
    e = t.mls_sync_errors
    res = conn.execute(e.update().where(e.c.id.in_(list(ids)), e.c.resolved_at.is_(None)).values(
        next_retry_at=sa.func.now(), dead_letter=False))
    return res.rowcount or 0


def dismiss(conn: Connection, t: Tables, ids: Iterable[int], by: str) -> int:
    e = t.mls_sync_errors
    res = conn.execute(e.update().where(e.c.id.in_(list(ids)), e.c.resolved_at.is_(None)).values(
        resolved_at=sa.func.now(), resolution=f"dismissed by {by}"))
    return res.rowcount or 0
