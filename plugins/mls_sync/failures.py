"""What a run-level failure was: its category, the request that failed and the cause, secret-free.

The categories are the error table's (and the dashboard's filters): `network` (connection, 5xx,
storage or database unreachable), `auth` (credentials refused), `rate_limit` (429s or our own
budget exhausted), `config` (a missing connection, a wrong URL or setting) and `data` (the MLS
refused our query, or anything else the run could not handle).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mls_sync.sources.base import AuthError, Masker, QueryError, RateLimitError, SourceError

MAX_CAUSE = 2000

_CONFIG = ("ConfigError", "ConnectionNotFound", "ObjectStoreConfigError", "RunOptionsError",
           "DatabaseConfigError")
# OSErrors about this machine or a setting (a photo folder that cannot be written), not the network
_LOCAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_NETWORK = ("OperationalError", "InterfaceError", "DisconnectionError", "ObjectStoreError")


def _names(exc: BaseException) -> set[str]:
    return {k.__name__ for k in type(exc).__mro__}


def category_of(exc: BaseException) -> str:
    """The error table's category for an exception that ended a stage."""
    names = _names(exc)
    if names & set(_CONFIG) or isinstance(exc, _LOCAL):
        return "config"
    if isinstance(exc, SourceError):
        if exc.category == "network" and getattr(exc, "retryable", None) is False:
            return "config"  # a 404 on a capability URL, an invalid URL: a setting, not a blip
        return exc.category if exc.category in ("network", "auth", "rate_limit", "data") else "network"
    if names & set(_NETWORK) or isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return "network"
    return "data"


# A retry finds the provider as it is now: another run still holds it, or the stage still lacks
# what an earlier stage should have finished (lease.RunConflict, sync.IncompleteRun).
_STATE = ("RunConflict", "IncompleteRun")


def needs_operator(exc: BaseException) -> bool:
    """Whether a whole task retry cannot fix this failure, so the task should fail at once.

    Credentials refused, a missing or wrong connection, an invalid config or run conf, a query the
    server refuses, the provider held by another run: retrying only repeats the failure, and
    repeated failed logins get accounts locked by vendors. Network trouble, 5xx, rate limits and
    everything unknown keep Airflow's retries with exponential backoff.
    """
    if isinstance(exc, RateLimitError):
        return False
    if isinstance(exc, (AuthError, QueryError)) or _names(exc) & set(_STATE):
        return True
    return category_of(exc) == "config"


def describe_failure(exc: BaseException, request: Any = None, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """A small JSON-able record of the failure, every text masked with the connection's secrets."""
    mask = Masker(secrets)
    cause = mask(str(exc) or type(exc).__name__).strip()
    if len(cause) > MAX_CAUSE:
        cause = cause[:MAX_CAUSE] + "..."
    out: dict[str, Any] = {"category": category_of(exc), "error": type(exc).__name__, "cause": cause}
    for attr in ("code", "retry_after"):
        value = getattr(exc, attr, None)
        if isinstance(value, (int, float, str)):
            out[attr] = value
    sent = getattr(exc, "request", None) or request
    if sent is not None:
        out["request"] = _masked(sent, mask)
    return out


def _masked(value: Any, mask: Masker) -> Any:
    if isinstance(value, dict):
        return {str(k): _masked(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, mask) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask(value)
