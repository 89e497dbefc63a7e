"""Provider YAML validation: every shipped YAML loads; every mistake names file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mls_sync.config import ConfigError, find_provider, load_provider, provider_paths

MAPPINGS = Path(__file__).resolve().parents[2] / "include" / "mappings"


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _demo(name: str = "demo_rets") -> dict:
    return yaml.safe_load((MAPPINGS / f"{name}.yaml").read_text())


def test_shipped_providers_load() -> None:
    names = [p.stem for p in provider_paths(MAPPINGS)]
    assert {"demo_rets", "demo_reso"} <= set(names)
    for name in names:
        cfg = load_provider(MAPPINGS / f"{name}.yaml")
        assert cfg.dag_id() == f"mls_sync__{name}"
        assert "listing_key" in [t.column for t in cfg.targets()]


def test_rets_status_map_inverts_for_queries() -> None:
    cfg = find_provider("demo_rets", MAPPINGS)
    assert cfg.source_statuses(["Active", "ActiveUnderContract"]) == ("Active", "Active Under Contract")
    reso = find_provider("demo_reso", MAPPINGS)
    assert reso.source_statuses(["Active"]) == ("Active",)


def test_unknown_key_names_file_key_and_fix(tmp_path: Path) -> None:
    data = _demo()
    data["provider_id"] = "typo"
    data["rets"]["page_sise"] = 100
    with pytest.raises(ConfigError) as exc:
        load_provider(_write(tmp_path, "typo", data))
    msg = str(exc.value)
    assert "typo.yaml" in msg and "rets.page_sise" in msg and "unknown key" in msg


def test_wrong_type_and_unknown_column(tmp_path: Path) -> None:
    data = _demo()
    data["provider_id"] = "badtypes"
    data["limits"]["requests_per_second"] = "fast"
    data["fields"]["LIST_22"] = {"column": "prise", "type": "money"}
    with pytest.raises(ConfigError) as exc:
        load_provider(_write(tmp_path, "badtypes", data))
    msg = str(exc.value)
    assert "limits.requests_per_second" in msg
    assert "unknown column 'prise'" in msg


def test_status_map_must_name_standard_statuses(tmp_path: Path) -> None:
    data = _demo()
    data["provider_id"] = "badstatus"
    data["status_map"]["Sold"] = "Sold"
    with pytest.raises(ConfigError, match="not a RESO StandardStatus"):
        load_provider(_write(tmp_path, "badstatus", data))


def test_provider_id_must_match_file_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must equal the file name"):
        load_provider(_write(tmp_path, "other_name", _demo()))


def test_not_yaml_and_missing_provider(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("provider_id: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_provider(p)
    with pytest.raises(ConfigError, match="known providers: broken"):
        find_provider("nope", tmp_path)


def test_yaml_tags_cannot_run_code(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("provider_id: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_provider(p)


def test_reso_selects_only_mapped_and_role_fields() -> None:
    reso = find_provider("demo_reso", MAPPINGS)
    select = reso.select_fields()
    assert {"ListingKey", "ModificationTimestamp", "ListPrice", "PhotosChangeTimestamp"} <= set(select)
    assert "ListAgentEmail" not in select and len(select) == len(set(select))
    assert find_provider("demo_rets", MAPPINGS).select_fields() == ()  # RETS fetches every field


def test_load_providers_rereads_only_changed_files(tmp_path) -> None:
    """The dashboard lists providers every few seconds: unchanged YAMLs are not parsed again, an
    edited one is, and a broken one comes back as its error instead of hiding the others."""
    from mls_sync.config import load_providers

    src = (MAPPINGS / "demo_reso.yaml").read_text()
    (tmp_path / "demo_reso.yaml").write_text(src)
    (tmp_path / "broken.yaml").write_text("provider_id: [")
    first = load_providers(tmp_path)
    assert load_providers(tmp_path) is first  # nothing changed: the same parsed objects
    [(_, broken), (_, good)] = first
    assert isinstance(broken, ConfigError) and "not valid YAML" in str(broken)
    (tmp_path / "demo_reso.yaml").write_text(src.replace(f"name: {good.name}", "name: Renamed MLS"))
    assert load_providers(tmp_path)[1][1].name == "Renamed MLS"


def test_reso_vendor_options_are_validated(tmp_path: Path) -> None:
    """The options that say how a RESO vendor differs from OData: each wrong value is named."""
    data = _demo("demo_reso")
    data["reso"].update(paging="nextlink", top_is_page_size=True, odata_version="4.0",
                        field_types={"ListingKeyNumeric": "Edm.Int64"}, verify_count=False)
    cfg = load_provider(_write(tmp_path, "demo_reso", data))
    assert cfg.reso.field_types == {"ListingKeyNumeric": "Edm.Int64"} and cfg.reso.top_is_page_size
    for change, problem in (
            ({"field_types": {"ListingKeyNumeric": "Int64"}}, "reso.field_types: Value error, ListingKeyNumeric: "
                                                               "'Int64' is not a type a $filter literal can have"),
            ({"field_types": {"List Key": "Edm.String"}}, "'List Key' is not an OData property name"),
            ({"paging": "keyset"}, "top_is_page_size only applies to paging: nextlink"),
            ({"odata_version": "4"}, "reso.odata_version: Input should be 'auto', '4.0' or '4.01'")):
        bad = _demo("demo_reso")
        bad["reso"].update({"paging": "nextlink", "top_is_page_size": True, **change})
        with pytest.raises(ConfigError, match=r"demo_reso\.yaml") as err:
            load_provider(_write(tmp_path, "demo_reso", bad))
        assert problem in str(err.value)


@pytest.mark.parametrize("storage, says", [
    ({"backend": "s3", "bukket": "photos"}, "unknown object store setting(s) ['bukket']"),
    ({"backend": "s3"}, "'bucket' is missing"),
    ({"backend": "S3", "bucket": "photos"}, "'backend' must be 's3' or 'local'"),
    ({"backend": "s3", "bucket": "photos", "public_base_url": "ftp://cdn"}, "http(s) URL"),
    ({"backend": "local", "root": 7}, "'root' must be a string"),
])
def test_storage_typo_fails_the_yaml_not_the_photos_later(tmp_path: Path, storage: dict, says: str) -> None:
    """A misspelt `storage:` used to import cleanly and fail the media stage after the records loaded."""
    data = _demo()
    data["provider_id"] = "stored"
    data["storage"] = storage
    with pytest.raises(ConfigError) as exc:
        load_provider(_write(tmp_path, "stored", data))
    msg = str(exc.value)
    assert "stored.yaml" in msg and "storage" in msg and says in msg
    data["storage"] = {"backend": "s3", "bucket": "photos", "aws_conn_id": "aws_default"}
    assert load_provider(_write(tmp_path, "stored", data)).storage["bucket"] == "photos"


def _roster(data: dict, **member: object) -> dict:
    data = dict(data)
    data["resources"] = {"member": {"source_fields": {"key": "AG_KEY", "modified": "AG_MODIFIED"},
                                    "fields": {"AG_KEY": {"column": "member_key", "required": True},
                                               "AG_MODIFIED": {"column": "mls_modified_at", "type": "timestamp"}},
                                    **member}}
    return data


def test_shipped_providers_name_the_roster() -> None:
    for name in ("demo_rets", "demo_reso"):
        cfg = find_provider(name, MAPPINGS)
        assert set(cfg.resources) == {"member", "office", "open_house"}
    rets = find_provider("demo_rets", MAPPINGS).resources["open_house"]
    assert rets.rets_names("open_house") == ("OpenHouse", "OpenHouse") and rets.roles().key == "OH_KEY"
    assert find_provider("demo_reso", MAPPINGS).resources["member"].reso_name("member") == "Member"


def test_roster_resource_defaults_to_the_usual_names(tmp_path: Path) -> None:
    data = _roster(_demo())
    data["provider_id"] = "roster_ok"
    cfg = load_provider(_write(tmp_path, "roster_ok", data))
    assert cfg.resources["member"].rets_names("member") == ("Agent", "Agent")
    assert cfg.resources["member"].reso_name("member") == "Member"


def test_roster_mistakes_name_the_key_path(tmp_path: Path) -> None:
    cases = {
        "unknown_kind": (lambda d: {**d, "resources": {"agents": d["resources"]["member"]}},
                         ["resources.agents", "member", "open_house"]),
        "unknown_col": (lambda d: _roster(d, fields={"AG_KEY": {"column": "member_key"},
                                                     "AG_MODIFIED": {"column": "mls_modified_at"},
                                                     "AG_X": {"column": "listing_price"}}),
                        ["resources.member.fields", "unknown column(s) ['listing_price']", "full_name"]),
        "no_key": (lambda d: _roster(d, fields={"AG_MODIFIED": {"column": "mls_modified_at"}}),
                   ["resources.member.fields must map some MLS field to column member_key"]),
        "typo": (lambda d: _roster(d, source_field={"key": "AG_KEY"}),
                 ["resources.member.source_field", "unknown key"]),
    }
    for name, (change, expected) in cases.items():
        data = change(_roster(_demo()))
        data["provider_id"] = name
        with pytest.raises(ConfigError) as exc:
            load_provider(_write(tmp_path, name, data))
        for text in expected:
            assert text in str(exc.value), (name, str(exc.value))
