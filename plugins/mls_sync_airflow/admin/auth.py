"""Who may see and do what on the dashboard, decided by Airflow's configured auth manager.

Reading a provider needs read access to its sync DAG's runs; triggering needs what Airflow's own
"trigger" needs (POST on runs); cancelling what "mark run failed" needs (PUT on runs); retrying
or dismissing errors and resolving conflicts need edit access to the provider's DAG. So one
policy, kept in the auth manager, governs both Airflow's UI and this dashboard.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import HTTPException, Request, status

Action = Literal["read", "trigger", "cancel", "edit"]

_RULES: dict[str, tuple[str, bool]] = {  # action -> (method, on the DAG's runs rather than the DAG)
    "read": ("GET", True),
    "trigger": ("POST", True),
    "cancel": ("PUT", True),
    "edit": ("PUT", False),
}


def _team(dag_id: str) -> str | None:
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    from airflow.models import DagModel

    return DagModel.get_team_name(dag_id)


def allowed(user: Any, dag_id: str, action: Action) -> bool:
    """Ask the auth manager whether `user` may do `action` on the provider whose DAG is `dag_id`."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    method, on_runs = _RULES[action]
    return bool(get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN if on_runs else None,
        details=DagDetails(id=dag_id, team_name=_team(dag_id)), user=user))


def require(user: Any, dag_id: str, action: Action) -> None:
    if not allowed(user, dag_id, action):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"Your Airflow role may not {action} syncs of DAG {dag_id}")


def user_name(user: Any) -> str:
    return str(user.get_name() or user.get_id() or "unknown")


def same_origin_json(request: Request) -> None:
    """CSRF guard for actions: JSON bodies only (a cross-site form cannot send one without a
    preflight) and, when the browser names an Origin, it must be this server's."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "Actions take a JSON body")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        from mls_sync_airflow.links import base_url

        base = base_url()
        allowed_origins = {own}
        if base.startswith("http"):
            from urllib.parse import urlsplit

            parts = urlsplit(base)
            allowed_origins.add(f"{parts.scheme}://{parts.netloc}")
        if origin not in allowed_origins:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-origin action refused")
