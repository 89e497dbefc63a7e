"""Sync bookkeeping: `mls_sync_status` (one row per provider) and `mls_sync_history` (per run)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.store.tables import Tables

COUNT_COLUMNS = ("records_fetched", "pages_fetched", "added", "updated", "unchanged", "deleted",
                 "status_changes", "conflicted", "failed", "photos_added", "photos_removed",
                 "photos_failed", "photos_missing", "photo_bytes", "requests")


def ensure_status(conn: Connection, t: Tables, provider_id: str, name: str, protocol: str,
                  enabled: bool = True) -> None:
    s = t.mls_sync_status
    stmt = pg_insert(s).values(provider_id=provider_id, provider_name=name, protocol=protocol,
                               state="idle" if enabled else "disabled")
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["provider_id"],
        set_={"provider_name": name, "protocol": protocol,
              "state": sa.case((s.c.state == "disabled", "idle"), else_=s.c.state) if enabled else "disabled"}))


def get_status(conn: Connection, t: Tables, provider_id: str) -> dict[str, Any] | None:
    s = t.mls_sync_status
    row = conn.execute(sa.select(s).where(s.c.provider_id == provider_id)).mappings().first()
    return dict(row) if row else None


def lock_status(conn: Connection, t: Tables, provider_id: str) -> None:
    """Hold the provider's status row until commit: plans and lease changes of one provider queue
    here instead of deciding at the same moment."""
    s = t.mls_sync_status
    conn.execute(sa.select(s.c.provider_id).where(s.c.provider_id == provider_id).with_for_update())


def find_run(conn: Connection, t: Tables, provider_id: str, dag_id: str | None, dag_run_id: str | None) -> int | None:
    """The history row of this DAG run (a retried `plan` finds its own), if any."""
    if dag_run_id is None:
        return None
    h = t.mls_sync_history
    found = conn.execute(sa.select(h.c.id).where(
        h.c.provider_id == provider_id, h.c.dag_id == dag_id, h.c.dag_run_id == dag_run_id)).scalar()
    return None if found is None else int(found)


def reopen(conn: Connection, t: Tables, sync_id: int) -> None:
    """A closed run one of whose tasks runs again (an Airflow retry or clear) is running again."""
    h = t.mls_sync_history
    conn.execute(h.update().where(h.c.id == sync_id, h.c.state != "running").values(
        state="running", finished_at=None))


def open_run(conn: Connection, t: Tables, *, provider_id: str, dag_id: str | None, dag_run_id: str | None,
             mode: str, trigger: str, dry_run: bool, conf: dict[str, Any],
             watermark_before: datetime | None) -> tuple[int, bool]:
    """Create the run's history row, or find it when a retried `plan` comes back: (id, is_new)."""
    h = t.mls_sync_history
    found = find_run(conn, t, provider_id, dag_id, dag_run_id)
    if found is not None:
        reopen(conn, t, found)
        return found, False
    new_id = conn.execute(h.insert().values(
        provider_id=provider_id, dag_id=dag_id, dag_run_id=dag_run_id, mode=mode, trigger=trigger,
        dry_run=dry_run, conf=conf, watermark_before=watermark_before).returning(h.c.id)).scalar_one()
    return int(new_id), True


def mark_running(conn: Connection, t: Tables, provider_id: str, sync_id: int, stage: str,
                 progress: dict[str, Any] | None = None) -> None:
    s = t.mls_sync_status
    values: dict[str, Any] = {"state": "running", "current_sync_id": sync_id, "current_stage": stage,
                              "updated_at": sa.func.now()}
    if progress is not None:
        values["progress"] = progress
    conn.execute(s.update().where(s.c.provider_id == provider_id).values(values))


def update_history(conn: Connection, t: Tables, sync_id: int, **values: Any) -> None:
    h = t.mls_sync_history
    conn.execute(h.update().where(h.c.id == sync_id).values(**values))


def add_counts(conn: Connection, t: Tables, sync_id: int, counts: dict[str, int],
               stage_state: dict[str, Any] | None = None) -> None:
    """Add to the run's counters (and merge a checkpoint into its stage_state, in the same UPDATE).
    Stages add per committed batch and resume after the last one, so a retried stage does not
    count a batch twice."""
    h = t.mls_sync_history
    values: dict[str, Any] = {k: getattr(h.c, k) + int(v) for k, v in counts.items() if k in COUNT_COLUMNS and v}
    if stage_state:
        values["stage_state"] = _merged(h.c.stage_state, stage_state)
    if values:
        conn.execute(h.update().where(h.c.id == sync_id).values(values))


def _merged(col: sa.Column[Any], patch: dict[str, Any]) -> sa.ColumnElement[Any]:
    return col.op("||")(sa.cast(patch, col.type))


def merge_into(conn: Connection, t: Tables, sync_id: int, column: str, patch: dict[str, Any]) -> None:
    """Shallow-merge `patch` into one of the run's jsonb columns (stage_state, report, ...)."""
    h = t.mls_sync_history
    conn.execute(h.update().where(h.c.id == sync_id).values({column: _merged(h.c[column], patch)}))


def merge_nested(conn: Connection, t: Tables, sync_id: int, column: str, key: str, patch: dict[str, Any]) -> None:
    """Shallow-merge `patch` into the object at `key` of one of the run's jsonb columns."""
    h = t.mls_sync_history
    col = h.c[column]
    inner = sa.func.coalesce(col[key], sa.cast({}, col.type)).op("||")(sa.cast(patch, col.type))
    conn.execute(h.update().where(h.c.id == sync_id).values(
        {column: col.op("||")(sa.func.jsonb_build_object(key, inner))}))


def drop_nested(conn: Connection, t: Tables, sync_id: int, column: str, key: str, name: str) -> None:
    """Remove `name` from the object at `key` of one of the run's jsonb columns, if it is there."""
    h = t.mls_sync_history
    col = h.c[column]
    conn.execute(h.update().where(h.c.id == sync_id, col[key].has_key(name)).values(
        {column: col.op("||")(sa.func.jsonb_build_object(key, col[key].op("-")(name)))}))


# engine stages that run as an Airflow task of another name
STAGE_TASKS = {"media_batch": "media"}


def first_failure(run: dict[str, Any], tasks: Sequence[str] = ()) -> dict[str, Any] | None:
    """The earliest cause a stage recorded (report.failures) among `tasks` (`media` stands for all
    its batches), or among all tasks when none are named."""
    causes = [{"task": stage, **cause} for stage, cause in ((run.get("report") or {}).get("failures") or {}).items()]
    if tasks:
        wanted = {str(t).split("[")[0] for t in tasks}
        causes = [c for c in causes if STAGE_TASKS.get(c["task"], c["task"]) in wanted]
    return min(causes, key=lambda c: c.get("at", "")) if causes else None


def record_stage(conn: Connection, t: Tables, sync_id: int, stage: str, seconds: float,
                 extra: dict[str, Any] | None = None) -> None:
    merge_into(conn, t, sync_id, "stage_timings", {stage: round(seconds, 3)})
    if extra:
        merge_into(conn, t, sync_id, "report", extra)


def note_reconciled(conn: Connection, t: Tables, provider_id: str, figures: dict[str, Any]) -> None:
    """A successful full sync or key reconciliation: what it found, for the drift shown per provider."""
    s = t.mls_sync_status
    conn.execute(s.update().where(s.c.provider_id == provider_id).values(
        last_reconciled_at=sa.func.now(), last_reconcile=figures))


def get_run(conn: Connection, t: Tables, sync_id: int) -> dict[str, Any]:
    h = t.mls_sync_history
    return dict(conn.execute(sa.select(h).where(h.c.id == sync_id)).mappings().one())


def close_run(conn: Connection, t: Tables, sync_id: int, *, state: str, error_summary: str | None,
              watermark_after: datetime | None, move_watermark: bool, unresolved_errors: int,
              touch_status: bool = True) -> dict[str, Any]:
    """Finish the history row and (unless `touch_status` is off: a dry run, or a run whose lease
    another run holds now) the provider's status; the watermark only moves on success."""
    h, s = t.mls_sync_history, t.mls_sync_status
    run = get_run(conn, t, sync_id)
    now = datetime.now(UTC)
    duration = (now - run["started_at"]).total_seconds()
    conn.execute(h.update().where(h.c.id == sync_id).values(
        state=state, finished_at=now, duration_seconds=duration, error_summary=error_summary,
        watermark_after=watermark_after if move_watermark else run["watermark_before"]))
    run.update(state=state, duration_seconds=duration, error_summary=error_summary)
    if not touch_status:
        return run
    counts = {k: run[k] for k in COUNT_COLUMNS}
    values: dict[str, Any] = {
        "state": "idle" if state in ("success", "cancelled") else "failed",
        "current_sync_id": None, "current_stage": None, "progress": {},
        "last_run_at": run["started_at"], "last_run_mode": run["mode"], "last_counts": counts,
        "last_duration_seconds": duration, "error_count": unresolved_errors, "updated_at": now,
    }
    if state == "success":
        values.update(last_success_at=now, consecutive_failures=0)
        if move_watermark and watermark_after is not None:
            values["watermark"] = sa.func.greatest(s.c.watermark, watermark_after)
    elif state == "failed":
        values.update(last_failure_at=now, last_error=error_summary,
                      consecutive_failures=s.c.consecutive_failures + 1)
    conn.execute(s.update().where(s.c.provider_id == run["provider_id"]).values(values))
    return run
