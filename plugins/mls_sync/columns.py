"""The `properties` columns a provider's field map may fill, and the value kind each holds.

One list shared by config validation (a mapping to an unknown column is an error naming it),
the mapper (which normalizer output fits which column) and the store (the upsert's columns).
"""

from __future__ import annotations

# column -> kind; kinds are the normalizer names in mapping.py that produce a fitting value
MAPPABLE_COLUMNS: dict[str, str] = {
    "listing_key": "string",
    "mls_listing_id": "string",
    "status": "status",
    "mls_status": "string",
    "price": "money",
    "address": "string",
    "street_number": "string",
    "street_name": "string",
    "city": "string",
    "state": "string",
    "postal_code": "string",
    "property_type": "string",
    "bedrooms": "int",
    "bathrooms": "decimal",
    "square_feet": "int",
    "year_built": "int",
    "listed_date": "date",
    "mls_modified_at": "timestamp",
    "status_changed_at": "timestamp",
    "photos_changed_at": "timestamp",
    "photos_count": "int",
    "interior_features": "list",
    "appliances": "list",
    "parking_features": "list",
    "public_remarks": "html",
    "list_agent_name": "string",
    "list_agent_mls_id": "string",
    "list_office_name": "string",
    "list_office_mls_id": "string",
    "latitude": "decimal",
    "longitude": "decimal",
}

# Columns a local edit may override (everything descriptive; never keys or MLS bookkeeping).
EDITABLE_COLUMNS: frozenset[str] = frozenset(MAPPABLE_COLUMNS) - {
    "listing_key", "mls_modified_at", "status_changed_at", "photos_changed_at", "photos_count",
}

# StandardStatus values (RESO Data Dictionary) and which count as "on the market".
STANDARD_STATUSES: tuple[str, ...] = (
    "Active", "ActiveUnderContract", "Canceled", "Closed", "ComingSoon", "Delete",
    "Expired", "Hold", "Incomplete", "Pending", "Withdrawn",
)
ACTIVE_STATUSES: frozenset[str] = frozenset({"Active", "ActiveUnderContract", "ComingSoon", "Pending"})


# The roster tables (migration 008) and the columns a provider's `resources:` may fill, per resource:
# column -> kind, the key column first. Every table also has provider_id, raw, row_hash,
# deleted_at, first/last_sync_id and updated_at, which the engine writes itself.
ROSTER_TABLES: dict[str, str] = {"member": "members", "office": "offices", "open_house": "open_houses"}
ROSTER_COLUMNS: dict[str, dict[str, str]] = {
    "member": {"member_key": "string", "member_mls_id": "string", "first_name": "string", "last_name": "string",
               "full_name": "string", "email": "string", "phone": "string", "status": "string",
               "office_key": "string", "office_mls_id": "string", "mls_modified_at": "timestamp"},
    "office": {"office_key": "string", "office_mls_id": "string", "name": "string", "phone": "string",
               "email": "string", "address": "string", "city": "string", "state": "string",
               "postal_code": "string", "status": "string", "mls_modified_at": "timestamp"},
    "open_house": {"open_house_key": "string", "open_house_id": "string", "listing_key": "string",
                   "listing_id": "string", "date": "date", "start_at": "timestamp", "end_at": "timestamp",
                   "status": "string", "type": "string", "remarks": "html", "showing_agent_mls_id": "string",
                   "mls_modified_at": "timestamp"},
}
