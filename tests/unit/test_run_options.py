"""Manual-run conf: validated before use, so no value can change a query's meaning."""

from __future__ import annotations

from datetime import UTC

import pytest
from mls_sync.run_options import PARAM_SCHEMAS, RunOptions, RunOptionsError


def test_defaults_and_partial() -> None:
    o = RunOptions.from_conf(None)
    assert o.mode == "auto" and not o.partial and o.include_photos and not o.dry_run
    o = RunOptions.from_conf({"listing_keys": "K1, K2\nK1", "postal_codes": ["78701"], "dry_run": True})
    assert o.listing_keys == ("K1", "K2") and o.partial and o.dry_run


@pytest.mark.parametrize("conf", [
    {"listing_keys": ["x' or 1 eq 1 or ListingKey eq '"]},
    {"listing_keys": ["(LIST_1=*)"]},
    {"postal_codes": ["787|01"]},
    {"cities": ["Austin),(LIST_15=|ACT"]},
    {"mode": "everything"},
    {"unknown": 1},
])
def test_hostile_or_wrong_values_are_refused(conf: dict) -> None:
    with pytest.raises(RunOptionsError, match="invalid run conf"):
        RunOptions.from_conf(conf)


def test_cities_with_apostrophes_are_fine_and_since_gets_utc() -> None:
    o = RunOptions.from_conf({"cities": ["Coeur d'Alene"], "modified_since": "2024-01-01T00:00:00"})
    assert o.cities == ("Coeur d'Alene",)
    assert o.modified_since.tzinfo == UTC


def test_param_schemas_match_the_model() -> None:
    assert set(PARAM_SCHEMAS) == set(RunOptions.model_fields)


@pytest.mark.parametrize("since, why", [
    ("0001-01-01T00:00:00Z", "before 1970"),  # passed, then overflowed in RETS / a 400 from RESO
    ("1969-12-31T23:59:59Z", "before 1970"),
    ("2999-01-01T00:00:00Z", "in the future"),
])
def test_modified_since_out_of_range_is_refused_before_the_run(since: str, why: str) -> None:
    with pytest.raises(RunOptionsError, match=why):
        RunOptions.from_conf({"modified_since": since})


def test_modified_since_is_bounded_by_the_trigger_form_schema_too() -> None:
    """Airflow validates the trigger form and the REST API's conf against the Params' JSON Schema."""
    import jsonschema

    schema = PARAM_SCHEMAS["modified_since"]
    jsonschema.validate("2024-06-01T00:00:00+00:00", schema)
    jsonschema.validate(None, schema)
    for bad in ("0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    RunOptions.from_conf({"modified_since": "1970-01-01T00:00:00Z"})
