"""Operator decisions on open `property_conflicts`: keep local, take the MLS, or choose per field.

A decision is applied to `properties` and recorded on the conflict (who, when, what) in one
transaction, so the listing and the audit trail never disagree. Local edits that are kept learn
the new MLS value, so the next sync does not raise the same conflict again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mls_sync.columns import ACTIVE_STATUSES, EDITABLE_COLUMNS
from mls_sync.store.properties import clear_local_edit, coerce_value
from mls_sync.store.tables import Tables

DECISIONS = ("local", "mls", "per_field")
CHOICES = ("local", "mls")


class ConflictDecisionError(ValueError):
    """The decision does not fit the conflict (unknown choice, missing field, wrong kind)."""


class ConflictClosedError(RuntimeError):
    """The conflict was already resolved, by someone else or by the provider's policy."""


def _choices(conflict: dict[str, Any], decision: str, fields: Mapping[str, str] | None) -> dict[str, str]:
    columns = sorted((conflict.get("fields") or {}).keys())
    if decision not in DECISIONS:
        raise ConflictDecisionError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision != "per_field":
        return dict.fromkeys(columns, decision)
    if conflict["kind"] == "deleted_in_mls":
        raise ConflictDecisionError("a listing deleted in the MLS is kept or deleted as a whole; "
                                    "choose keep local or take MLS")
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(columns))
    missing = sorted(set(columns) - set(fields))
    if unknown or missing:
        raise ConflictDecisionError(f"per-field decision must cover exactly {columns}; "
                                    f"unknown {unknown}, missing {missing}")
    bad = {k: v for k, v in fields.items() if v not in CHOICES}
    if bad:
        raise ConflictDecisionError(f"each field takes 'local' or 'mls'; got {bad}")
    return fields


def _apply_field_changes(conn: Connection, t: Tables, conflict: dict[str, Any], choices: dict[str, str],
                         by: str, now: datetime) -> dict[str, Any]:
    """Write the chosen value of each field; kept local edits remember the new MLS value."""
    p = t.properties
    pid, key = conflict["provider_id"], conflict["listing_key"]
    mls_cols = [c for c, ch in choices.items() if ch == "mls"]
    if mls_cols:  # drops those edits and marks the row for a rewrite on the next sync
        clear_local_edit(conn, t, pid, key, mls_cols, restore_mls=False)
    cur = conn.execute(sa.select(p.c.id, p.c.local_edits).where(
        p.c.provider_id == pid, p.c.listing_key == key).with_for_update()).first()
    if cur is None:
        raise LookupError(f"listing {key!r} of provider {pid!r} no longer exists")
    edits = dict(cur.local_edits or {})
    applied: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for col, choice in choices.items():
        f = conflict["fields"][col]
        value = f.get(choice)
        applied[col] = value
        if col in EDITABLE_COLUMNS:
            values[col] = coerce_value(col, value)
        if choice == "local":
            kept = dict(edits.get(col) or {"value": value, "by": by, "at": now.isoformat()})
            kept["mls_value"] = f.get("mls")
            edits[col] = kept
    values.update(local_edits=edits, updated_at=now)
    if "status" in values:
        values["is_active"] = values["status"] in ACTIVE_STATUSES
    conn.execute(p.update().where(p.c.id == cur.id).values(values))
    return applied


def _apply_deleted(conn: Connection, t: Tables, conflict: dict[str, Any], decision: str, by: str,
                   now: datetime) -> dict[str, Any]:
    """Keep the listing as edited, or accept the MLS deletion: soft-delete and drop the edits."""
    if decision == "local":
        return {"listing": "kept"}
    p = t.properties
    pid, key = conflict["provider_id"], conflict["listing_key"]
    clear_local_edit(conn, t, pid, key, list((conflict.get("fields") or {}).keys()), restore_mls=True)
    done = conn.execute(p.update().where(p.c.provider_id == pid, p.c.listing_key == key).values(
        deleted_at=sa.func.coalesce(p.c.deleted_at, now), is_active=False,
        deleted_reason=f"removed by the MLS; local edits dropped by {by}", updated_at=now)).rowcount
    if not done:
        raise LookupError(f"listing {key!r} of provider {pid!r} no longer exists")
    return {"listing": "deleted"}


def resolve(conn: Connection, t: Tables, conflict_id: int, decision: str, by: str,
            fields: Mapping[str, str] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Resolve one open conflict and apply it to the listing; returns the updated conflict row.

    `decision` is local, mls or per_field (then `fields` maps every conflicting column to local or
    mls). Raises ConflictClosedError when it is no longer open, LookupError when it does not exist.
    """
    if not by:
        raise ConflictDecisionError("a resolution must name who made it")
    now = now or datetime.now(UTC)
    c = t.property_conflicts
    row = conn.execute(sa.select(c).where(c.c.id == conflict_id).with_for_update()).mappings().first()
    if row is None:
        raise LookupError(f"no conflict {conflict_id}")
    conflict = dict(row)
    if conflict["state"] != "open":
        raise ConflictClosedError(f"conflict {conflict_id} was already resolved by {conflict['resolved_by']} "
                                  f"at {conflict['resolved_at']:%Y-%m-%d %H:%M} UTC ({conflict['resolution']})")
    choices = _choices(conflict, decision, fields)
    if conflict["kind"] == "deleted_in_mls":
        applied = _apply_deleted(conn, t, conflict, decision, by, now)
    else:
        applied = _apply_field_changes(conn, t, conflict, choices, by, now)
    detail = {"fields": choices, "applied": applied}
    updated = conn.execute(c.update().where(c.c.id == conflict_id).values(
        state="resolved", resolution=decision, resolution_detail=detail, resolved_by=by, resolved_at=now,
    ).returning(*c.c)).mappings().one()
    return dict(updated)
