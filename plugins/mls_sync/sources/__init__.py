"""Protocol sources behind one interface; `open_source` picks by the provider's `protocol`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mls_sync.sources.base import Source

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig
    from mls_sync.connections import Connection
    from mls_sync.limits import RateLimiter


def open_source(provider: ProviderConfig, conn: Connection, limiter: RateLimiter | None = None) -> Source:
    """A ready (not yet logged-in) source for this provider; log-in happens on first use."""
    from mls_sync.limits import RateLimiter

    limiter = limiter or RateLimiter(provider.limits.budget())
    if provider.protocol == "rets":
        from mls_sync.sources.rets import RetsSource

        return RetsSource.from_config(provider, conn, limiter)
    from mls_sync.sources.reso import ResoSource

    return ResoSource.from_config(provider, conn, limiter)
