"""The field contract of docs/FIELDS.md as data: one table drives SQLite, RETS metadata and OData.

Keeping every protocol's view of a field in one row is what keeps RETS system names, RESO names,
lookups and SQL columns from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One listing field: its RESO name (also the SQLite column) and how RETS describes it."""

    reso: str
    system: str | None  # RETS SystemName; None = RESO only
    data_type: str  # RETS DataType: Character, Int, Decimal, Date, DateTime, Boolean
    max_length: int = 0
    precision: int = 0
    lookup: str | None = None
    multi: bool = False
    long_name: str = ""
    standard_name: str | None = None  # RETS StandardName when it differs from the RESO name

    @property
    def interpretation(self) -> str:
        if self.lookup:
            return "LookupMulti" if self.multi else "Lookup"
        if self.reso == "ListPrice":
            return "Currency"
        return "Number" if self.data_type in ("Int", "Decimal") else ""

    @property
    def rets_standard_name(self) -> str:
        return self.standard_name or self.reso


F = Field
FIELDS: tuple[Field, ...] = (
    F("ListingKey", "LIST_1", "Character", 20, long_name="Listing Key"),
    F("ListingId", "LIST_105", "Character", 15, long_name="MLS Number"),
    F("ListPrice", "LIST_22", "Decimal", 14, 2, long_name="List Price"),
    F("StandardStatus", None, "Character", 30),
    F("MlsStatus", "LIST_15", "Character", 3, lookup="ListingStatus", long_name="Status"),
    F("UnparsedAddress", "LIST_30", "Character", 120, long_name="Address"),
    F("StreetNumber", "LIST_31", "Character", 10, long_name="Street Number"),
    F("StreetName", "LIST_34", "Character", 60, long_name="Street Name"),
    F("City", "LIST_39", "Character", 50, long_name="City"),
    F("StateOrProvince", "LIST_40", "Character", 2, lookup="State", long_name="State"),
    F("PostalCode", "LIST_43", "Character", 10, long_name="Zip Code"),
    F("PropertyType", "LIST_8", "Character", 3, lookup="PropertyType", long_name="Property Type"),
    F("BedroomsTotal", "LIST_66", "Int", 3, long_name="Bedrooms"),
    F("BathroomsTotalInteger", "LIST_67", "Int", 3, long_name="Total Baths"),
    F("LivingArea", "LIST_48", "Int", 8, long_name="Approx SqFt"),
    F("YearBuilt", "LIST_53", "Int", 4, long_name="Year Built"),
    F("ListingContractDate", "LIST_132", "Date", 10, long_name="List Date"),
    F("ModificationTimestamp", "LIST_87", "DateTime", 24, long_name="Last Modified"),
    F("StatusChangeTimestamp", "LIST_88", "DateTime", 24, long_name="Status Change Date"),
    F(
        "PhotosChangeTimestamp",
        "LIST_134",
        "DateTime",
        24,
        long_name="Photo Modified",
        standard_name="PhotoModificationTimestamp",
    ),
    F("PhotosCount", "LIST_133", "Int", 3, long_name="Photo Count"),
    F("InteriorFeatures", "GF20", "Character", 400, lookup="InteriorFeatures", multi=True,
      long_name="Interior Features"),
    F("Appliances", "GF21", "Character", 400, lookup="Appliances", multi=True, long_name="Appliances"),
    F("ParkingFeatures", "GF22", "Character", 400, lookup="ParkingFeatures", multi=True,
      long_name="Parking"),
    F("PublicRemarks", "REMARKS", "Character", 4000, long_name="Public Remarks"),
    F("ListAgentFullName", "LA_NAME", "Character", 80, long_name="List Agent Name"),
    F("ListAgentMlsId", "LA_ID", "Character", 20, long_name="List Agent ID"),
    F("ListOfficeName", "LO_NAME", "Character", 80, long_name="List Office Name"),
    F("ListOfficeMlsId", "LO_ID", "Character", 20, long_name="List Office ID"),
    F("Latitude", "LIST_46", "Decimal", 10, 6, long_name="Latitude"),
    F("Longitude", "LIST_47", "Decimal", 10, 6, long_name="Longitude"),
    F("MlgCanView", None, "Boolean", 1),
)

BY_RESO: dict[str, Field] = {f.reso: f for f in FIELDS}
BY_SYSTEM: dict[str, Field] = {f.system: f for f in FIELDS if f.system}
RETS_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.system)
TIMESTAMP_FIELDS = frozenset(f.reso for f in FIELDS if f.data_type == "DateTime")
# Fields a server answers from its key index (Trestle's "InKeyIndex" fields, plus the roster keys):
# a query selecting only these may be served in larger pages (Settings.key_only_cap).
KEY_INDEX = frozenset({"ListingKey", "ListingKeyNumeric", "ListingId", "ModificationTimestamp", "PhotosChangeTimestamp",
                       "PhotosCount", "PostalCode", "StandardStatus", "MlsStatus", "MlgCanView", "MemberKey",
                       "OfficeKey", "OpenHouseKey"})


def row_cap(default: int | None, key_only_cap: int | None, selected: list[str] | None) -> int | None:
    """The rows one reply may carry: `key_only_cap` when the query selects only key-index fields."""
    if key_only_cap and selected and KEY_INDEX.issuperset(selected):
        return key_only_cap
    return default

# code -> (long value, RESO StandardStatus)
STATUSES: dict[str, tuple[str, str]] = {
    "ACT": ("Active", "Active"),
    "AUC": ("Active Under Contract", "ActiveUnderContract"),
    "CAN": ("Canceled", "Canceled"),
    "CLS": ("Closed", "Closed"),
    "CS": ("Coming Soon", "ComingSoon"),
    "DEL": ("Delete", "Delete"),
    "EXP": ("Expired", "Expired"),
    "HLD": ("Hold", "Hold"),
    "INC": ("Incomplete", "Incomplete"),
    "PND": ("Pending", "Pending"),
    "WDN": ("Withdrawn", "Withdrawn"),
}
STANDARD_TO_CODE = {std: code for code, (_long, std) in STATUSES.items()}

# Lookup name -> {code: long value}. Long values never contain commas (LookupMulti joins by comma).
LOOKUPS: dict[str, dict[str, str]] = {
    "ListingStatus": {code: long for code, (long, _std) in STATUSES.items()},
    "PropertyType": {
        "RES": "Residential",
        "CND": "Condominium",
        "MUL": "Multi-Family",
        "LND": "Land",
        "COM": "Commercial",
        "RNT": "Rental",
    },
    "State": {
        "TX": "Texas", "CO": "Colorado", "GA": "Georgia", "FL": "Florida", "NC": "North Carolina",
        "AZ": "Arizona", "WA": "Washington", "OR": "Oregon", "IL": "Illinois", "TN": "Tennessee",
        "OH": "Ohio", "MN": "Minnesota",
    },
    "InteriorFeatures": {
        "CEILFAN": "Ceiling Fan(s)", "WIC": "Walk-In Closet(s)", "HWOOD": "Hardwood Floors",
        "GRANITE": "Granite Counters", "VAULT": "Vaulted Ceiling(s)", "FPLACE": "Fireplace",
        "PANTRY": "Pantry", "SKYLT": "Skylight(s)", "WETBAR": "Wet Bar", "SMART": "Smart Home",
        "OPEN": "Open Floorplan", "CROWN": "Crown Molding",
    },
    "Appliances": {
        "DW": "Dishwasher", "MW": "Microwave", "REF": "Refrigerator", "GASR": "Gas Range",
        "ELECR": "Electric Range", "DISP": "Disposal", "WASH": "Washer", "DRY": "Dryer",
        "WH": "Water Heater", "WINE": "Wine Refrigerator",
    },
    "ParkingFeatures": {
        "ATT2": "Attached 2 Car Garage", "ATT1": "Attached 1 Car Garage", "DET": "Detached Garage",
        "CARPORT": "Carport", "DRIVE": "Driveway", "STREET": "On Street", "RV": "RV Parking",
        "OPEN": "Open Parking",
    },
}


def decode(field: Field, code: str | None) -> str | None:
    """Lookup code(s) -> long value(s); COMPACT-DECODED and RESO both serve long values."""
    if code is None or not field.lookup:
        return code
    table = LOOKUPS[field.lookup]
    if field.multi:
        return ",".join(table.get(c, c) for c in code.split(",") if c)
    return table.get(code, code)


def encode(field: Field, value: str) -> str:
    """Long value -> code, so RESO filters written with long values hit the stored codes."""
    if not field.lookup:
        return value
    for code, long in LOOKUPS[field.lookup].items():
        if value in (code, long):
            return code
    return value
