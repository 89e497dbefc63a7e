"""Provider YAML -> validated, typed config.

Strict on purpose: an unknown key is almost always a typo that would otherwise silently drop a
setting (a misspelt `page_size` means the default is used in production). Every error names the
file, the key path and what would fix it. One bad file fails only its own provider.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mls_sync.columns import MAPPABLE_COLUMNS, ROSTER_COLUMNS, STANDARD_STATUSES
from mls_sync.limits import Budget
from mls_sync.sources.base import SourceFields

DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "include" / "mappings"
NORMALIZERS = ("string", "money", "int", "decimal", "date", "timestamp", "bool", "lookup", "list",
               "html", "status")
_ID = r"^[a-z][a-z0-9_]{1,62}$"


# Airflow's schedule presets; anything else must be a five-field cron expression
SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly",
                    "@annually")


def check_schedule(value: str | None) -> str | None:
    """Refuse a schedule Airflow would refuse, here, so the error names the YAML key (and Airflow
    never sees it as an error of the whole DAG file)."""
    if value is None or value in SCHEDULE_PRESETS:
        return value
    from croniter import croniter

    fields = value.split()
    if len(fields) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression of five fields (minute hour day month weekday, "
                         f"e.g. '0 */4 * * *') nor one of {', '.join(SCHEDULE_PRESETS)}; null means manual runs only")
    return value


class ConfigError(ValueError):
    """A provider YAML that cannot be used; the message says where and how to fix it."""

    category = "config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Target(_Strict):
    column: str
    type: Literal[NORMALIZERS] = "string"  # type: ignore[valid-type]
    required: bool = False
    lookup: dict[str, str] | None = None  # code -> label, for type: lookup (overrides metadata)
    separator: str = ","  # for type: list


TargetT = TypeVar("TargetT", bound=_Target)


def field_items(fields: dict[str, TargetT | list[TargetT]]) -> list[tuple[str, TargetT]]:
    """(MLS field, target) pairs of a `fields:` mapping in YAML order (one field may feed several)."""
    out: list[tuple[str, TargetT]] = []
    for name, t in fields.items():
        out.extend((name, x) for x in (t if isinstance(t, list) else [t]))
    return out


class RosterField(_Target):
    """A roster resource's field target; its column is checked against that resource's table."""


class FieldTarget(_Target):
    """A listing field's target: a column of `properties`."""

    @field_validator("column")
    @classmethod
    def _known_column(cls, v: str) -> str:
        if v not in MAPPABLE_COLUMNS:
            raise ValueError(f"unknown column {v!r}; mappable columns: {', '.join(sorted(MAPPABLE_COLUMNS))}")
        return v


class RetsSettings(_Strict):
    resource: str = "Property"
    class_: str = Field("RE_1", alias="class")
    format: Literal["COMPACT", "COMPACT-DECODED"] = "COMPACT-DECODED"
    page_size: int = Field(2500, ge=1, le=100_000)
    offset: Literal["auto", "always", "never"] = "auto"
    method: Literal["GET", "POST"] = "GET"
    time_zone: str | None = None  # e.g. "-05:00" or "America/Chicago"; default: SYSTEM TimeZoneOffset
    photo_type: str = "Photo"
    photo_location: bool = False  # ask GetObject for Location=1 URLs instead of bytes
    photos_per_request: int = Field(20, ge=1, le=500)  # listings per multipart GetObject
    timeout_seconds: float = Field(120, gt=0)
    # The DMQL a query sends when nothing else narrows it (no filter, no time window); default
    # ((KEY=.EMPTY.)|~(KEY=.EMPTY.)), true for every record. For servers that refuse .EMPTY.
    match_all: str | None = None


class ResoSettings(_Strict):
    resource: str = "Property"  # found in $metadata by set name, type name or StandardName annotation
    page_size: int = Field(1000, ge=1, le=10_000)
    paging: Literal["keyset", "nextlink"] = "keyset"
    max_page_size_header: bool = False  # keyset: send Prefer: odata.maxpagesize instead of $top
    # nextlink: this vendor reads $top as a page size and keeps paging past it (not OData's meaning,
    # where $top limits the whole result); otherwise the page size is asked with Prefer only
    top_is_page_size: bool = False
    odata_version: Literal["auto", "4.0", "4.01"] = "auto"  # auto: $metadata's Version, `in` probed
    field_types: dict[str, str] = Field(default_factory=dict)  # field -> Edm type, over $metadata's
    use_metadata: bool = True  # false: no $metadata; literals typed by field_types and their values
    verify_count: bool = True  # compare the walk's distinct keys with the server's $count
    expand_media: bool = True
    select_from_mapping: bool = True
    mlg_can_view: bool = False  # MLS Grid: MlgCanView=false means the listing must be removed
    media_user_agent_token: bool = False  # MLS Grid: access token as User-Agent on media downloads
    timeout_seconds: float = Field(120, gt=0)

    @field_validator("field_types")
    @classmethod
    def _edm_types(cls, v: dict[str, str]) -> dict[str, str]:
        from mls_sync.sources.base import QueryError
        from mls_sync.sources.reso.odata import LITERAL_TYPES, ident

        for name, edm in v.items():
            try:
                ident(name)
            except QueryError:
                raise ValueError(f"{name!r} is not an OData property name") from None
            if edm not in LITERAL_TYPES:
                raise ValueError(f"{name}: {edm!r} is not a type a $filter literal can have; "
                                 f"use one of {', '.join(LITERAL_TYPES)}")
        return v

    @model_validator(mode="after")
    def _paging_options(self) -> ResoSettings:
        if self.top_is_page_size and self.paging != "nextlink":
            raise ValueError("top_is_page_size only applies to paging: nextlink (keyset paging sends "
                             "$top per query, where OData's meaning and a page size agree)")
        return self


class Limits(_Strict):
    requests_per_second: float | None = Field(None, gt=0)
    requests_per_hour: int | None = Field(None, gt=0)
    requests_per_day: int | None = Field(None, gt=0)
    media_bytes_per_hour: int | None = Field(None, gt=0)
    pool_slots: int = Field(2, ge=1, le=64)
    request_attempts: int = Field(5, ge=1, le=20)
    max_wait_seconds: float = Field(900, gt=0)

    def budget(self) -> Budget:
        """The provider's whole budget: every task of the provider spends it together, through
        the permits in the store (`mls_sync.shared_budget`)."""
        return Budget(self.requests_per_second, self.requests_per_hour, self.requests_per_day,
                      self.media_bytes_per_hour, self.max_wait_seconds)


class Retry(_Strict):
    task_retries: int = Field(3, ge=2, le=10)
    retry_delay_seconds: int = Field(30, ge=1)
    max_retry_delay_seconds: int = Field(1800, ge=1)
    record_max_attempts: int = Field(5, ge=1, le=50)  # then a dead letter
    record_retry_base_minutes: int = Field(15, ge=1)


class StatusPoll(_Strict):
    enabled: bool = True
    schedule: str = "*/10 * * * *"
    archive_after_days: int = Field(30, ge=0)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str | None:
        return check_schedule(v)


class Reconcile(_Strict):
    """Key reconciliation: how often, and how much drift is worth an alert."""

    # A scheduled run becomes a reconciliation when the last one is older than this (0: never on its
    # own; a full sync also counts as one). It asks the MLS for keys and modification times only.
    every_hours: float = Field(24, ge=0)
    # Alert when the listings found missing, stale or gone exceed this share of the MLS's count.
    max_drift: float = Field(0.01, ge=0, le=1)
    # Rows asked per page of the key walk (key and modification time only); empty: the protocol's
    # page_size. Servers that answer key-only queries from an index serve them in far larger pages
    # than full records (Trestle: 300,000 against 1,000), and every page is a round trip and a
    # request of the budget. Where the server caps lower, the walk takes what it sends and goes on
    # (RETS COUNT/MAXROWS, RESO nextLink), and the key list is checked against the server's count.
    key_page_size: int | None = Field(None, ge=1, le=300_000)


class Conflicts(_Strict):
    policy: Literal["mls_wins", "local_wins", "manual"] = "mls_wins"


class Media(_Strict):
    enabled: bool = True
    sizes: dict[str, int] = Field(default_factory=lambda: {"thumbnail": 320, "medium": 800, "large": 1600})
    formats: tuple[Literal["webp", "jpeg"], ...] = ("webp", "jpeg")
    quality: int = Field(82, ge=30, le=100)
    keep_original: bool = False
    batch_listings: int = Field(100, ge=1, le=5000)  # listings per mapped task
    max_mapped_tasks: int = Field(200, ge=1, le=1024)
    concurrency: int = Field(10, ge=1, le=64)
    max_attempts: int = Field(5, ge=1, le=50)
    removal_grace_hours: float = Field(24, ge=0)
    prefix: str = "listings"


class Alerts(_Strict):
    email: tuple[str, ...] = ()
    email_from: str | None = None  # sender; default: the SMTP connection's from_email
    smtp_connection_id: str | None = None
    slack_connection_id: str | None = None
    max_duration_minutes: int = Field(30, ge=1)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    stale_after_hours: int = Field(24, ge=1)


# Where each roster resource lives when the YAML does not say: the RETS resource and class most
# servers use, the RESO Data Dictionary resource
ROSTER_DEFAULTS: dict[str, tuple[str, str, str]] = {
    "member": ("Agent", "Agent", "Member"), "office": ("Office", "Office", "Office"),
    "open_house": ("OpenHouse", "OpenHouse", "OpenHouse")}


class RosterRets(_Strict):
    resource: str
    class_: str = Field(alias="class")


class RosterReso(_Strict):
    resource: str  # found in $metadata like reso.resource


class RosterRoles(_Strict):
    key: str  # the server's name of the resource's key (MemberKey / AG_KEY)
    modified: str  # its modification timestamp (ModificationTimestamp / AG_MODIFIED)


class RosterResource(_Strict):
    """One more resource to sync beside the listings (members, offices, open houses), into its own
    table with its own watermark; the provider's connection, limits and paging settings apply."""

    rets: RosterRets | None = None
    reso: RosterReso | None = None
    source_fields: RosterRoles
    fields: dict[str, RosterField | list[RosterField]]

    def field_items(self) -> list[tuple[str, RosterField]]:
        return field_items(self.fields)

    def roles(self) -> SourceFields:
        return SourceFields(key=self.source_fields.key, modified=self.source_fields.modified)

    def select_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([n for n, _ in self.field_items()] + [self.source_fields.key,
                                                                          self.source_fields.modified]))

    def check_columns(self, kind: str) -> None:
        allowed = ROSTER_COLUMNS[kind]
        columns = [t.column for _, t in self.field_items()]
        unknown = sorted(set(columns) - set(allowed))
        if unknown:
            raise ValueError(f"resources.{kind}.fields: unknown column(s) {unknown}; columns of this resource: "
                             f"{', '.join(allowed)}")
        key = next(iter(allowed))
        for needed in (key, "mls_modified_at"):
            if needed not in columns:
                raise ValueError(f"resources.{kind}.fields must map some MLS field to column {needed}")
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise ValueError(f"resources.{kind}.fields map more than one MLS field to {dupes}; keep one")

    def rets_names(self, kind: str) -> tuple[str, str]:
        """(RETS resource, class) of this resource."""
        if self.rets:
            return self.rets.resource, self.rets.class_
        return ROSTER_DEFAULTS[kind][0], ROSTER_DEFAULTS[kind][1]

    def reso_name(self, kind: str) -> str:
        return self.reso.resource if self.reso else ROSTER_DEFAULTS[kind][2]


RosterKind = Literal["member", "office", "open_house"]


class ProviderConfig(_Strict):
    provider_id: Annotated[str, Field(pattern=_ID)]
    name: str
    protocol: Literal["rets", "reso"]
    connection_id: str
    enabled: bool = True
    owner: str = "mls-sync"
    tags: tuple[str, ...] = ()
    schedule: str | None = "0 */4 * * *"
    rets: RetsSettings | None = None
    reso: ResoSettings | None = None
    source_fields: dict[str, str]
    fields: dict[str, FieldTarget | list[FieldTarget]]
    status_map: dict[str, str] = Field(default_factory=dict)
    full_sync_statuses: tuple[str, ...] = ("Active", "ActiveUnderContract", "ComingSoon", "Pending")
    timestamp_time_zone: str | None = None  # zone of naive MLS timestamps; default from the source
    overlap_minutes: int = Field(5, ge=0, le=1440)
    limits: Limits = Field(default_factory=Limits)
    retry: Retry = Field(default_factory=Retry)
    status_poll: StatusPoll = Field(default_factory=StatusPoll)
    conflicts: Conflicts = Field(default_factory=Conflicts)
    reconcile: Reconcile = Field(default_factory=Reconcile)
    media: Media = Field(default_factory=Media)
    alerts: Alerts = Field(default_factory=Alerts)
    storage: dict[str, Any] = Field(default_factory=dict)  # object store settings; empty = environment
    # the roster and open houses, each synced into its own table (none: listings only)
    resources: dict[RosterKind, RosterResource] = Field(default_factory=dict)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return check_schedule(v)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: dict[str, Any]) -> dict[str, Any]:
        """A typo such as `bukket` must fail the YAML, not the photos after the records loaded."""
        if v:
            from mls_sync.objectstore import check_settings

            check_settings(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        if self.protocol == "rets" and self.rets is None:
            object.__setattr__(self, "rets", RetsSettings())
        if self.protocol == "reso" and self.reso is None:
            object.__setattr__(self, "reso", ResoSettings())
        for role in ("key", "modified"):
            if role not in self.source_fields:
                raise ValueError(f"source_fields.{role} is required (the server's name for the listing {role} field)")
        unknown = set(self.source_fields) - set(SourceFields.__dataclass_fields__)
        if unknown:
            raise ValueError(f"source_fields has unknown roles {sorted(unknown)}; "
                             f"allowed: {sorted(SourceFields.__dataclass_fields__)}")
        columns = [t.column for t in self.targets()]
        if "listing_key" not in columns:
            raise ValueError("fields must map some MLS field to column listing_key")
        dupes = {c for c in columns if columns.count(c) > 1}
        if dupes:
            raise ValueError(f"fields map more than one MLS field to {sorted(dupes)}; keep one")
        for mls, std in self.status_map.items():
            if std not in STANDARD_STATUSES:
                raise ValueError(f"status_map.{mls}: {std!r} is not a RESO StandardStatus "
                                 f"({', '.join(STANDARD_STATUSES)})")
        for s in self.full_sync_statuses:
            if s not in STANDARD_STATUSES:
                raise ValueError(f"full_sync_statuses: {s!r} is not a RESO StandardStatus")
        for kind, res in self.resources.items():
            res.check_columns(kind)
        return self

    def targets(self) -> list[FieldTarget]:
        return [t for _, t in field_items(self.fields)]

    def field_items(self) -> list[tuple[str, FieldTarget]]:
        return field_items(self.fields)

    def select_fields(self) -> tuple[str, ...]:
        """The server fields a sync needs (mapped + roles), when the YAML asks to fetch only those.

        RESO: `reso.select_from_mapping` ($select). RETS servers differ in what Select accepts, so
        RETS fetches every field. Empty means "all fields".
        """
        if self.protocol != "reso" or not (self.reso and self.reso.select_from_mapping):
            return ()
        names = [name for name, _ in self.field_items()] + list(self.source_fields.values())
        return tuple(dict.fromkeys(names))

    def roles(self) -> SourceFields:
        return SourceFields(**self.source_fields)

    def source_statuses(self, standard: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Server-side status values meaning any of these StandardStatus values.

        RESO servers speak StandardStatus already; RETS servers use their own codes, which the
        YAML's status_map translates (we invert it here for queries).
        """
        if not self.status_map:
            return tuple(standard)
        return tuple(sorted(k for k, v in self.status_map.items() if v in standard))

    def dag_id(self) -> str:
        return sync_dag_id(self.provider_id)

    def status_dag_id(self) -> str:
        return status_dag_id(self.provider_id)

    @staticmethod
    def valid_id(name: str) -> bool:
        """Whether `name` can be a provider id (and so a DAG id, a pool and a file name)."""
        return re.match(_ID, name) is not None

    def pool(self) -> str:
        """The Airflow pool bounding this provider's concurrent tasks (`mls_sync_airflow.setup` makes it)."""
        return f"mls_{self.provider_id}"


def sync_dag_id(provider_id: str) -> str:
    """The provider's sync DAG (also named for a YAML that does not load, whose DAG shows the error)."""
    return f"mls_sync__{provider_id}"


def status_dag_id(provider_id: str) -> str:
    return f"mls_status__{provider_id}"


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid provider config ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling (see include/mappings/README.md)"
        elif err["type"] == "missing":
            msg = "required key is missing; add it"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


# libyaml's safe loader when PyYAML was built with it (many times faster than the pure-Python one,
# which was most of the DAG file's parse time); both refuse tags that would run code
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_provider(path: str | Path) -> ProviderConfig:
    """Parse and validate one provider YAML (a safe loader only: YAML tags cannot run code)."""
    path = Path(path)
    if path.suffix != ".yaml" or not ProviderConfig.valid_id(path.stem):
        raise ConfigError(f"{path}: a provider file is named <provider_id>.yaml, the id a lowercase letter "
                          "then 1-62 lowercase letters, digits or _ (it becomes DAG ids and a pool name); "
                          "rename the file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        cfg = ProviderConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    if cfg.provider_id != path.stem:
        raise ConfigError(f"{path}: provider_id {cfg.provider_id!r} must equal the file name "
                          f"{path.stem!r}, so DAG ids and files stay in step; rename one")
    return cfg


def mappings_dir() -> Path:
    return Path(os.environ.get("MLS_MAPPINGS_DIR", DEFAULT_MAPPINGS_DIR))


def provider_paths(directory: str | Path | None = None) -> list[Path]:
    """Every provider file, misnamed ones (`.yml`, `Demo-MLS.yaml`) included: load_provider says
    what is wrong with those, rather than them being skipped without a word."""
    d = Path(directory) if directory else mappings_dir()
    return sorted(p for p in d.glob("*.y*ml") if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def load_providers(directory: str | Path | None = None) -> tuple[tuple[Path, ProviderConfig | ConfigError], ...]:
    """Every provider YAML, parsed, or the error that names what is wrong with it.

    Re-read only when a file was added, removed or changed: in this process (the dashboard asks
    every few seconds) and across processes (the dag-processor parses in a new one each time,
    config_cache keeps validated configs on disk by each file's stamp).
    """
    d = Path(directory) if directory else mappings_dir()
    stamps = []
    for path in provider_paths(d):
        try:
            st = path.stat()
            stamps.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:  # gone since the listing: load_provider reports it
            stamps.append((str(path), -1, -1))
    return _load_all(d, tuple(stamps))


@functools.lru_cache(maxsize=8)
def _load_all(directory: Path, stamps: tuple[tuple[str, int, int], ...]
              ) -> tuple[tuple[Path, ProviderConfig | ConfigError], ...]:
    from mls_sync import config_cache

    cached = config_cache.read(directory)
    fresh: dict[tuple[str, int, int], ProviderConfig | str] = {}
    out: list[tuple[Path, ProviderConfig | ConfigError]] = []
    for stamp in stamps:
        entry = cached.get(stamp) if stamp[1] >= 0 else None
        if entry is None:
            try:
                entry = load_provider(stamp[0])
            except ConfigError as exc:
                entry = str(exc)
        fresh[stamp] = entry
        out.append((Path(stamp[0]), entry if isinstance(entry, ProviderConfig) else ConfigError(entry)))
    if fresh.keys() != cached.keys():
        config_cache.write(directory, fresh)
    return tuple(out)


def find_provider(name: str, directory: str | Path | None = None) -> ProviderConfig:
    d = Path(directory) if directory else mappings_dir()
    path = d / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in provider_paths(d)) or "none"
        raise ConfigError(f"no provider {name!r}: {path} does not exist (known providers: {known})")
    return load_provider(path)
