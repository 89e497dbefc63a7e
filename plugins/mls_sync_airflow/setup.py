"""`python -m mls_sync_airflow.setup`: create one Airflow pool per provider YAML.

Every task of a provider runs in the pool `mls_<provider_id>` so a provider's concurrent requests
stay within what it allows (limits.pool_slots). The scheduler does not run tasks of a pool that
does not exist, so `make` and the compose stack's init step run this after `airflow db migrate`.
"""

from __future__ import annotations

import sys

from mls_sync.config import ConfigError, load_providers


def ensure_pools() -> list[tuple[str, int]]:
    from airflow.models.pool import Pool

    made: list[tuple[str, int]] = []
    for path, cfg in load_providers():
        if isinstance(cfg, ConfigError):  # its DAG reports the problem; a pool can wait for the fix
            print(f"skipping {path.name}: {cfg}", file=sys.stderr)
            continue
        name = cfg.pool()
        Pool.create_or_update_pool(name, cfg.limits.pool_slots,
                                   f"MLS provider {cfg.name}: concurrent tasks against its servers",
                                   include_deferred=False)
        made.append((name, cfg.limits.pool_slots))
    return made


def main() -> int:
    for name, slots in ensure_pools():
        print(f"pool {name}: {slots} slots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
