"""Registers the MLS Sync dashboard with Airflow: the FastAPI app and its "MLS Sync" nav entry.

Airflow finds it through plugins/mls_sync_plugin.py (the plugin loader only reads top-level files
there; plugins/.airflowignore keeps it out of our packages). Importing this module builds the
FastAPI app but touches no database: schedulers and workers load plugins too.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mls_sync_airflow import pools
from mls_sync_airflow.admin.app import create_app

URL_PREFIX = "/mls-sync"


class MlsSyncPlugin(AirflowPlugin):
    """The dashboard is served by the API server at /mls-sync and embedded in Airflow's UI."""

    name = "mls_sync"
    listeners = [pools]  # the scheduler makes a provider's pool as its first run starts
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MLS Sync dashboard"}]
    external_views = [{
        "name": "MLS Sync",
        "href": URL_PREFIX.lstrip("/") + "/",  # relative to Airflow's base URL, so sub-paths work
        "url_route": "mls-sync",               # shown inside Airflow's UI at /plugin/mls-sync
        "destination": "nav",
    }]
