"""Key reconciliation: make the store hold exactly what the MLS holds, cheaply, on a schedule.

An incremental sync sees only what the MLS stamps as changed since the watermark: a listing
deleted from the MLS, a change stamped with an old time (back-dated, or made during a feed
outage) is never repaired by it. A reconciliation run is an incremental run plus:

1. (fetch) the key walk: the MLS's keys and modification times of everything in the provider's
   scope (the full sync's statuses): RETS `Select` / RESO `$select` of two fields, with the same
   paging and fallbacks as any walk, landed in `mls_reconcile_keys`, resumable by its own cursor;
2. (fetch) the listings missing here or held with another modification time, fetched in full by
   key and landed like any record (transform_load loads them);
3. (reconcile stage) listings held in scope that the MLS's list lacks, asked for by key: still
   there (left the scope: Closed, Withdrawn...) they are refreshed, gone they are deleted, through
   the conflict policy when they carry local edits.

What it found and did is the run's drift (`report.reconcile`), shown per provider on the
dashboard; above `reconcile.max_drift` of the MLS's count it raises an alert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mls_sync.config import ProviderConfig
from mls_sync.mapping import Mapper, parse_time_zone
from mls_sync.pipeline import prefetched
from mls_sync.sources.base import Page, SearchCriteria, Source
from mls_sync.store import keylist, runs
from mls_sync.store import raw as raw_store
from mls_sync.store.db import commit_without_flush
from mls_sync.sync import (
    RequestMeter,
    SyncContext,
    _key_of,
    _land_page,
    _source_time_zone,
    check_count,
    pages_for_keys,
    progress,
    rate,
)

log = logging.getLogger(__name__)


def key_criteria(provider: ProviderConfig) -> SearchCriteria:
    """Keys and modification times of what the provider should hold: the full sync's scope, in
    pages of `reconcile.key_page_size` where the YAML asks for larger ones."""
    roles = provider.roles()
    return SearchCriteria(statuses=provider.source_statuses(provider.full_sync_statuses),
                          select=(roles.key, roles.modified), page_size=provider.reconcile.key_page_size)


def fetch_differences(ctx: SyncContext, plan: dict[str, Any], source: Source, totals: dict[str, Any],
                      meter: RequestMeter | None, extra: dict[str, Any]) -> dict[str, int]:
    """Fetch's second half on a reconciliation run: walk the MLS's keys, then land in full the
    listings missing here or stale. Each part checkpoints in the run's stage_state, so a retried
    fetch resumes where it stopped; returns what it found."""
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    with ctx.db.connect() as c:
        state = (runs.get_run(c, t, sid).get("stage_state") or {}).get("keys") or {}
    if not state.get("walked"):
        extra["request"] = {"search": "keys and modification times in scope", "resume_from": state.get("cursor")}
        _walk_keys(ctx, plan, source, state, meter)
    if "found" in state:
        return dict(state["found"])
    with ctx.db.begin() as c:
        mls_count = keylist.count(c, t, p.provider_id, sid)
        diff = keylist.to_fetch(c, t, p.provider_id, sid)
        held = keylist.in_scope(c, t, p.provider_id, p.full_sync_statuses)
    keys = diff["missing"] + diff["stale"]
    extra["request"] = {"search": "listings missing or stale, by key", "keys": len(keys)}
    for page in pages_for_keys(source, keys):
        _land_page(ctx, plan, page.records, None, page.number, totals, meter)
    found = {"mls_count": mls_count, "store_count_before": held, "missing": len(diff["missing"]),
             "stale": len(diff["stale"])}
    with ctx.db.begin() as c:
        runs.merge_nested(c, t, sid, "stage_state", "keys", {"found": found})
    log.info("reconcile: sync %s: the MLS lists %d in scope, the store held %d; fetched %d missing and %d stale "
             "by key", sid, mls_count, held, found["missing"], found["stale"])
    return found


def _walk_keys(ctx: SyncContext, plan: dict[str, Any], source: Source, state: dict[str, Any],
               meter: RequestMeter | None) -> None:
    """Land the MLS's key list, then check it against the server's own count where it has one
    (RESO `$count` at the walk's cut): a short list would leave differences unfound and report the
    MLS's count low, so the run fails instead (IncompleteRead)."""
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    modified_of = Mapper(p, time_zone=parse_time_zone(_source_time_zone(source))).column_reader("mls_modified_at")
    criteria = key_criteria(p)
    cursor, keyless = state.get("cursor"), int(state.get("keyless") or 0)
    seen, started = 0, time.monotonic()
    # the next page downloads and parses while this one is landed, as in the fetch walk
    with prefetched(source.pages(criteria, resume_from=cursor), name="key-pages") as pages:
        for page in pages:
            landed, skipped = _land_keys(ctx, plan, page, modified_of, meter, seen, keyless)
            seen, keyless, cursor = seen + landed, keyless + skipped, page.cursor
            log.info("reconcile: key page %d: %d keys; %d so far (%s)", page.number, len(page.records), seen,
                     rate(seen, started))

    def listed() -> int:
        with ctx.db.connect() as c:
            return keylist.count(c, t, p.provider_id, sid)

    verified = check_count(source, criteria, cursor, listed, keyless, "the key walk", "keys")
    with ctx.db.begin() as c:
        runs.merge_nested(c, t, sid, "stage_state", "keys",
                          {"walked": True, **({"read_verified": verified} if verified else {})})


def _land_keys(ctx: SyncContext, plan: dict[str, Any], page: Page, modified_of: Callable[[dict[str, Any]], Any],
               meter: RequestMeter | None, seen: int, keyless: int) -> tuple[int, int]:
    """One page of (key, modification time) pairs and its cursor, in one transaction; returns the
    pairs landed and the records left out (no key, or marked deleted), which the count check needs."""
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    key_field = p.roles().key
    pairs = []
    for rec in page.records:
        key = _key_of(key_field, rec)
        if key and not raw_store.is_deleted(rec):
            pairs.append((key, modified_of(rec)))
    skipped = len(page.records) - len(pairs)
    with ctx.db.begin() as c:
        commit_without_flush(c)
        keylist.land(c, t, p.provider_id, sid, pairs)
        runs.merge_nested(c, t, sid, "stage_state", "keys", {"cursor": page.cursor, "keyless": keyless + skipped})
        if meter is not None:
            runs.add_counts(c, t, sid, {"requests": meter.take()})
        progress(c, ctx, plan, "fetch", {"keys": seen + len(pairs)})
    return len(pairs), skipped


def drift(found: dict[str, int], gone: int, deleted: int, refreshed: int, conflicted: int,
          store_after: int) -> dict[str, Any]:
    """What a reconciliation found and did, and the drift it measured: differences / MLS count."""
    differences = found.get("missing", 0) + found.get("stale", 0) + gone
    mls = found.get("mls_count", 0)
    return {**found, "gone": gone, "deleted": deleted, "refreshed": refreshed, "conflicted": conflicted,
            "store_count_after": store_after, "differences": differences,
            "drift": round(differences / mls, 6) if mls else (1.0 if differences else 0.0)}


def drift_alert(provider: ProviderConfig, figures: dict[str, Any] | None) -> str | None:
    """The alert text when a reconciliation's drift is above the YAML's `reconcile.max_drift`."""
    if not figures or figures.get("drift", 0) <= provider.reconcile.max_drift:
        return None
    return (f"drift {figures['drift']:.1%} above {provider.reconcile.max_drift:.1%}: the MLS lists "
            f"{figures.get('mls_count', 0):,} in scope, the store held {figures.get('store_count_before', 0):,}; "
            f"{figures.get('missing', 0)} missing, {figures.get('stale', 0)} stale, {figures.get('gone', 0)} gone "
            f"(repaired: {figures.get('deleted', 0)} deleted, {figures.get('refreshed', 0)} refreshed)")
