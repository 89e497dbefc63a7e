"""The sync run as stages: plan -> fetch -> transform_load -> reconcile -> (media) -> finalize.

Each stage takes a `SyncContext` and the small dict `plan` returned, reads and writes PostgreSQL,
and returns a small dict (XCom-sized: counts and ids, never records). Every stage is safe to
retry: fetch resumes from its checkpoint, transform_load from the last committed key, and
writes are idempotent upserts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mls_sync import lease
from mls_sync.columns import STANDARD_STATUSES
from mls_sync.config import ProviderConfig
from mls_sync.connections import Connection
from mls_sync.failures import describe_failure
from mls_sync.gc_batches import gc_for_batches
from mls_sync.lease import RunConflict
from mls_sync.limits import RateLimiter
from mls_sync.mapping import Mapper, parse_time_zone
from mls_sync.pipeline import Turn, Writer, prefetched, prompt_handoffs
from mls_sync.run_options import RunOptions
from mls_sync.shared_budget import SharedRateLimiter
from mls_sync.sources import open_source
from mls_sync.sources.base import Page, SearchCriteria, ServerError, Source
from mls_sync.store import errors as err_store
from mls_sync.store import keylist, leases, reports, runs
from mls_sync.store import properties as prop_store
from mls_sync.store import raw as raw_store
from mls_sync.store.db import commit_without_flush
from mls_sync.store.metadata_cache import DbMetadataCache
from mls_sync.store.tables import Tables, tables

log = logging.getLogger(__name__)
KEYS_PER_QUERY = 200
# transform_load's batches written at once, each on its own connection: PostgreSQL's upsert of a
# batch (parsing its JSON, seven indexes, WAL) is one backend's work, the longest step of the load
WRITERS = 2
LOAD_BATCH = prop_store.BATCH  # landed records per transform_load transaction: one upsert statement


@dataclass
class SyncContext:
    """Everything a stage needs, built by the Airflow task (or the CLI) from connections."""

    provider: ProviderConfig
    db: Engine
    # the MLS connection, or what looks it up: called on first use, so the stages that only touch
    # the database (plan, transform_load, finalize) run even when the connection is missing or broken
    mls: Connection | Callable[[], Connection]
    source_factory: Callable[[ProviderConfig, Connection, RateLimiter], Source] = open_source

    @property
    def t(self) -> Tables:
        return tables(self.db)

    def connection(self) -> Connection:
        if not isinstance(self.mls, Connection):
            self.mls = self.mls()
        return self.mls

    def source(self) -> Source:
        """A source whose client spends the provider's request budget, shared with every other
        task of the provider through the store (`shared_budget`)."""
        limiter = SharedRateLimiter(self.provider.limits.budget(), self.db, self.t, self.provider.provider_id)
        source = self.source_factory(self.provider, self.connection(), limiter)
        if hasattr(source, "metadata_cache"):
            source.metadata_cache = DbMetadataCache(self.db, self.t, self.provider.provider_id)
        return source


def rate(count: int, started: float | None) -> str:
    """`n records/s` since `started` (monotonic), for progress lines in task logs."""
    elapsed = time.monotonic() - started if started else 0.0
    return f"{count / elapsed:,.0f} records/s" if elapsed > 0 else "-"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _dt(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def progress(c: sa.Connection, ctx: SyncContext, plan: dict[str, Any], stage: str,
             detail: dict[str, Any] | None = None) -> None:
    """In a stage's transaction: the provider's current stage and progress (writers only: a dry
    run touches no provider state), then the lease's heartbeat, which fails the transaction of a
    run that lost its lease (status row first, lease second: the order `plan` locks them in)."""
    if not plan.get("dry_run"):
        runs.mark_running(c, ctx.t, ctx.provider.provider_id, plan["sync_id"], stage, detail)
    lease.beat(c, ctx.t, plan, stage)


@contextmanager
def _stage(ctx: SyncContext, plan: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """Hold the run's lease through a stage, time it into the history row and show it as the
    provider's current stage; a failure is recorded (`record_failure`) before it propagates.

    A stage may put `request` in the dict it is given (what it is asking the MLS for), which a
    failure record carries; the rest is merged into the run's report when the stage ends.
    """
    started = time.monotonic()
    extra: dict[str, Any] = {}
    try:
        lease.hold(ctx.db, ctx.t, ctx.provider, plan, name)
        with lease.keep_alive(ctx.db, ctx.t, plan["sync_id"]), gc_for_batches():
            with ctx.db.begin() as c:
                progress(c, ctx, plan, name)
            yield extra
    except Exception as exc:
        record_failure(ctx, plan, name, exc, extra.get("request"))
        raise
    finally:
        quietly(lease.park, ctx.db, ctx.t, plan)
    extra.pop("request", None)
    with ctx.db.begin() as c:
        runs.record_stage(c, ctx.t, plan["sync_id"], name, time.monotonic() - started, extra or None)
        stage_succeeded(c, ctx, plan, name)


def stage_succeeded(c: sa.Connection, ctx: SyncContext, plan: dict[str, Any], stage: str) -> None:
    """An earlier attempt's failure of this stage is over: resolved, and out of the run's report."""
    runs.drop_nested(c, ctx.t, plan["sync_id"], "report", "failures", stage)
    err_store.resolve_run_failures(c, ctx.t, ctx.provider.provider_id, stage=stage, sync_id=plan["sync_id"])


def quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Bookkeeping on the way out of a failed stage must not hide the stage's own error."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)


def record_failure(ctx: SyncContext, plan: dict[str, Any], stage: str, exc: BaseException,
                   request: Any = None) -> None:
    """A run-level failure (retries exhausted, auth refused, network, a bad setting, the database):
    one `mls_sync_errors` row per run and stage (a retried task that fails again bumps its
    attempts), with the category, the request that failed and the cause, secrets masked; and the
    cause in the run's report, which `finalize` puts in the history's error summary.

    A dry run records only the report (it writes no provider state); a lost lease is no failure
    of the MLS and is only reported.
    """
    secrets = ctx.mls.secret_values() if isinstance(ctx.mls, Connection) else []
    failure = {"task": stage, **describe_failure(exc, request, secrets),
               "at": utcnow().isoformat(timespec="milliseconds")}
    p, sid = ctx.provider, plan["sync_id"]
    log.warning("%s: run %s failed in %s: %s: %s", p.provider_id, sid, stage, failure["category"], failure["cause"])

    def write() -> None:
        with ctx.db.begin() as c:
            runs.merge_nested(c, ctx.t, sid, "report", "failures", {stage: failure})
            if plan.get("dry_run") or isinstance(exc, RunConflict):
                return
            err_store.record_error(c, ctx.t, provider_id=p.provider_id, stage=stage, category=failure["category"],
                                   ref=f"sync:{sid}", message=f"{stage} failed: {failure['cause']}",
                                   payload=failure, sync_id=sid, max_attempts=1)

    quietly(write)


# ---------------------------------------------------------------- plan

def reconciliation_due(provider: ProviderConfig, last_reconciled_at: datetime | None,
                       now: datetime | None = None) -> bool:
    """Whether a scheduled run should be a key reconciliation (see mls_sync.reconciliation)."""
    every = provider.reconcile.every_hours
    if every <= 0:
        return False
    return last_reconciled_at is None or (now or utcnow()) - last_reconciled_at >= timedelta(hours=every)


def plan(ctx: SyncContext, *, dag_id: str | None, dag_run_id: str | None, conf: dict[str, Any] | None,
         trigger: str = "scheduled", process_bound: bool = False, triggered_by: str | None = None
         ) -> dict[str, Any]:
    """Decide full / incremental / partial, take the provider's lease and open the run's history row.

    Raises RunConflict at once when another writing run holds the provider (a dry run never
    conflicts: it writes no provider state); abandoned runs are closed as failed first.
    `process_bound`: every stage of this run runs in this process (the CLI), so the run is gone
    when the process is.
    """
    p = ctx.provider
    opts = RunOptions.from_conf(conf)
    started = time.monotonic()
    with ctx.db.begin() as c:
        runs.ensure_status(c, ctx.t, p.provider_id, p.name, p.protocol, p.enabled)
        runs.lock_status(c, ctx.t, p.provider_id)
        lease.sweep(c, ctx.t, p)
        if not opts.dry_run:
            lease.check_free(c, ctx.t, p, runs.find_run(c, ctx.t, p.provider_id, dag_id, dag_run_id))
        status = runs.get_status(c, ctx.t, p.provider_id) or {}
        watermark = status.get("watermark")
        since = opts.modified_since
        if opts.partial:
            mode = "partial"
        elif opts.mode == "full":
            mode = "full"
        else:
            explicit_since = since is not None
            if since is None and watermark is not None:
                since = watermark - timedelta(minutes=p.overlap_minutes)
            if since is None:
                mode = "full"
            elif opts.mode == "reconcile" or (opts.mode == "auto" and not explicit_since and
                                              reconciliation_due(p, status.get("last_reconciled_at"))):
                mode = "reconcile"
            else:
                mode = "incremental"
        if mode == "full":
            since = None
        sync_id, _ = runs.open_run(
            c, ctx.t, provider_id=p.provider_id, dag_id=dag_id, dag_run_id=dag_run_id, mode=mode,
            trigger=trigger, dry_run=opts.dry_run, conf=opts.model_dump(mode="json"),
            watermark_before=watermark)
        lease.take(c, ctx.t, p, runs.get_run(c, ctx.t, sync_id), process_bound=process_bound, stage="plan")
        if not opts.dry_run:
            runs.mark_running(c, ctx.t, p.provider_id, sync_id, "plan", {})
        runs.record_stage(c, ctx.t, sync_id, "plan", time.monotonic() - started,
                          {"triggered_by": triggered_by} if triggered_by else None)
    out = {
        "sync_id": sync_id, "provider_id": p.provider_id, "mode": mode, "dry_run": opts.dry_run,
        "include_photos": opts.include_photos and p.media.enabled, "since": _iso(since),
        "listing_keys": list(opts.listing_keys), "postal_codes": list(opts.postal_codes),
        "cities": list(opts.cities), "watermark_before": _iso(watermark), "trigger": trigger,
        "process_bound": process_bound,
    }
    if not opts.dry_run:
        with ctx.db.begin() as c:
            purged = raw_store.purge_closed(c, ctx.t, p.provider_id)
            keylist.purge_closed(c, ctx.t, p.provider_id)
        if purged:
            log.info("plan: dropped %d landed records of finished runs of %s", purged, p.provider_id)
    if not process_bound:
        quietly(lease.park, ctx.db, ctx.t, out)
    log.info("plan: provider=%s sync_id=%s mode=%s since=%s dry_run=%s", p.provider_id, sync_id, mode,
             out["since"], opts.dry_run)
    return out


def criteria_for(provider: ProviderConfig, plan: dict[str, Any]) -> SearchCriteria:
    select = provider.select_fields()
    if plan["mode"] == "partial":
        return SearchCriteria(listing_keys=tuple(plan["listing_keys"]), postal_codes=tuple(plan["postal_codes"]),
                              cities=tuple(plan["cities"]), modified_since=_dt(plan.get("since")), select=select)
    if plan["mode"] == "full":
        return SearchCriteria(statuses=provider.source_statuses(provider.full_sync_statuses), select=select)
    return SearchCriteria(modified_since=_dt(plan["since"]), select=select)  # incremental, reconcile


# ---------------------------------------------------------------- fetch

def _key_of(key_field: str, rec: dict[str, Any]) -> str | None:
    k = rec.get(key_field)
    return str(k).strip() if k not in (None, "") else None


class RequestMeter:
    """Counts a source's requests into the run as they are made, so `requests` in the history is
    the total of every attempt of every stage (a killed fetch's pages included), not the last."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.counted = 0

    def take(self) -> int:
        """Requests made since the last call."""
        now = request_count(self.source)
        new, self.counted = now - self.counted, now
        return new


@contextmanager
def counted_requests(ctx: SyncContext, plan: dict[str, Any], source: Source) -> Iterator[RequestMeter]:
    """A meter for `source`; what it has not handed over yet is added to the run on the way out,
    failed or not."""
    meter = RequestMeter(source)
    try:
        yield meter
    finally:
        def flush() -> None:
            rest = meter.take()
            if rest:
                with ctx.db.begin() as c:
                    runs.add_counts(c, ctx.t, plan["sync_id"], {"requests": rest})
        quietly(flush)


def _land_page(ctx: SyncContext, plan: dict[str, Any], records: list[dict[str, Any]],
               cursor: dict[str, Any] | None, number: int, totals: dict[str, Any],
               meter: RequestMeter | None = None) -> None:
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    key_field = p.roles().key
    keyed, keyless = [], []
    for rec in records:
        k = _key_of(key_field, rec)
        (keyed.append((k, rec)) if k else keyless.append(rec))
    with ctx.db.begin() as c:
        commit_without_flush(c)
        raw_store.land(c, t, p.provider_id, sid, keyed)
        if keyless:  # one error row per page (numbered across the run), the first record as sample
            message = f"{len(keyless)} record(s) without {key_field} on page {number}"
            log.warning("fetch: sync %s: %s (rejected)", sid, message)
            if not plan.get("dry_run"):
                err_store.record_error(c, t, provider_id=p.provider_id, stage="fetch", category="data",
                                       ref=f"keyless:{sid}:{totals['pages'] + 1}", message=message,
                                       payload=keyless[0], sync_id=sid, max_attempts=1)
            runs.add_counts(c, t, sid, {"failed": len(keyless)})  # rejected, like a record that cannot map
        totals["pages"] += 1
        totals["records"] += len(keyed)
        totals["keyless"] += len(keyless)
        values: dict[str, Any] = {"pages_fetched": totals["pages"], "records_fetched": totals["records"]}
        if cursor is not None:
            values["fetch_cursor"] = cursor
        runs.update_history(c, t, sid, **values)
        if meter is not None:
            runs.add_counts(c, t, sid, {"requests": meter.take()})
        progress(c, ctx, plan, "fetch", {"pages": totals["pages"], "records": totals["records"]})
    log.info("fetch: page %d landed %d records%s; %d in %d pages so far (%s)", number, len(keyed),
             f", {len(keyless)} without {key_field}" if keyless else "", totals["records"], totals["pages"],
             rate(totals["records"] - totals.get("records_at_start", 0), totals.get("started")))


def _source_time_zone(source: Source) -> str | None:
    """The zone of the server's naive timestamps (RETS: SYSTEM TimeZoneOffset), as text."""
    tz = getattr(source, "time_zone", None)
    if tz is None and callable(getattr(source, "zone", None)):
        tz = source.zone()
    if tz is None:
        return None
    if isinstance(tz, str):
        return tz
    off = tz.utcoffset(None) if isinstance(tz, tzinfo) else None
    if off is None:
        return getattr(tz, "key", None)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def request_count(source: Source) -> int:
    """Requests a source made: a number (RESO) or a count per RETS transaction."""
    value = (getattr(source, "stats", None) or {}).get("requests", 0)
    return int(sum(value.values()) if isinstance(value, dict) else value or 0)


def pages_for_keys(source: Source, keys: Sequence[str]) -> Iterator[Page]:
    """The MLS's current records for these listing keys, KEYS_PER_QUERY keys per search."""
    for i in range(0, len(keys), KEYS_PER_QUERY):
        yield from source.pages(SearchCriteria(listing_keys=tuple(keys[i:i + KEYS_PER_QUERY])))


class IncompleteRead(ServerError):
    """The walk landed fewer distinct listings than the server counts for the same query and cut:
    records were missed (a cut-short nextLink chain, pages that shifted). The fetch fails and the
    watermark stays; a later run reads them again."""


FETCH_DONE = {"done": True}  # the fetch cursor once the whole stage has finished


def check_count(source: Source, criteria: SearchCriteria, cursor: dict[str, Any] | None,
                landed: Callable[[], int], keyless: int, what: str, noun: str) -> dict[str, int] | None:
    """The server's own count for a walk that ended at `cursor` (RESO `$count` at the walk's cut)
    against the distinct records it `landed`; None where the source cannot count. A shortfall
    raises IncompleteRead naming both numbers: the walk missed records whatever its paging said."""
    count = getattr(source, "expected_count", None)
    expected = count(criteria, cursor) if count is not None else None
    if expected is None:
        return None
    got = landed()
    if got + keyless < expected:
        cut = (cursor or {}).get("cut")
        raise IncompleteRead(f"{what} read {got} distinct {noun} but the server counts {expected} for the "
                             f"same query{f' up to {cut}' if cut else ''}: {expected - got - keyless} were "
                             "missed; the run fails and the watermark stays where it was")
    return {"server_count": expected, "distinct_keys": got}


def verify_read(ctx: SyncContext, plan: dict[str, Any], source: Source, criteria: SearchCriteria,
                cursor: dict[str, Any] | None, keyless: int) -> dict[str, int] | None:
    """Compare the distinct listings this run landed with the server's own count at the walk's
    cut (`check_count`). A pass is recorded in the run, so a resumed fetch does not ask again."""
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    with ctx.db.connect() as c:
        done = (runs.get_run(c, t, sid).get("stage_state") or {}).get("read_verified")
    if done:
        return done

    def landed() -> int:
        with ctx.db.connect() as c:
            return raw_store.count_run(c, t, p.provider_id, sid)

    verified = check_count(source, criteria, cursor, landed, keyless, "fetch", "listings")
    if verified is None:
        return None
    with ctx.db.begin() as c:
        runs.merge_into(c, t, sid, "stage_state", {"read_verified": verified})
    log.info("fetch: sync %s read %d distinct listings, the server counts %d", sid, verified["distinct_keys"],
             verified["server_count"])
    return verified


def fetch(ctx: SyncContext, plan: dict[str, Any]) -> dict[str, Any]:
    """Stream the search into the raw table, page by page, checkpointing the cursor."""
    p, sid = ctx.provider, plan["sync_id"]
    with ctx.db.connect() as c:
        run = runs.get_run(c, ctx.t, sid)
    cursor = run["fetch_cursor"]
    totals = {"pages": run["pages_fetched"] if cursor else 0,
              "records": run["records_fetched"] if cursor else 0, "keyless": 0, "started": time.monotonic()}
    totals["records_at_start"] = totals["records"]
    resumed = bool(cursor)
    with _stage(ctx, plan, "fetch") as extra, ctx.source() as source, \
            counted_requests(ctx, plan, source) as meter:
        # a source's own cursor may say "done" of one part of its walk; only ours says all is done
        if cursor != FETCH_DONE:
            criteria = criteria_for(p, plan)
            extra["request"] = {"search": _criteria_summary(plan), "resume_from": cursor or None}
            if resumed:
                log.info("fetch: resuming sync %s after page %s (cursor %s)", sid, totals["pages"], cursor)
            last = cursor or None
            # the next page downloads and parses while this one is landed (checkpoints stay in order)
            with prefetched(source.pages(criteria, resume_from=cursor or None), name="fetch-pages") as pages:
                for page in pages:
                    _land_page(ctx, plan, page.records, page.cursor, page.number, totals, meter)
                    extra["request"]["resume_from"] = last = page.cursor
            extra["request"] = {"search": "the server's count of what the walk read"}
            verified = verify_read(ctx, plan, source, criteria, last, totals["keyless"])
            if verified:
                extra["read_verified"] = verified
            retry_keys: list[str] = []
            if plan["mode"] != "partial":
                with ctx.db.connect() as c:
                    retry_keys = err_store.due_refs(c, ctx.t, p.provider_id, "transform")
            extra["request"] = {"search": "listing keys due for a retry", "keys": len(retry_keys)}
            for page in pages_for_keys(source, retry_keys):
                _land_page(ctx, plan, page.records, None, page.number, totals, meter)
            extra["retried_keys"] = len(retry_keys)
            if plan["mode"] == "reconcile":
                from mls_sync import reconciliation

                extra["reconcile"] = reconciliation.fetch_differences(ctx, plan, source, totals, meter, extra)
        tz = _source_time_zone(source)
        with ctx.db.begin() as c:
            runs.update_history(c, ctx.t, sid, fetch_cursor=FETCH_DONE)
            runs.add_counts(c, ctx.t, sid, {"requests": meter.take()})
            if tz:
                runs.merge_into(c, ctx.t, sid, "stage_state", {"source_time_zone": tz})
            requests = int(runs.get_run(c, ctx.t, sid)["requests"])
        extra["fetch_resumed"] = resumed
    log.info("fetch: sync %s landed %d records in %d pages (%d without a key), %s", sid, totals["records"],
             totals["pages"], totals["keyless"],
             rate(totals["records"] - totals["records_at_start"], totals["started"]))
    return {"pages": totals["pages"], "records": totals["records"], "resumed": resumed,
            "requests": requests}


def _criteria_summary(plan: dict[str, Any]) -> dict[str, Any]:
    """What the run asks the MLS for, as the error table shows it (no records, no secrets)."""
    out: dict[str, Any] = {"mode": plan["mode"], "modified_since": plan.get("since")}
    for name in ("listing_keys", "postal_codes", "cities"):
        if plan.get(name):
            out[name] = len(plan[name])
    return out


# ---------------------------------------------------------------- transform_load

class IncompleteRun(RuntimeError):
    """A stage was asked to work on what an earlier stage of the run has not finished."""


def require_fetched(run: dict[str, Any]) -> None:
    """Loading or reconciling part of a fetch would move the watermark past records never landed,
    or take listings the fetch did not reach for deleted."""
    if run["fetch_cursor"] != FETCH_DONE:
        raise IncompleteRun(f"run {run['id']}: fetch has not finished (its landed records are incomplete, "
                            "or were dropped after the run closed); run fetch again first")


def mapper_for_run(ctx: SyncContext, run: dict[str, Any]) -> Mapper:
    """The run's mapper: naive server timestamps read in the zone fetch recorded for this run."""
    tz = parse_time_zone((run.get("stage_state") or {}).get("source_time_zone"))
    return Mapper(ctx.provider, time_zone=tz)


@dataclass
class LoadProgress:
    """What loading has done so far in this run; `max_modified` becomes the next watermark.

    `stage` is the task writing: only transform_load's batches move its resume key
    (`transform_after`); reconcile's refreshed listings come in no key order.
    """

    stage: str = "transform_load"
    max_modified: datetime | None = None
    processed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    preview: dict[str, list[str]] | None = None
    # error stages open when the load began; a record appears once per run, so errors this run
    # records never need resolving later in it
    open_error_stages: set[str] | None = None
    started: float = field(default_factory=time.monotonic)


def _is_removal(rec: dict[str, Any], deleted_flag: bool, status_field: str | None) -> bool:
    return deleted_flag or bool(status_field and rec.get(status_field) == "Delete")


@dataclass
class MappedBatch:
    """One batch of landed records, mapped and sorted into what to write."""

    last_key: str
    good: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    warned: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    max_modified: datetime | None = None


def map_batch(ctx: SyncContext, mapper: Mapper, batch: list[tuple[str, dict[str, Any], bool]]) -> MappedBatch:
    """Map and validate one batch (pure Python: no database)."""
    out = MappedBatch(last_key=batch[-1][0])
    status_field = ctx.provider.roles().status
    for key, rec, deleted in batch:
        if _is_removal(rec, deleted, status_field):
            out.removals.append(key)
            continue
        m = mapper.map(rec)
        if m.row is None:
            out.rejected.append((key, m.rejected or "rejected", rec))
            continue
        out.good.append((m.row, m.row_hash or ""))
        if m.warnings:
            out.warned.append((key, "; ".join(m.warnings), rec))
        mod = m.row.get("mls_modified_at")
        if mod and (out.max_modified is None or mod > out.max_modified):
            out.max_modified = mod
    return out


def write_batch(ctx: SyncContext, plan: dict[str, Any], mb: MappedBatch, acc: LoadProgress,
                turn: Turn | None = None) -> None:
    """Write one mapped batch and its checkpoint in one transaction (or preview it on a dry run).

    With a `turn` (transform_load's parallel writers), the rows are written while the batch
    before is still being written, and the checkpoint, counts and `acc` wait for it: batches commit
    in key order. Batches hold disjoint listings, so the two transactions never wait on each
    other's rows; the shared rows (history, status) are only touched after the turn.
    """
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    good, removals, rejected, warned = mb.good, mb.removals, mb.rejected, mb.warned
    counts: dict[str, int] = {}
    preview: dict[str, list[str]] | None = None
    with ctx.db.begin() as c:
        if plan["dry_run"]:
            preview = prop_store.preview_rows(c, t, p.provider_id, good)
            gone = prop_store.remove_listings(c, t, p.provider_id, removals, "removed by the MLS",
                                              p.conflicts.policy, sid, dry_run=True)
            counts = {"added": len(preview["add"]), "updated": len(preview["update"]),
                      "unchanged": len(preview["unchanged"]), "conflicted": len(preview["conflict"]) +
                      gone["conflicted"], "deleted": gone["deleted"], "failed": len(rejected)}
        else:
            commit_without_flush(c)
            res = prop_store.upsert_rows(c, t, p.provider_id, p.conflicts.policy, good, sid)
            gone = prop_store.remove_listings(c, t, p.provider_id, removals, "removed by the MLS",
                                              p.conflicts.policy, sid)
            counts = {"added": res.added, "updated": res.updated, "unchanged": res.unchanged,
                      "conflicted": res.conflicts + gone["conflicted"], "deleted": gone["deleted"],
                      "failed": len(rejected)}
            for key, reason, rec in rejected:
                err_store.record_error(c, t, provider_id=p.provider_id, stage="transform", category="data",
                                       ref=key, message=reason, payload=rec, sync_id=sid,
                                       max_attempts=p.retry.record_max_attempts,
                                       base_minutes=p.retry.record_retry_base_minutes)
            for key, reason, rec in warned:
                err_store.record_error(c, t, provider_id=p.provider_id, stage="transform_warning",
                                       category="data", ref=key, message=reason, payload=rec, sync_id=sid,
                                       max_attempts=1)
            open_stages = acc.open_error_stages
            if open_stages is None:  # two writers may both look: they see the same rows
                open_stages = acc.open_error_stages = err_store.open_stages(c, t, p.provider_id)
            ok_keys = [r["listing_key"] for r, _ in good]
            if "transform" in open_stages:
                err_store.resolve(c, t, p.provider_id, "transform", ok_keys)
            if "transform_warning" in open_stages:
                warned_keys = {k for k, _, _ in warned}
                err_store.resolve(c, t, p.provider_id, "transform_warning",
                                  [k for k in ok_keys if k not in warned_keys])
        if turn is not None:
            turn.wait()
        # in order from here: the checkpoint and what the run has done so far
        if mb.max_modified is not None and (acc.max_modified is None or mb.max_modified > acc.max_modified):
            acc.max_modified = mb.max_modified
        if preview is not None:
            if acc.preview is None:
                acc.preview = {"add": [], "update": [], "conflict": [], "delete": []}
            sample = acc.preview
            for kind, keys in (("add", preview["add"]), ("update", preview["update"]),
                               ("conflict", preview["conflict"]), ("delete", removals)):
                sample[kind].extend(keys[: max(0, 50 - len(sample[kind]))])
        state: dict[str, Any] = {"transform_after": mb.last_key} if acc.stage == "transform_load" else {}
        if acc.max_modified is not None:
            state["max_modified"] = acc.max_modified.isoformat()
        runs.add_counts(c, t, sid, counts, stage_state=state)
        acc.processed += len(good) + len(removals) + len(rejected)
        progress(c, ctx, plan, acc.stage, {"records": acc.processed})
    for k, v in counts.items():
        acc.counts[k] = acc.counts.get(k, 0) + v
    log.info("%s: batch to key %s: %s; %d records so far (%s)", acc.stage, mb.last_key,
             ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing to write", acc.processed,
             rate(acc.processed, acc.started))


def load_records(ctx: SyncContext, plan: dict[str, Any], mapper: Mapper,
                 batch: list[tuple[str, dict[str, Any], bool]], acc: LoadProgress) -> None:
    """Map, validate and write one batch in one transaction."""
    write_batch(ctx, plan, map_batch(ctx, mapper, batch), acc)


def transform_load(ctx: SyncContext, plan: dict[str, Any]) -> dict[str, Any]:
    """Map the run's landed records and upsert them 1,000 per statement; resumable by key."""
    sid = plan["sync_id"]
    with _stage(ctx, plan, "transform_load") as extra, prompt_handoffs(), \
            Writer("transform-write", WRITERS) as writer:
        with ctx.db.connect() as c:
            run = runs.get_run(c, ctx.t, sid)
        require_fetched(run)
        state = run.get("stage_state") or {}
        acc = LoadProgress(max_modified=_dt(state.get("max_modified")))
        mapper = mapper_for_run(ctx, run)
        # PostgreSQL writes batches N-1 and N on two connections while this thread reads and maps
        # batch N+1; checkpoints commit in key order. (Reading in a third thread as well measured
        # no faster on two cores.)
        for batch in raw_store.iter_run(ctx.db, ctx.t, ctx.provider.provider_id, sid,
                                        after_key=state.get("transform_after"), batch=LOAD_BATCH):
            writer.submit(write_batch, ctx, plan, map_batch(ctx, mapper, batch), acc)
        writer.wait()
        if plan["dry_run"] and acc.preview:
            extra["dry_run_preview"] = acc.preview
    log.info("transform_load: sync %s processed %d records (%s): %s", sid, acc.processed,
             rate(acc.processed, acc.started), acc.counts)
    return {"processed": acc.processed, **acc.counts}


# ---------------------------------------------------------------- reconcile

def reconcile(ctx: SyncContext, plan: dict[str, Any]) -> dict[str, Any]:
    """On full syncs and key reconciliations, find listings that left the scope or the MLS.

    A listing we hold in scope (the full sync's statuses) that the MLS did not list is asked for
    by key: if the MLS still has it, its new status is loaded (Closed, Withdrawn...); if not, it
    was deleted and is soft-deleted, or becomes a conflict when it carries local edits. What the
    run found and repaired is its drift (report.reconcile), kept on the provider when it succeeds.
    """
    if plan["mode"] not in ("full", "reconcile"):
        return {"checked": 0, "deleted": 0, "refreshed": 0}
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    with _stage(ctx, plan, "reconcile") as extra:
        with ctx.db.connect() as c:
            run = runs.get_run(c, t, sid)
            require_fetched(run)
            if plan["mode"] == "full":
                missing = _held_not_fetched(c, ctx, sid)
                found = {"mls_count": raw_store.count_run(c, t, p.provider_id, sid)}
            else:
                missing = keylist.gone(c, t, p.provider_id, sid, p.full_sync_statuses)
                found = dict(((run.get("stage_state") or {}).get("keys") or {}).get("found") or {})
        out = {"checked": len(missing), "deleted": 0, "refreshed": 0, "conflicted": 0}
        if missing:
            out.update(_refresh_or_remove(ctx, plan, run, missing, extra))
        with ctx.db.connect() as c:
            after = keylist.in_scope(c, t, p.provider_id, p.full_sync_statuses)
        from mls_sync.reconciliation import drift

        extra["reconcile"] = drift(found, len(missing), out["deleted"], out["refreshed"], out["conflicted"], after)
    log.info("reconcile: sync %s %s", sid, extra["reconcile"])
    return {**out, "drift": extra["reconcile"]["drift"]}


def _held_not_fetched(c: sa.Connection, ctx: SyncContext, sid: int) -> list[str]:
    """Keys we hold in scope minus the keys this full sync fetched, as a set difference (EXCEPT): a
    full sync has just (re)written most of both tables, and without fresh statistics the planner
    ran the same question as an anti-join by nested loop, quadratic in listings (minutes at 100k).
    EXCEPT has no such plan, so it needs no ANALYZE first: 10k listings 8 ms instead of 25 with the
    ANALYZE, 100k 0.1 s instead of 0.24."""
    p, pr, rr = ctx.provider, ctx.t.properties, ctx.t.mls_raw_records
    held = sa.select(pr.c.listing_key).where(pr.c.provider_id == p.provider_id, pr.c.deleted_at.is_(None),
                                             pr.c.status.in_(list(p.full_sync_statuses)))
    fetched = sa.select(rr.c.listing_key).where(rr.c.provider_id == p.provider_id, rr.c.sync_id == sid)
    return sorted(c.execute(sa.except_(held, fetched)).scalars())


def _refresh_or_remove(ctx: SyncContext, plan: dict[str, Any], run: dict[str, Any], missing: list[str],
                       extra: dict[str, Any]) -> dict[str, int]:
    """Ask the MLS for these keys: load what it still has, remove what it does not."""
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    mapper = mapper_for_run(ctx, run)
    # continue transform_load's watermark: the refreshed listings add to it, never replace it
    acc = LoadProgress(stage="reconcile", max_modified=_dt((run.get("stage_state") or {}).get("max_modified")))
    key_field = p.roles().key
    extra["request"] = {"search": "listing keys held in scope that the MLS did not list", "keys": len(missing)}
    found: set[str] = set()
    with ctx.source() as source, counted_requests(ctx, plan, source):
        for page in pages_for_keys(source, missing):
            batch = []
            for rec in page.records:
                k = _key_of(key_field, rec)
                if k:
                    found.add(k)
                    batch.append((k, rec, raw_store.is_deleted(rec)))
            if batch:
                with ctx.db.begin() as c:
                    raw_store.land(c, t, p.provider_id, sid, [(k, r) for k, r, _ in batch])
                load_records(ctx, plan, mapper, batch, acc)
    vanished = [k for k in missing if k not in found]
    reason = "not in the MLS (full sync)" if plan["mode"] == "full" else "not in the MLS (key reconciliation)"
    with ctx.db.begin() as c:
        gone = prop_store.remove_listings(c, t, p.provider_id, vanished, reason, p.conflicts.policy, sid,
                                          dry_run=plan["dry_run"])
        runs.add_counts(c, t, sid, {"deleted": gone["deleted"], "conflicted": gone["conflicted"]})
    return {"deleted": gone["deleted"] + acc.counts.get("deleted", 0), "refreshed": len(found),
            "conflicted": gone["conflicted"] + acc.counts.get("conflicted", 0)}


# ---------------------------------------------------------------- finalize

def finalize(ctx: SyncContext, plan: dict[str, Any] | None, failed_tasks: list[str] | None = None,
             *, cancelled: bool = False) -> dict[str, Any]:
    """Close the run whatever happened upstream and give its lease back; the watermark moves only
    past stored records.

    Success needs every upstream task to have succeeded and the run's fetch and load to have
    finished (a sync that cannot prove it read everything is failed). A run closed already (an
    earlier finalize, or the run that took over its abandoned lease) is reported as it was closed.
    A failed run's summary names the failed tasks and each recorded cause.
    """
    if not plan:
        return {"state": "failed", "error_summary": "plan did not run"}
    p, t, sid = ctx.provider, ctx.t, plan["sync_id"]
    failed_tasks = list(failed_tasks or [])
    with ctx.db.begin() as c:
        runs.lock_status(c, t, p.provider_id)
        run = runs.get_run(c, t, sid)
        held = leases.get(c, t, sid)
        if held is None and run["state"] != "running":
            return _result(p, run, run["state"], run["error_summary"], int(run["status_changes"]))
        other = leases.writer_of(c, t, p.provider_id)
        sh = t.property_status_history
        status_changes = c.execute(sa.select(sa.func.count()).select_from(sh).where(
            sh.c.provider_id == p.provider_id, sh.c.sync_id == sid)).scalar_one()
        runs.update_history(c, t, sid, status_changes=status_changes)
        unfinished = [] if cancelled or failed_tasks else _unfinished(run)
        state = "cancelled" if cancelled else ("failed" if failed_tasks or unfinished else "success")
        summary = _failure_summary(run, failed_tasks, unfinished) if state == "failed" else None
        if cancelled:
            summary = "cancelled by an operator"
        max_mod = _dt((run.get("stage_state") or {}).get("max_modified"))
        move = state == "success" and not run["dry_run"] and run["mode"] in ("full", "incremental", "reconcile")
        if state == "success" and not run["dry_run"]:
            err_store.resolve_run_failures(c, t, p.provider_id)
        closed = runs.close_run(c, t, sid, state=state, error_summary=summary, watermark_after=max_mod,
                                move_watermark=move,
                                unresolved_errors=err_store.unresolved_count(c, t, p.provider_id),
                                touch_status=not run["dry_run"] and (other is None or other["sync_id"] == sid))
        figures = (run.get("report") or {}).get("reconcile")
        if move and figures and run["mode"] in ("full", "reconcile"):
            runs.note_reconciled(c, t, p.provider_id, {"sync_id": sid, "mode": run["mode"], **figures})
        leases.release(c, t, sid)
    result = _result(p, closed, state, summary, int(status_changes))
    if state == "success" and not run["dry_run"]:
        from mls_sync.reconciliation import drift_alert

        alert = drift_alert(p, figures)
        if alert:
            result["alerts"].append(alert)
        if figures:
            result["reconcile"] = figures
    log.info("finalize: %s", result)
    return result


def _unfinished(run: dict[str, Any]) -> list[str]:
    """Stages the run needed that never finished (tasks cleared or skipped, a stage's records gone)."""
    out = [] if run["fetch_cursor"] == FETCH_DONE else ["fetch"]
    if "transform_load" not in (run["stage_timings"] or {}):
        out.append("transform_load")
    return out


def _failure_summary(run: dict[str, Any], failed_tasks: list[str], unfinished: list[str]) -> str:
    """One line for the history, the card and alerts: the first cause as `<task> failed: <error>
    (<category>): <cause>`, then what else failed; without a recorded cause, the failed tasks."""
    cause = runs.first_failure(run, failed_tasks)
    parts = []
    if cause:
        parts.append(f"{cause['task']} failed: {cause['error']} ({cause['category']}): {cause['cause']}"[:1500])
    others = [t for t in failed_tasks if not cause or t != cause["task"]]
    if others:
        parts.append(f"{'also ' if cause else ''}failed tasks: {', '.join(others)}")
    if unfinished:
        parts.append(f"stages that never finished: {', '.join(unfinished)}")
    return "; ".join(parts) or "failed"


def _result(p: ProviderConfig, closed: dict[str, Any], state: str, summary: str | None,
            status_changes: int) -> dict[str, Any]:
    fetched = max(int(closed["records_fetched"]), 1)
    error_rate = closed["failed"] / fetched
    result = {
        "sync_id": closed["id"], "provider_id": p.provider_id, "state": state, "mode": closed["mode"],
        "dry_run": closed["dry_run"], "duration_seconds": round(closed["duration_seconds"] or 0.0, 2),
        "error_rate": round(error_rate, 4), "error_summary": summary,
        **{k: int(closed[k]) for k in runs.COUNT_COLUMNS}, "status_changes": int(status_changes),
        "roster": reports.roster_counts(closed),
        "alerts": [], "failure": runs.first_failure(closed) if state == "failed" else None,
    }
    # a failed run's alert is the failure itself (sent once per run by the caller)
    if state == "success" and error_rate > p.alerts.max_error_rate and closed["records_fetched"]:
        result["alerts"].append(f"error rate {error_rate:.1%} above {p.alerts.max_error_rate:.0%}")
    if state == "success" and (closed["duration_seconds"] or 0) > p.alerts.max_duration_minutes * 60:
        result["alerts"].append(f"run took {closed['duration_seconds'] / 60:.1f} min, "
                                f"over {p.alerts.max_duration_minutes} min")
    return result


def run_outcome(ctx: SyncContext, dag_id: str, dag_run_id: str) -> dict[str, Any] | None:
    """How an Airflow run's sync ended: state, summary and first cause (None: it never opened)."""
    h = ctx.t.mls_sync_history
    with ctx.db.connect() as c:
        row = c.execute(sa.select(h.c.id, h.c.state, h.c.error_summary, h.c.report).where(
            h.c.provider_id == ctx.provider.provider_id, h.c.dag_id == dag_id,
            h.c.dag_run_id == dag_run_id)).mappings().first()
    if row is None:
        return None
    return {"sync_id": row["id"], "state": row["state"], "error_summary": row["error_summary"],
            "failure": runs.first_failure(dict(row))}


def mark_cancelled_if_running(ctx: SyncContext, dag_id: str, dag_run_id: str) -> bool:
    """For a run stopped from the UI (finalize never ran): keep the watermark, say cancelled."""
    h = ctx.t.mls_sync_history
    with ctx.db.connect() as c:
        row = c.execute(sa.select(h.c.id, h.c.state).where(
            h.c.provider_id == ctx.provider.provider_id, h.c.dag_id == dag_id,
            h.c.dag_run_id == dag_run_id)).first()
    if row is None or row.state != "running":
        return False
    finalize(ctx, {"sync_id": row.id}, cancelled=True)
    return True


# ---------------------------------------------------------------- status poll

def close_abandoned(ctx: SyncContext) -> list[dict[str, Any]]:
    """Close the provider's abandoned runs as failed (their holder is gone, see `lease`), so no run
    stays `running` for ever even when no new run comes to take the provider over."""
    p = ctx.provider
    with ctx.db.begin() as c:
        runs.ensure_status(c, ctx.t, p.provider_id, p.name, p.protocol, p.enabled)
        runs.lock_status(c, ctx.t, p.provider_id)
        return lease.sweep(c, ctx.t, p)


def status_poll(ctx: SyncContext) -> dict[str, Any]:
    """Apply status changes quickly: ask only for key, status and timestamps changed lately.

    Every few minutes, so it is also where abandoned runs are closed (`close_abandoned`)."""
    p, t = ctx.provider, ctx.t
    roles = p.roles()
    status_cols = {"status", "mls_status", "status_changed_at", "mls_modified_at"}
    wanted = [(name, tg) for name, tg in p.field_items() if tg.column in status_cols]
    select = tuple(dict.fromkeys([roles.key, roles.modified] + [n for n, _ in wanted]))
    abandoned = close_abandoned(ctx)
    with ctx.db.begin() as c:
        status = runs.get_status(c, t, p.provider_id) or {}
    base = status.get("status_watermark") or status.get("watermark")
    if base is None:
        return {"skipped": "no full sync yet", "changed": 0, "abandoned_closed": len(abandoned)}
    since = base - timedelta(minutes=p.overlap_minutes)
    mapper = Mapper(p)
    newest = base
    changed = seen = 0
    pr = t.properties
    with ctx.source() as source:
        mapper.time_zone = mapper.time_zone or parse_time_zone(_source_time_zone(source))
        for page in source.pages(SearchCriteria(modified_since=since, select=select)):
            updates = []
            for rec in page.records:
                key = _key_of(roles.key, rec)
                if not key:
                    continue
                seen += 1
                row = mapper.map_columns(rec, status_cols)
                mod = row.get("mls_modified_at")
                if mod and mod > newest:
                    newest = mod
                st = "Delete" if raw_store.is_deleted(rec) else row.get("status")
                if st in STANDARD_STATUSES:
                    updates.append({"k": key, "st": st, "ms": row.get("mls_status"),
                                    "sc": row.get("status_changed_at"), "act": Mapper.is_active({"status": st})})
            if updates:
                with ctx.db.begin() as c:
                    stmt = pr.update().where(
                        pr.c.provider_id == p.provider_id, pr.c.listing_key == sa.bindparam("k"),
                        pr.c.status.is_distinct_from(sa.bindparam("st"))).values(
                        status=sa.bindparam("st"), is_active=sa.bindparam("act"),
                        status_changed_at=sa.func.coalesce(sa.bindparam("sc", type_=pr.c.status_changed_at.type),
                                                           sa.func.now()),
                        updated_at=sa.func.now())
                    if any(u["ms"] is not None for u in updates):
                        stmt = stmt.values(mls_status=sa.bindparam("ms"))
                    res = c.execute(stmt, updates)
                    changed += res.rowcount or 0
    with ctx.db.begin() as c:
        archived = c.execute(pr.update().where(
            pr.c.provider_id == p.provider_id, pr.c.is_active.is_(False), pr.c.archived_at.is_(None),
            pr.c.deleted_at.is_(None),
            sa.func.coalesce(pr.c.status_changed_at, pr.c.updated_at)
            < sa.func.now() - sa.func.make_interval(0, 0, 0, p.status_poll.archive_after_days)
        ).values(archived_at=sa.func.now())).rowcount or 0
        s = t.mls_sync_status
        c.execute(s.update().where(s.c.provider_id == p.provider_id).values(
            status_watermark=sa.func.greatest(s.c.status_watermark, newest), updated_at=sa.func.now()))
    out = {"seen": seen, "changed": changed, "archived": archived, "since": _iso(since),
           "abandoned_closed": len(abandoned)}
    log.info("status poll %s: %s", p.provider_id, out)
    return out


def utcnow() -> datetime:
    return datetime.now(UTC)


def stale_alert_due(ctx: SyncContext) -> str | None:
    """'No successful sync for N hours' once per staleness period, not on every poll."""
    p, s = ctx.provider, ctx.t.mls_sync_status
    hours = p.alerts.stale_after_hours
    with ctx.db.begin() as c:
        row = c.execute(sa.select(s.c.last_success_at, s.c.last_stale_alert_at, s.c.state).where(
            s.c.provider_id == p.provider_id)).first()
        if row is None or row.state == "disabled":
            return None
        now = utcnow()
        last = row.last_success_at
        if last is not None and now - last < timedelta(hours=hours):
            return None
        if row.last_stale_alert_at is not None and now - row.last_stale_alert_at < timedelta(hours=hours):
            return None
        c.execute(s.update().where(s.c.provider_id == p.provider_id).values(last_stale_alert_at=now))
    since = f"since {last.isoformat(timespec='minutes')}" if last else "ever"
    return f"no successful sync for {hours} hours (last success {since})"


def overdue_alerts_due(ctx: SyncContext) -> list[str]:
    """Runs still going past the YAML's max duration, each reported once.

    Checked by the frequent status poll rather than an Airflow DeadlineAlert: the alert must fire
    while the run is stuck, and must not depend on the triggerer being deployed.
    """
    p, h = ctx.provider, ctx.t.mls_sync_history
    limit = timedelta(minutes=p.alerts.max_duration_minutes)
    out: list[str] = []
    with ctx.db.begin() as c:
        rows = c.execute(sa.select(h.c.id, h.c.dag_run_id, h.c.started_at, h.c.report).where(
            h.c.provider_id == p.provider_id, h.c.state == "running", h.c.mode != "status",
            h.c.started_at < sa.func.now() - limit)).all()
        for row in rows:
            if (row.report or {}).get("overdue_alerted"):
                continue
            runs.merge_into(c, ctx.t, row.id, "report", {"overdue_alerted": True})
            minutes = (utcnow() - row.started_at).total_seconds() / 60
            out.append(f"run {row.dag_run_id} has been running {minutes:.0f} min, "
                       f"over the {p.alerts.max_duration_minutes} min limit")
    return out
