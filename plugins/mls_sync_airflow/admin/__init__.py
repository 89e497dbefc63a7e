"""The MLS Sync admin dashboard: an Airflow plugin (FastAPI app + "MLS Sync" nav entry)."""
