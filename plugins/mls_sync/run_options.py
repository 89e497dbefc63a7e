"""What a manual run may ask for (the Airflow trigger form's conf), validated before it is used.

Values from conf reach MLS queries, so they are checked against tight patterns here and escaped
again by each source: no conf value can change a query's meaning.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

KEY_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
POSTAL_RE = r"^[A-Za-z0-9][A-Za-z0-9 -]{1,11}$"
CITY_RE = r"^[^\W\d_][\w .'-]{0,59}$"
MAX_ITEMS = 500
# modified_since: MLS clocks start well after 1970, and sources turn it into epoch-based or
# server-local times (year 1 overflowed the RETS conversion; RESO servers answered 400)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)  # "now" on the machine that triggered may run a little ahead
# the same floor for the trigger form and the REST API (JSON Schema cannot say "not in the
# future"; the model below does, when the run plans, before anything is fetched)
SINCE_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-"


class RunOptionsError(ValueError):
    """The run's conf is not acceptable; the message names each bad field."""

    category = "config"


def _clean_list(values: Any, pattern: str, what: str) -> tuple[str, ...]:
    if values in (None, "", []):
        return ()
    if isinstance(values, str):
        values = re.split(r"[,\n]", values)
    out = []
    for v in values:
        v = str(v).strip()
        if not v:
            continue
        if not re.match(pattern, v):
            raise ValueError(f"{v!r} is not a valid {what}")
        out.append(v)
    if len(out) > MAX_ITEMS:
        raise ValueError(f"at most {MAX_ITEMS} {what}s per run; split the request")
    return tuple(dict.fromkeys(out))


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "full", "incremental", "reconcile"] = "auto"
    listing_keys: Annotated[tuple[str, ...], Field(default=())]
    postal_codes: Annotated[tuple[str, ...], Field(default=())]
    cities: Annotated[tuple[str, ...], Field(default=())]
    modified_since: datetime | None = None
    include_photos: bool = True
    dry_run: bool = False

    @field_validator("listing_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> tuple[str, ...]:
        return _clean_list(v, KEY_RE, "listing key")

    @field_validator("postal_codes", mode="before")
    @classmethod
    def _postal(cls, v: Any) -> tuple[str, ...]:
        return _clean_list(v, POSTAL_RE, "postal code")

    @field_validator("cities", mode="before")
    @classmethod
    def _cities(cls, v: Any) -> tuple[str, ...]:
        return _clean_list(v, CITY_RE, "city")

    @field_validator("modified_since", mode="before")
    @classmethod
    def _since(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("modified_since")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if v < EARLIEST:
            raise ValueError(f"{v.isoformat()} is before 1970-01-01; give the time since when changes are wanted")
        if v > datetime.now(UTC) + CLOCK_SKEW:
            raise ValueError(f"{v.isoformat()} is in the future; nothing can have changed since then")
        return v

    @property
    def partial(self) -> bool:
        return bool(self.listing_keys or self.postal_codes or self.cities)

    @classmethod
    def from_conf(cls, conf: dict[str, Any] | None) -> RunOptions:
        conf = {k: v for k, v in (conf or {}).items() if v is not None}
        try:
            return cls.model_validate(conf)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'conf'}: {e['msg']}" for e in exc.errors())
            raise RunOptionsError(f"invalid run conf: {problems}") from None


# The JSON schema the Airflow trigger form renders (one Param per field).
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "mode": {"type": "string", "enum": ["auto", "full", "incremental", "reconcile"], "default": "auto",
             "title": "Mode", "description": "auto: incremental from the watermark (full on the first run, a "
             "key reconciliation when one is due); reconcile: incremental, then compare every key and "
             "modification time with the MLS and repair the differences"},
    "listing_keys": {"type": ["array", "null"], "items": {"type": "string", "pattern": KEY_RE},
                     "default": None, "title": "Listing keys (partial sync)", "maxItems": MAX_ITEMS},
    "postal_codes": {"type": ["array", "null"], "items": {"type": "string", "pattern": POSTAL_RE},
                     "default": None, "title": "Postal codes (partial sync)", "maxItems": MAX_ITEMS},
    "cities": {"type": ["array", "null"], "items": {"type": "string", "pattern": CITY_RE},
               "default": None, "title": "Cities (partial sync)", "maxItems": MAX_ITEMS},
    "modified_since": {"type": ["string", "null"], "format": "date-time", "pattern": SINCE_PATTERN,
                       "default": None, "title": "Modified since (UTC)",
                       "description": "Overrides the watermark; from 1970 on, not in the future"},
    "include_photos": {"type": "boolean", "default": True, "title": "Include photos"},
    "dry_run": {"type": "boolean", "default": False, "title": "Dry run",
                "description": "Fetch and compare; record what would change; write nothing"},
}
