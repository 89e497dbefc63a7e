"""Every invalid provider YAML, reported at once as this file's DAG import error.

This file defines no DAG on purpose: Airflow marks every DAG of a file with an import error
stale, so the error must not live in dags/mls_sync.py (one bad YAML would hide every provider).
Here it hides nothing, and it shows where operators and CI look: the import-errors banner of
Airflow's UI and `airflow dags list-import-errors`. Each broken provider also keeps a DAG of its
own in mls_sync.py that says why; the MLS Sync view lists them too.
"""

from __future__ import annotations

from mls_sync.config import ConfigError, load_providers

_broken = [str(cfg) for _, cfg in load_providers() if isinstance(cfg, ConfigError)]
if _broken:
    raise ConfigError(f"{len(_broken)} provider config(s) invalid; those providers do not sync until fixed "
                      "(the others are not affected):\n\n" + "\n\n".join(_broken))
