"""The one small interface every MLS protocol implements.

The sync engine, the DAGs and the CLI only talk to `Source`; whether a provider speaks RETS or
the RESO Web API is decided by its YAML (`protocol: rets | reso`) and nothing else.

Records travel as plain dicts keyed by the *server's* field names (RETS system names such as
`LIST_22`, RESO names such as `ListPrice`); mapping to our columns is `mapping.py`'s job.
Pages are bounded (the provider's page size), so memory never grows with the result.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class SourceError(Exception):
    """Base of everything a source raises; `category` drives retry and alerting."""

    category = "network"

    def __init__(self, message: str, *, code: str | int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


class AuthError(SourceError):
    """Credentials refused (after one transparent re-login). Never retried by the client."""

    category = "auth"


class RateLimitError(SourceError):
    """The provider's budget is exhausted beyond what the client may wait for."""

    category = "rate_limit"


class ServerError(SourceError):
    """Network failure, 5xx, or a RETS/OData error reply that is not about our query."""

    category = "network"


class QueryError(SourceError):
    """The server rejected the query itself (RETS 20203/20206, OData 400). Not retried."""

    category = "data"


class MismatchError(QueryError):
    """The server answers, but not the way the configuration says it will (rows without the
    configured key field, a login URL that is not the Login transaction): fix the setting."""


class MetadataCache(Protocol):
    """Where a source keeps server metadata between runs (the store gives it one table)."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...


class Masker:
    """Replaces known secrets in any text that may reach a log or an exception.

    Secrets shorter than 4 characters are ignored: they would garble every message and protect
    nothing. Longer secrets are replaced first, so one containing another is masked whole.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def __call__(self, text: object) -> str:
        out = str(text)
        for s in sorted(self._secrets, key=len, reverse=True):
            out = out.replace(s, "***")
        return out

    def __repr__(self) -> str:
        return f"Masker({len(self._secrets)} secrets)"


@dataclass(frozen=True)
class SourceFields:
    """Which server fields play the roles the engine needs, in the server's own names."""

    key: str  # ListingKey / LIST_1
    modified: str  # ModificationTimestamp / LIST_87
    status: str | None = None  # StandardStatus / LIST_15 (values in the server's terms)
    postal_code: str | None = None
    city: str | None = None
    photos_modified: str | None = None  # PhotosChangeTimestamp / PhotoModificationTimestamp
    photos_count: str | None = None


@dataclass(frozen=True)
class SearchCriteria:
    """What to fetch. All filters AND together; an empty tuple means 'no filter'.

    Timestamps are timezone-aware UTC; sources convert to the server's zone themselves.
    `modified_since` is inclusive (the engine asks with a small overlap and dedupes by key).
    Status values are already in the server's terms (the engine translates StandardStatus).
    """

    modified_since: datetime | None = None
    modified_until: datetime | None = None
    listing_keys: tuple[str, ...] = ()
    postal_codes: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    select: tuple[str, ...] = ()  # server field names; empty means every field
    # A protocol-native clause (DMQL2 for RETS, an OData $filter for RESO) ANDed with the rest.
    # Only operators set it (the CLI); values from a DAG run's conf never reach it.
    raw_query: str | None = None
    # Rows asked per page; None: the source's configured page size. Key walks ask for more where
    # the server serves key-only queries in larger pages (reconcile.key_page_size).
    page_size: int | None = None


@dataclass
class Page:
    """One bounded page plus the cursor resuming *after* it; removals stay in, marked `"__deleted__": True`."""

    records: list[dict[str, Any]]
    cursor: dict[str, Any]  # JSON-serialisable; pass back as `resume_from`
    number: int = 0  # 1-based page number within this walk


@dataclass
class PhotoObject:
    """One photo as the server delivered it: bytes, or a URL (RETS Location=1 / RESO MediaURL).

    `error` is set (and `data` is None) when the server answered this object with an XML error
    part, an empty part or a failed download; the caller records it and carries on.
    """

    listing_key: str
    order: int  # 0 = primary photo, whatever numbering the server uses
    source_id: str  # Object-ID / MediaKey
    content_type: str | None = None
    data: bytes | None = None
    url: str | None = None
    caption: str | None = None
    modified: datetime | None = None
    error: str | None = None


@dataclass
class PhotoRef:
    """What the server says a listing's photo is, without its bytes (RESO Media records)."""

    listing_key: str
    order: int
    source_id: str
    url: str | None
    modified: datetime | None = None
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Source(abc.ABC):
    """A logged-in conversation with one MLS. Use as a context manager; `close()` logs out."""

    protocol: str = ""

    @abc.abstractmethod
    def check(self) -> dict[str, Any]:
        """Log in and read enough to prove the provider answers; returns server facts."""

    @abc.abstractmethod
    def metadata(self) -> dict[str, Any]:
        """Resources/classes/fields/lookups (RETS) or entity types and properties (RESO)."""

    @abc.abstractmethod
    def pages(self, criteria: SearchCriteria, resume_from: dict[str, Any] | None = None) -> Iterator[Page]:
        """Stream every matching record exactly once, page by page, resuming after `resume_from`."""

    @abc.abstractmethod
    def photos(self, listing_keys: Sequence[str]) -> Iterator[PhotoObject]:
        """Every current photo of these listings, one object at a time."""

    def for_resource(self, resource: str, class_: str | None, fields: SourceFields) -> Source:
        """This conversation (login, session, request budget and counts) over another resource of
        the same MLS: RETS `resource`/`class_`, RESO resource `resource`, keyed and stamped by
        `fields`. Closing the view closes nothing; the source it came from is closed as usual."""
        raise NotImplementedError(f"{type(self).__name__} reads only one resource")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Log out / release connections. Must never raise."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
