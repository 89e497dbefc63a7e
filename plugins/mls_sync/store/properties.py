"""Writing MLS rows into `properties`: batch upsert, change detection, local edits, conflicts.

The upsert is one `INSERT .. ON CONFLICT .. DO UPDATE .. WHERE row_hash changed` per 1,000 rows,
so an unchanged listing costs no write at all. Rows that carry local edits take a slower path
that decides, per edited field, what the provider's conflict policy says.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from mls_sync.columns import ACTIVE_STATUSES, EDITABLE_COLUMNS, MAPPABLE_COLUMNS
from mls_sync.store import bulk
from mls_sync.store.tables import Tables

BATCH = 1000
_NULL_ROW = dict.fromkeys(MAPPABLE_COLUMNS)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (datetime,)):
        return v.isoformat()
    if v is None or isinstance(v, (str, int, float, bool, list)):
        return v
    return str(v)


def _same(a: Any, b: Any) -> bool:
    return _jsonable(a) == _jsonable(b)


@dataclass
class UpsertResult:
    """How many rows the upsert inserted, rewrote and left alone (same hash), and conflicts met."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicts: int = 0


@dataclass
class Conflict:
    listing_key: str
    kind: str
    fields: dict[str, Any]
    resolution: str | None  # None = open (manual policy)


def _resolve_edits(row: dict[str, Any], edits: dict[str, Any], policy: str) -> tuple[dict, Conflict | None]:
    """Apply a provider's policy to one incoming MLS row whose listing has local edits.

    Returns the new local_edits and, when the MLS changed an edited field, the conflict.
    The row is modified in place: edited columns take the value the policy says.
    """
    new_edits: dict[str, Any] = {}
    clashes: dict[str, Any] = {}
    for col, edit in edits.items():
        mls_new = row.get(col)
        mls_before = edit.get("mls_value")
        changed = not _same(mls_new, mls_before)
        if changed:
            clashes[col] = {"local": edit.get("value"), "mls": _jsonable(mls_new), "mls_before": mls_before}
        if changed and policy == "mls_wins":
            continue  # the local edit is dropped; row keeps the MLS value
        kept = dict(edit)
        if changed and policy == "local_wins":
            kept["mls_value"] = _jsonable(mls_new)
        row[col] = edit.get("value")
        new_edits[col] = kept
    if not clashes:
        return new_edits, None
    resolution = {"mls_wins": "mls", "local_wins": "local"}.get(policy)
    return new_edits, Conflict(row["listing_key"], "field_changed", clashes, resolution)


def record_conflict(conn: Connection, t: Tables, provider_id: str, c: Conflict, policy: str,
                    sync_id: int | None) -> None:
    """One open conflict per listing and kind: a newer clash refreshes the open row."""
    now = datetime.now(UTC)
    values = {
        "provider_id": provider_id, "listing_key": c.listing_key, "kind": c.kind,
        "fields": c.fields, "policy": policy, "sync_id": sync_id,
        "state": "open" if c.resolution is None else "resolved",
        "resolution": c.resolution,
        "resolved_by": None if c.resolution is None else f"policy:{policy}",
        "resolved_at": None if c.resolution is None else now,
    }
    if c.resolution is None:
        stmt = pg_insert(t.property_conflicts).values(values).on_conflict_do_update(
            index_elements=["provider_id", "listing_key", "kind"],
            index_where=sa.text("state = 'open'"),
            set_={"fields": values["fields"], "sync_id": sync_id},
        )
        conn.execute(stmt)
    else:
        conn.execute(t.property_conflicts.insert().values(values))


def upsert_rows(conn: Connection, t: Tables, provider_id: str, policy: str,
                rows: Sequence[tuple[dict[str, Any], str]], sync_id: int | None) -> UpsertResult:
    """Upsert (row, row_hash) pairs; returns what was added, updated and left alone."""
    res = UpsertResult()
    if not rows:
        return res
    p = t.properties
    keys = [r["listing_key"] for r, _ in rows]
    edited = dict(conn.execute(
        sa.select(p.c.listing_key, p.c.local_edits).where(
            p.c.provider_id == provider_id, bulk.any_of(p.c.listing_key, keys),
            p.c.local_edits != sa.text("'{}'::jsonb"))
    ).all())
    plain: list[tuple[Any, ...]] = []
    with_edits: list[tuple[Any, ...]] = []
    complete = len(_NULL_ROW)  # a row with this many columns has them all (rows hold no others)
    for row, h in rows:
        tail = (provider_id, h, row.get("status") in ACTIVE_STATUSES, sync_id, sync_id)
        if row["listing_key"] in edited:
            values = _NULL_ROW | row
            new_edits, conflict = _resolve_edits(values, edited[row["listing_key"]], policy)
            if conflict:
                record_conflict(conn, t, provider_id, conflict, policy, sync_id)
                res.conflicts += 1
            with_edits.append((*_wire_values(values), *tail, new_edits))
        else:
            plain.append((*_wire_values(row if len(row) == complete else _NULL_ROW | row), *tail))
    for batch, touch_edits in ((plain, False), (with_edits, True)):
        for i in range(0, len(batch), BATCH):
            chunk = batch[i:i + BATCH]
            added, written = _upsert(conn, p, chunk, touch_edits)
            res.added += added
            res.updated += written - added
            res.unchanged += len(chunk) - written
    return res


# the upsert's columns, in the order `upsert_rows` sends each row's values: the lists last, as
# bulk.array_text gives them
_LIST_COLUMNS = tuple(c for c, kind in MAPPABLE_COLUMNS.items() if kind == "list")
_SCALAR_COLUMNS = tuple(c for c in MAPPABLE_COLUMNS if c not in _LIST_COLUMNS)
_scalar_values = operator.itemgetter(*_SCALAR_COLUMNS)
_list_values = operator.itemgetter(*_LIST_COLUMNS)
_UPSERT_COLUMNS = (*_SCALAR_COLUMNS, *_LIST_COLUMNS, "provider_id", "row_hash", "is_active", "first_sync_id",
                   "last_sync_id")


def _wire_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return (*_scalar_values(row), *map(bulk.array_text, _list_values(row)))


def _upsert(conn: Connection, p: sa.Table, chunk: list[tuple[Any, ...]], touch_edits: bool) -> tuple[int, int]:
    """One INSERT .. SELECT .. ON CONFLICT for the whole chunk, sent as one JSON document;
    returns (rows inserted, rows written)."""
    stmt = _upsert_statement(p, _UPSERT_COLUMNS + ("local_edits",) * touch_edits, touch_edits)
    added, written = conn.execute(stmt, bulk.rows_param(chunk)).one()
    return int(added), int(written)


@functools.lru_cache(maxsize=16)
def _upsert_statement(p: sa.Table, cols: tuple[str, ...], touch_edits: bool) -> sa.Select[Any]:
    # json_rows reads text[] columns as bulk.array_text writes them, and _wire_values converts the
    # "list" columns of columns.py: the two must name the same columns, or lists would be stored
    # as their JSON text. Checked once per statement built, not per batch.
    arrays = tuple(c for c in cols if isinstance(p.c[c].type, ARRAY))
    if arrays != _LIST_COLUMNS:
        raise RuntimeError(f"properties' text[] columns {arrays} are not the 'list' columns of "
                           f"mls_sync/columns.py {_LIST_COLUMNS}: make the migration and columns.py agree")
    src = bulk.json_rows(p, cols)
    stmt = pg_insert(p).from_select(cols, sa.select(*[src.c[c] for c in cols]))
    ex = stmt.excluded
    set_ = {c: ex[c] for c in MAPPABLE_COLUMNS if c != "listing_key"}
    set_.update(row_hash=ex.row_hash, is_active=ex.is_active, last_sync_id=ex.last_sync_id,
                deleted_at=None, deleted_reason=None, archived_at=None, updated_at=sa.func.now())
    changed = p.c.row_hash.is_distinct_from(ex.row_hash) | p.c.deleted_at.isnot(None)
    if touch_edits:
        set_["local_edits"] = ex.local_edits
        changed = changed | (p.c.local_edits != ex.local_edits)
    else:
        # A listing edited locally since we looked takes the careful path next time, not a clobber.
        changed = changed & (p.c.local_edits == sa.text("'{}'::jsonb"))
    stmt = stmt.on_conflict_do_update(constraint="uq_properties_provider_listing", set_=set_, where=changed)
    # counted in the statement: a row per written listing sent back cost the writer more Python
    # than the rest of its batch
    written = stmt.returning(sa.literal_column("(xmax = 0)", sa.Boolean).label("inserted")).cte("written")
    return sa.select(sa.func.count().filter(written.c.inserted), sa.func.count()).select_from(written)


def preview_rows(conn: Connection, t: Tables, provider_id: str,
                 rows: Sequence[tuple[dict[str, Any], str]]) -> dict[str, list[str]]:
    """What `upsert_rows` would do, without writing: for dry runs."""
    p = t.properties
    keys = [r["listing_key"] for r, _ in rows]
    existing = {k: (h, e, d) for k, h, e, d in conn.execute(
        sa.select(p.c.listing_key, p.c.row_hash, p.c.local_edits, p.c.deleted_at).where(
            p.c.provider_id == provider_id, bulk.any_of(p.c.listing_key, keys))).all()}
    out: dict[str, list[str]] = {"add": [], "update": [], "unchanged": [], "conflict": []}
    for row, h in rows:
        k = row["listing_key"]
        if k not in existing:
            out["add"].append(k)
            continue
        old_hash, edits, deleted = existing[k]
        if old_hash == h and deleted is None:
            out["unchanged"].append(k)
            continue
        out["update"].append(k)
        if edits and any(not _same(row.get(c), e.get("mls_value")) for c, e in edits.items()):
            out["conflict"].append(k)
    return out


def remove_listings(conn: Connection, t: Tables, provider_id: str, keys: Iterable[str], reason: str,
                    policy: str, sync_id: int | None, *, dry_run: bool = False) -> dict[str, int]:
    """Listings gone from the MLS: soft-delete, or a conflict when they carry local edits."""
    p = t.properties
    keys = list(keys)
    counts = {"deleted": 0, "conflicted": 0}
    if not keys:
        return counts
    # Already deleted rows are skipped here, not in SQL: `deleted_at IS NULL` lets PostgreSQL pick
    # the partial index of live listings, which it estimates at one row per provider while a full
    # sync is filling a table without statistics; each batch then walked every listing of the
    # provider (55 s a batch at 900,000 listings). Keys alone leave it the unique index.
    rows = conn.execute(sa.select(p.c.listing_key, p.c.local_edits, p.c.deleted_at).where(
        p.c.provider_id == provider_id, bulk.any_of(p.c.listing_key, keys))).all()
    to_delete: list[str] = []
    for key, edits, deleted_at in rows:
        if deleted_at is not None:
            continue
        if edits:
            counts["conflicted"] += 1
            resolution = {"mls_wins": "mls", "local_wins": "local"}.get(policy)
            if not dry_run:
                record_conflict(conn, t, provider_id, Conflict(key, "deleted_in_mls", {
                    c: {"local": e.get("value"), "mls": None, "mls_before": e.get("mls_value")}
                    for c, e in edits.items()}, resolution), policy, sync_id)
            if policy == "mls_wins":
                to_delete.append(key)
        else:
            to_delete.append(key)
    counts["deleted"] = len(to_delete)
    if to_delete and not dry_run:
        conn.execute(p.update().where(p.c.provider_id == provider_id, bulk.any_of(p.c.listing_key, to_delete)).values(
            deleted_at=sa.func.now(), deleted_reason=reason, is_active=False, last_sync_id=sync_id,
            updated_at=sa.func.now()))
    return counts


def edit_property(conn: Connection, t: Tables, provider_id: str, listing_key: str,
                  changes: dict[str, Any], by: str) -> dict[str, Any]:
    """The one way the application edits a synced listing, so syncs can see and respect it.

    Each edited column remembers the MLS value it replaced; a later MLS change to that column is
    then a conflict decided by the provider's policy instead of a silent overwrite.
    """
    bad = set(changes) - EDITABLE_COLUMNS
    if bad:
        raise ValueError(f"columns {sorted(bad)} cannot be edited locally; editable: {sorted(EDITABLE_COLUMNS)}")
    p = t.properties
    cur = conn.execute(sa.select(p).where(p.c.provider_id == provider_id, p.c.listing_key == listing_key)
                       .with_for_update()).mappings().first()
    if cur is None:
        raise LookupError(f"no listing {listing_key!r} for provider {provider_id!r}")
    now = datetime.now(UTC)
    edits = dict(cur["local_edits"] or {})
    for col, value in changes.items():
        before = edits.get(col, {}).get("mls_value", _jsonable(cur[col]))
        edits[col] = {"value": _jsonable(value), "mls_value": before, "by": by, "at": now.isoformat()}
    values = dict(changes, local_edits=edits, local_edited_by=by, local_edited_at=now, updated_at=now)
    if "status" in changes:
        values["is_active"] = changes["status"] in ACTIVE_STATUSES
    conn.execute(p.update().where(p.c.id == cur["id"]).values(values))
    return edits


def clear_local_edit(conn: Connection, t: Tables, provider_id: str, listing_key: str,
                     columns: Iterable[str], *, restore_mls: bool) -> None:
    """Drop local edits for columns, optionally putting the remembered MLS value back."""
    p = t.properties
    cur = conn.execute(sa.select(p.c.id, p.c.local_edits).where(
        p.c.provider_id == provider_id, p.c.listing_key == listing_key).with_for_update()).first()
    if cur is None:
        return
    edits = dict(cur.local_edits or {})
    values: dict[str, Any] = {}
    for col in columns:
        edit = edits.pop(col, None)
        if edit is not None and restore_mls:
            values[col] = coerce_value(col, edit.get("mls_value"))
    values.update(local_edits=edits, updated_at=sa.func.now(),
                  row_hash="")  # force the next sync to rewrite the row from the MLS
    conn.execute(p.update().where(p.c.id == cur.id).values(values))


def coerce_value(col: str, v: Any) -> Any:
    """JSON-stored values back to what the column takes (timestamps come back as text)."""
    if v is None:
        return None
    kind = MAPPABLE_COLUMNS.get(col)
    if kind == "timestamp" and isinstance(v, str):
        return datetime.fromisoformat(v)
    if kind == "list" and isinstance(v, str):
        return json.loads(v)
    return v
