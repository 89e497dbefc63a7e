"""Links into Airflow's own UI, built from `[api] base_url` in one place.

The admin pages link by path (the browser is already on Airflow's host and port); alerts (email,
Slack) are read somewhere else and need the whole URL.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

DEFAULT_BASE_URL = "http://localhost:8080"  # Airflow's own default for [api] base_url


def base_url() -> str:
    """`[api] base_url` without a trailing slash; empty when unset or unreadable."""
    try:
        from airflow.configuration import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:  # an alert must still go out when the configuration cannot be read
        return ""


def ui_root(*, absolute: bool = False) -> str:
    """Where Airflow's UI starts: its path prefix, or with `absolute` the whole URL."""
    base = base_url()
    if absolute:
        return base if base.startswith(("http://", "https://")) else DEFAULT_BASE_URL + base
    return urlsplit(base).path.rstrip("/")


def dag_url(dag_id: str, *, absolute: bool = False) -> str:
    return f"{ui_root(absolute=absolute)}/dags/{quote(dag_id, safe='')}"


def run_url(dag_id: str, run_id: str | None, *, absolute: bool = False) -> str | None:
    return f"{dag_url(dag_id, absolute=absolute)}/runs/{quote(run_id, safe='')}" if run_id else None
