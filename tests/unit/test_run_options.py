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
