"""What the dashboard asks of Airflow itself: DAG schedule and runs, trigger, cancel, audit log.

Runs inside the API server, so it uses Airflow's own metadata session and the same functions
Airflow's REST API and CLI use (`trigger_dag`, `patch_dag_run_state`): a run started here is an
ordinary manual DAG run, visible in the grid, with the user's name as the triggering user.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running")


class ActionRefused(Exception):
    """Airflow (or our rule) says no; `status` is the HTTP status the dashboard answers with."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class RunRef:
    dag_id: str
    run_id: str
    state: str
    run_type: str
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    triggering_user_name: str | None = None


def _ref(dr: Any) -> RunRef:
    return RunRef(dag_id=dr.dag_id, run_id=dr.run_id, state=str(getattr(dr.state, "value", dr.state)),
                  run_type=str(getattr(dr.run_type, "value", dr.run_type)), queued_at=dr.queued_at,
                  start_date=dr.start_date, end_date=dr.end_date,
                  triggering_user_name=getattr(dr, "triggering_user_name", None))


def _utcnow() -> datetime:
    from airflow._shared.timezones import timezone

    return timezone.utcnow()


def dag_states(dag_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per DAG: known to Airflow, paused, import errors, next run, latest and active run."""
    from airflow.models import DagModel, DagRun
    from airflow.utils.session import create_session

    ids = list(dag_ids)
    out: dict[str, dict[str, Any]] = {d: {"known": False, "is_paused": None, "has_import_errors": False,
                                          "next_run_after": None, "latest_run": None, "active_run": None}
                                      for d in ids}
    if not ids:
        return out
    with create_session() as session:
        for dm in session.scalars(select(DagModel).where(DagModel.dag_id.in_(ids))):
            out[dm.dag_id].update(known=not dm.is_stale, is_paused=dm.is_paused,
                                  has_import_errors=bool(dm.has_import_errors),
                                  next_run_after=dm.next_dagrun_create_after if not dm.is_paused else None)
        # one query each for every DAG: the newest run, and the newest queued/running one
        newest = func.row_number().over(partition_by=DagRun.dag_id,
                                        order_by=(DagRun.run_after.desc(), DagRun.id.desc())).label("n")
        ranked = select(DagRun.id, newest).where(DagRun.dag_id.in_(ids)).subquery()
        for dr in session.scalars(select(DagRun).join(ranked, DagRun.id == ranked.c.id).where(ranked.c.n == 1)):
            out[dr.dag_id]["latest_run"] = _ref(dr)
        for dr in session.scalars(select(DagRun).where(DagRun.dag_id.in_(ids), DagRun.state.in_(ACTIVE_STATES))
                                  .order_by(DagRun.run_after.desc(), DagRun.id.desc())):
            if out[dr.dag_id]["active_run"] is None:
                out[dr.dag_id]["active_run"] = _ref(dr)
    return out


def existing_pools(names: Iterable[str]) -> set[str]:
    """Which of these Airflow pools exist."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    wanted = list(names)
    with create_session() as session:
        return set(session.scalars(select(Pool.pool).where(Pool.pool.in_(wanted)))) if wanted else set()


_CONNECTION_SEEN: dict[str, tuple[float, bool]] = {}
CONNECTION_CHECK_SECONDS = 60.0


def connection_defined(conn_id: str) -> bool:
    """Whether Airflow can find this connection (its database or a secrets backend), remembered for a
    minute: the overview refreshes every few seconds and a secrets backend may be a remote service."""
    import time

    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    now = time.monotonic()
    seen = _CONNECTION_SEEN.get(conn_id)
    if seen and now - seen[0] < CONNECTION_CHECK_SECONDS:
        return seen[1]
    try:
        Connection.get_connection_from_secrets(conn_id)
        found = True
    except AirflowNotFoundException:
        found = False
    except Exception:  # a secrets backend that is down says nothing about the connection
        log.warning("could not look up connection %s", conn_id, exc_info=True)
        return True
    _CONNECTION_SEEN[conn_id] = (now, found)
    return found


def _active_run(session: Any, dag_id: str) -> Any:
    from airflow.models import DagRun

    return session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.state.in_(ACTIVE_STATES))
                          .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(1))


def _audit(session: Any, event: str, dag_id: str, run_id: str | None, user: str, extra: dict[str, Any]) -> None:
    """A row in Airflow's audit log (Browse > Audit Log), like Airflow's own API actions write."""
    from airflow.models.log import Log

    entry = Log(event=event, owner=user, extra=json.dumps(extra, default=str))
    entry.dag_id = dag_id
    entry.run_id = run_id
    session.add(entry)


def trigger(dag_id: str, conf: dict[str, Any], user: str, min_interval_seconds: int) -> RunRef:
    """Queue a manual run with `conf`, refusing while one is queued or running, and too soon after the last.

    The DAG row is locked for the check-then-create (on databases that lock rows), so two clicks
    at once cannot both pass the "nothing is running" check.
    """
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models import DagModel, DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    with create_session() as session:
        dm = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id).with_for_update())
        if dm is None or dm.is_stale:
            raise ActionRefused(404, f"Airflow does not know DAG {dag_id} yet; is the dag-processor running?")
        if dm.has_import_errors:
            raise ActionRefused(400, f"DAG {dag_id} has import errors in Airflow; fix them before syncing")
        active = _active_run(session, dag_id)
        if active is not None:
            state = str(getattr(active.state, "value", active.state))
            raise ActionRefused(409, f"A sync of this provider is already {state} (run {active.run_id}); "
                                     "wait for it to finish or cancel it first")
        last = session.scalar(select(func.max(DagRun.queued_at)).where(
            DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.MANUAL))
        if last is not None and min_interval_seconds > 0:
            wait = min_interval_seconds - int((_utcnow() - last).total_seconds())
            if wait > 0:
                raise ActionRefused(429, f"Manual syncs of this provider are limited to one per "
                                         f"{min_interval_seconds} s; try again in {wait} s", retry_after=wait)
        dr = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=user, conf=conf,
                         session=session)
        if dr is None:
            raise ActionRefused(500, f"Airflow did not create a run for {dag_id}")
        _audit(session, "mls_sync.trigger", dag_id, dr.run_id, user, {"conf": conf})
        session.flush()
        ref = _ref(dr)
    log.info("MLS sync: %s triggered %s run %s", user, dag_id, ref.run_id)
    return ref


def cancel(dag_id: str, user: str) -> RunRef:
    """Mark the queued or running run failed, the way Airflow's own "mark as failed" does."""
    from airflow.api_fastapi.common.dagbag import get_dag_for_run
    from airflow.api_fastapi.core_api.datamodels.dag_run import DagRunMutableStates
    from airflow.api_fastapi.core_api.services.public.dag_run import patch_dag_run_state
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = _active_run(session, dag_id)
        if dr is None:
            raise ActionRefused(409, "No queued or running sync of this provider to cancel")
        dag = get_dag_for_run(DBDagBag(), dr, session=session)
        patch_dag_run_state(dag=dag, dag_run=dr, state=DagRunMutableStates.FAILED, session=session)
        _audit(session, "mls_sync.cancel", dag_id, dr.run_id, user, {})
        session.flush()
        ref = _ref(dr)
    log.info("MLS sync: %s cancelled %s run %s", user, dag_id, ref.run_id)
    return ref


def audit(event: str, dag_id: str, user: str, extra: dict[str, Any]) -> None:
    """Record a dashboard action that does not touch Airflow's runs (retry, dismiss, resolve)."""
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            _audit(session, event, dag_id, None, user, extra)
    except Exception:  # the action itself is done; a failed audit row must not undo or hide it
        log.exception("could not write the audit log entry for %s", event)


def retry_after_header(seconds: int | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds)))} if seconds else {}
