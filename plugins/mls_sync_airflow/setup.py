"""`python -m mls_sync_airflow.setup`: create one Airflow pool per provider YAML.

Every task of a provider runs in the pool `mls_<provider_id>` so a provider's concurrent requests
stay within what it allows (limits.pool_slots). The scheduler does not run tasks of a pool that
does not exist; the scheduler makes a provider's pool when one of its runs starts
(mls_sync_airflow.pools), and `make` and the compose stack's init step run this after
`airflow db migrate` so the pools are there from the start.
"""

from __future__ import annotations

import sys

from mls_sync.config import ConfigError, load_providers


def ensure_pools() -> list[tuple[str, int]]:
    from airflow.utils.session import create_session

    from mls_sync_airflow.pools import ensure_pool

    made: list[tuple[str, int]] = []
    with create_session() as session:
        for path, cfg in load_providers():
            if isinstance(cfg, ConfigError):  # its DAG reports the problem; a pool can wait for the fix
                print(f"skipping {path.name}: {cfg}", file=sys.stderr)
                continue
            ensure_pool(session, cfg)
            made.append((cfg.pool(), cfg.limits.pool_slots))
    return made


def main() -> int:
    for name, slots in ensure_pools():
        print(f"pool {name}: {slots} slots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
