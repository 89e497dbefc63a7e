"""The roster stage: members, offices and open houses, beside the listings.

For every resource the provider YAML names (`resources:`), through the same source as the
listings (a view of its session: one login, one rate budget, one request count):

1. walk the resource from its own watermark (everything on a full run or the first time), page by
   page; each page is mapped and upserted in one transaction with the walk's checkpoint, so a
   retried task resumes after the last committed page and writes nothing twice;
2. check the walk against the server's own count (RESO `$count` at the walk's cut), as the
   listings' fetch is: fewer distinct records than the server counts fails the stage with both
   numbers (IncompleteRead) and the resource's watermark stays where it was;
3. on a reconciling run, walk its keys and modification times (checked against the count the same
   way) and fetch by key what is missing here or held with another time; on a full run its own
   whole walk is that list. Rows held that the list lacks are asked for by key, and only those the
   MLS no longer has are soft-deleted: a list cut short deletes nothing it did not see;
4. move the resource's watermark past what was stored, only once the writes committed.

A resource whose read falls short does not stop the others: each is synced, then the stage fails
naming every short one.

What each resource fetched, wrote and deleted is the run's `report.roster`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from mls_sync.config import RosterResource
from mls_sync.mapping import Mapper, parse_time_zone
from mls_sync.sources.base import SearchCriteria, Source
from mls_sync.store import errors as err_store
from mls_sync.store import raw as raw_store
from mls_sync.store import roster as roster_store
from mls_sync.store import runs
from mls_sync.store.db import commit_without_flush
from mls_sync.sync import (
    IncompleteRead,
    RequestMeter,
    SyncContext,
    _dt,
    _key_of,
    _source_time_zone,
    _stage,
    check_count,
    counted_requests,
    pages_for_keys,
    progress,
)

log = logging.getLogger(__name__)
STAGE = "sync_roster"
COUNTS = ("fetched", "added", "updated", "unchanged", "deleted", "failed")


def sync_roster(ctx: SyncContext, plan: dict[str, Any]) -> dict[str, Any]:
    """Sync every resource the YAML names; returns the counts per resource (or why it skipped)."""
    p = ctx.provider
    if not p.resources:
        return {"skipped": "the provider YAML names no resources"}
    if plan.get("dry_run") or plan["mode"] == "partial":
        return {"skipped": f"{'a dry run' if plan.get('dry_run') else 'a partial run'}: the roster syncs on "
                           "full, incremental and reconciling runs"}
    report: dict[str, Any] = {}
    short: list[str] = []
    with _stage(ctx, plan, STAGE) as extra, ctx.source() as source, counted_requests(ctx, plan, source) as meter:
        zone = parse_time_zone(_source_time_zone(source))
        for kind, res in p.resources.items():
            extra["request"] = {"resource": kind, "search": "changes since its watermark"}
            try:
                report[kind] = ResourceSync(ctx, plan, source, kind, res, zone, meter).run(extra)
            except IncompleteRead as exc:  # the others still sync; the stage fails below
                log.error("%s: sync %s: %s", STAGE, plan["sync_id"], exc)
                short.append(str(exc))
        if short:
            extra["request"] = {"search": "the server's count of what the walks read",
                                "resources": [k for k in p.resources if k not in report]}
            raise IncompleteRead("; ".join(short))
        extra["roster"] = report
    log.info("%s: sync %s: %s", STAGE, plan["sync_id"], report)
    return report


@dataclass
class ResourceSync:
    """One resource's walk, reconciliation and watermark within one run."""

    ctx: SyncContext
    plan: dict[str, Any]
    source: Source
    kind: str
    res: RosterResource
    zone: tzinfo | None
    meter: RequestMeter
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    max_modified: datetime | None = None
    walked: set[str] = field(default_factory=set)  # distinct keys the walk read in this process
    walked_before: dict[str, int] = field(default_factory=dict)  # keys, keyless: before a resume
    verified: dict[str, int] | None = None  # the walk's count check, once it passed

    def __post_init__(self) -> None:
        names = self.res.rets_names(self.kind) if self.ctx.provider.protocol == "rets" else (
            self.res.reso_name(self.kind), None)
        self.view = self.source.for_resource(names[0], names[1], self.res.roles())
        self.mapper = Mapper(self.ctx.provider, time_zone=self.zone, items=self.res.field_items())
        self.key_field = self.res.source_fields.key

    @property
    def sid(self) -> int:
        return int(self.plan["sync_id"])

    def run(self, extra: dict[str, Any]) -> dict[str, Any]:
        p, t = self.ctx.provider, self.ctx.t
        with self.ctx.db.begin() as c:
            st = roster_store.state(c, t, p.provider_id, self.kind)
        mine = st["run_state"] if st["run_sync_id"] == self.sid else {}
        if mine.get("done"):
            return dict(mine.get("counts") or {})
        self.counts.update(mine.get("counts") or {})
        self.max_modified = _dt(mine.get("max_modified"))
        watermark = st["watermark"]
        full = self.plan["mode"] == "full" or watermark is None
        since = None if full else watermark - timedelta(minutes=p.overlap_minutes)
        out: dict[str, Any] = {}
        if not mine.get("walked"):
            select = self.res.select_fields() if p.protocol == "reso" and p.reso and p.reso.select_from_mapping else ()
            criteria = SearchCriteria(modified_since=since, select=select)
            last = mine.get("cursor")
            self.walked_before = dict(mine.get("walk") or {})
            extra["request"] = {"resource": self.kind, "modified_since": since.isoformat() if since else None,
                                "resume_from": last}
            for page in self.view.pages(criteria, resume_from=last):
                self.write(page.records, {"cursor": page.cursor}, walking=True)
                last = page.cursor
            extra["request"] = {"resource": self.kind, "search": "the server's count of what the walk read"}
            self.verified = self.verify(criteria, last, self._walk_figures(), "walk")
            self.write([], self._walked())
        else:
            self.verified = mine.get("read_verified")
        if self.verified:
            out["read_verified"] = self.verified
        reconciled = self.plan["mode"] in ("full", "reconcile")
        if reconciled:
            # a full walk this process read whole already lists every key: no second walk for them
            whole = full and not mine and self.plan["mode"] == "full"
            extra["request"] = {"resource": self.kind,
                                "search": "keys held but not walked" if whole else "keys and modification times"}
            out["reconcile"] = self.reconcile(self.walked if whole else None)
        with self.ctx.db.begin() as c:
            out.update(self.counts, mode="full" if full else "incremental", since=since.isoformat() if since else None,
                       store_count=roster_store.count_live(c, t, p.provider_id, self.kind), sync_id=self.sid)
            roster_store.finish(c, t, p.provider_id, self.kind, self.sid, self.max_modified, out, reconciled)
        log.info("%s: %s %s", STAGE, self.kind, out)
        return out

    def _walk_figures(self) -> dict[str, int]:
        """Distinct keys and keyless records the walk read, a resumed task's earlier pages included
        (a keyset walk resumed past its cursor reads none of those again)."""
        return {"keys": self.walked_before.get("keys", 0) + len(self.walked),
                "keyless": self.walked_before.get("keyless", 0)}

    def verify(self, criteria: SearchCriteria, cursor: dict[str, Any] | None, read: dict[str, int],
               walk: str) -> dict[str, int] | None:
        """A walk's distinct records against the server's count at its cut (IncompleteRead if short)."""
        return check_count(self.view, criteria, cursor, lambda: read["keys"], read["keyless"],
                           f"the {self.kind} {walk}", f"{self.kind} records")

    def _walked(self) -> dict[str, Any]:
        """The checkpoint once the walk is written (and checked)."""
        return {"walked": True, "read_verified": self.verified} if self.verified else {"walked": True}

    def write(self, records: list[dict[str, Any]], state: dict[str, Any], walking: bool = False) -> None:
        """Map and write one page, with its checkpoint, in one transaction; `walking`: a page of
        the walk whose distinct keys are checked against the server's count."""
        p, t = self.ctx.provider, self.ctx.t
        rows, removals, rejected, keyless = [], [], [], 0
        for rec in records:
            key = _key_of(self.key_field, rec)
            if key is None:
                keyless += 1
                rejected.append((f"keyless:{self.sid}", f"a {self.kind} record without {self.key_field}", rec))
                continue
            if walking:
                self.walked.add(key)
            if raw_store.is_deleted(rec):
                removals.append(key)
                continue
            m = self.mapper.map(rec)
            if m.row is None:
                rejected.append((key, m.rejected or "rejected", rec))
                continue
            rows.append((m.row, m.row_hash or "", rec))
            mod = m.row.get("mls_modified_at")
            if mod and (self.max_modified is None or mod > self.max_modified):
                self.max_modified = mod
        with self.ctx.db.begin() as c:
            commit_without_flush(c)
            written = roster_store.upsert(c, t, p.provider_id, self.kind, rows, self.sid)
            deleted = roster_store.mark_deleted(c, t, p.provider_id, self.kind, removals, self.sid)
            for key, reason, rec in rejected:
                err_store.record_error(c, t, provider_id=p.provider_id, stage=STAGE, category="data",
                                       ref=f"{self.kind}:{key}", message=f"{self.kind} {key}: {reason}",
                                       payload=rec, sync_id=self.sid, max_attempts=1)
            if rows:
                err_store.resolve(c, t, p.provider_id, STAGE,
                                  [f"{self.kind}:{r[roster_store.key_column(self.kind)]}" for r, _, _ in rows])
            for k, v in (("fetched", len(records)), ("deleted", deleted), ("failed", len(rejected)),
                         *written.items()):
                self.counts[k] += v
            if walking:
                self.walked_before["keyless"] = self.walked_before.get("keyless", 0) + keyless
                state = {**state, "walk": self._walk_figures()}
            checkpoint = {**state, "counts": self.counts,
                          "max_modified": self.max_modified.isoformat() if self.max_modified else None}
            roster_store.checkpoint(c, t, p.provider_id, self.kind, self.sid, checkpoint)
            runs.add_counts(c, t, self.sid, {"requests": self.meter.take()})
            progress(c, self.ctx, self.plan, STAGE, {"resource": self.kind, "records": self.counts["fetched"]})
        if keyless:
            log.warning("%s: %d %s record(s) without %s (rejected)", STAGE, keyless, self.kind, self.key_field)

    def reconcile(self, walked: set[str] | None) -> dict[str, int]:
        """The MLS's keys and times against the table: fetch what is missing or stale, delete what
        is gone. `walked`: every key a whole (full) walk just read and wrote, which stands for the
        key walk. Rows the list lacks are asked for by key before they are deleted, as listings are:
        a key list cut short (a server capping rows without saying so) deletes nothing it missed."""
        p, t = self.ctx.provider, self.ctx.t
        with self.ctx.db.connect() as c:
            held = roster_store.live(c, t, p.provider_id, self.kind)
        if walked is not None:
            listed = dict.fromkeys(walked)
            missing: list[str] = []
            stale: list[str] = []
        else:
            listed = self._key_walk()
            missing = sorted(k for k in listed if k not in held)
            stale = sorted(k for k in listed if k in held and held[k] != listed[k])
        candidates = sorted(k for k in held if k not in listed)
        self._refetch(missing + stale)
        still = self._refetch(candidates)
        gone = [k for k in candidates if k not in still]
        with self.ctx.db.begin() as c:
            deleted = roster_store.mark_deleted(c, t, p.provider_id, self.kind, gone, self.sid)
            runs.add_counts(c, t, self.sid, {"requests": self.meter.take()})
        self.counts["deleted"] += deleted
        return {"mls_count": len(listed) + len(still), "store_count_before": len(held), "missing": len(missing),
                "stale": len(stale), "gone": len(gone), "refreshed": len(still)}

    def _key_walk(self) -> dict[str, Any]:
        """key -> modification time of every live record the MLS lists, checked against its count."""
        roles = self.res.roles()
        modified_of = self.mapper.column_reader("mls_modified_at")
        listed: dict[str, Any] = {}
        criteria = SearchCriteria(select=(roles.key, roles.modified))
        read, keyless, last = set(), 0, None
        for page in self.view.pages(criteria):
            for rec in page.records:
                key = _key_of(roles.key, rec)
                keyless += key is None
                if key:
                    read.add(key)
                if key and not raw_store.is_deleted(rec):
                    listed[key] = modified_of(rec)
            last = page.cursor
        self.verify(criteria, last, {"keys": len(read), "keyless": keyless}, "key walk")
        return listed

    def _refetch(self, keys: list[str]) -> set[str]:
        """Fetch these keys and write what comes back; returns the keys the MLS still has live."""
        live: set[str] = set()
        for page in pages_for_keys(self.view, keys):
            self.write(page.records, self._walked())
            live.update(k for rec in page.records
                        if (k := _key_of(self.key_field, rec)) and not raw_store.is_deleted(rec))
        return live

