"""Airflow's entry point for the MLS Sync dashboard plugin.

The plugin manager loads top-level files of the plugins folder (plugins/.airflowignore keeps it
out of our packages) and registers the AirflowPlugin subclasses it finds in them; this file only
puts the dashboard's plugin class where the loader looks.
"""

from mls_sync_airflow.admin.plugin import MlsSyncPlugin

__all__ = ["MlsSyncPlugin"]
