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


ACTION_HEADER = "X-MLS-Sync-Action"  # a custom header: a cross-site page cannot send it without a preflight


def _own_origins(request: Request) -> set[str]:
    from urllib.parse import urlsplit

    from mls_sync_airflow.links import base_url

    out = {f"{request.url.scheme}://{request.url.netloc}"}
    base = base_url()
    if base.startswith("http"):
        parts = urlsplit(base)
        out.add(f"{parts.scheme}://{parts.netloc}")
    return out


def same_origin_json(request: Request) -> None:
    """CSRF guard for actions: a JSON body (a cross-site form cannot send one without a preflight),
    and proof the request comes from this server's pages: an `Origin` of this server, or, when the
    browser sends none (or `null`), a `Referer` of this server, or the `X-MLS-Sync-Action` header
    (which no cross-site page can add without a CORS preflight, which this server never grants).
    Browsers send `Origin` on every POST, so the dashboard's own calls need nothing extra."""
    from urllib.parse import urlsplit

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "Actions take a JSON body")
    own = _own_origins(request)
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if origin not in own:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-origin action refused")
        return
    if request.headers.get(ACTION_HEADER):
        return
    referer = urlsplit(request.headers.get("referer") or "")
    if referer.scheme and f"{referer.scheme}://{referer.netloc}" in own:
        return
    raise HTTPException(status.HTTP_403_FORBIDDEN, "Action refused: no Origin or Referer of this server "
                        f"(API clients send the {ACTION_HEADER} header)")
