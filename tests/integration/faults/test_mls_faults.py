"""The MLS misbehaving: cut-off photo replies, broken bodies, resets, 429 storms, expired sessions,
refused credentials, hostile conf values. Nothing is lost for good, every run-level failure is
one error row with its category, request and cause (no secrets), and the CLI says it in one line."""

from __future__ import annotations

import json

import pytest

from tests.integration.faults.harness import World

pytestmark = pytest.mark.integration
MISSING = "not in the MLS's reply"


def _result(out) -> dict:
    return json.loads(out.stdout.splitlines()[-1])


def test_a_cut_off_getobject_reply_loses_no_photo_for_good(world) -> None:
    """The listings after the cut were recorded as photo-synced with 0 photos, with no error row
    and no retry; now each of their photos is an error row, retried (and stored) by the next run."""
    w: World = world(listings=60, seed=31, photos_per_listing=3)
    w.mls.fault("truncated_body", count=1, path="/rets/getobject")
    first = w.cli("sync", "--provider", "demo_rets")
    assert first.returncode == 0, first.stderr
    w.check("demo_rets", photos=True)  # each photo stored or an error row
    result = _result(first)
    assert result["photos_missing"] >= 6 and result["photos_failed"] >= result["photos_missing"]
    missing = w.rows("SELECT ref, category, next_retry_at <= now() AS due FROM mls_sync_errors "
                     "WHERE stage = 'media' AND resolved_at IS NULL AND message LIKE :m", m=f"%{MISSING}%")
    assert len(missing) == result["photos_missing"]
    assert all(m["category"] == "network" and m["due"] for m in missing)

    second = w.cli("sync", "--provider", "demo_rets")  # nothing changed in the MLS
    assert second.returncode == 0, second.stderr
    assert _result(second)["photos_added"] >= len(missing)
    assert w.scalar("SELECT count(*) FROM mls_sync_errors WHERE stage = 'media' AND resolved_at IS NULL "
                    "AND message LIKE :m", m=f"%{MISSING}%") == 0
    for ref in (m["ref"] for m in missing):
        key, order = ref.rsplit(":", 1)
        assert w.scalar("SELECT count(*) FROM property_media WHERE listing_key = :k AND media_order = :o "
                        "AND state = 'stored'", k=key, o=int(order)) == 1, ref
    w.check("demo_rets", photos=True)


def test_broken_bodies_resets_and_expired_sessions_are_survived_and_counted(world) -> None:
    w: World = world(listings=200, seed=32, photos_per_listing=1, row_cap=40)
    w.mls.fault("truncated_body", count=1, path="/rets/search")
    w.mls.fault("reset_mid_body", count=1, path="/rets/search")
    w.mls.fault("session_expire_after_searches", n=2)
    w.mls.reset_counters()
    out = w.cli("sync", "--provider", "demo_rets", "--no-photos")
    assert out.returncode == 0, out.stderr
    run = w.last_run("demo_rets")
    served = w.mls.counters()["requests"]
    # every request of the run, the failed attempts included (a Digest login is two HTTP requests)
    assert run["requests"] == sum(served.values()) - served["rets:login"] // 2 - served.get("rets:logout", 0)
    assert w.mls.counters()["faults_injected"].keys() >= {"truncated_body", "reset_mid_body"}
    w.check("demo_rets")


def test_exhausted_retries_and_refused_credentials_are_one_error_row_each_without_secrets(world) -> None:
    w: World = world(listings=60, seed=33, photos_per_listing=1)
    # a 429 storm longer than the client's attempts
    w.mls.fault("too_many_requests", retry_after=1, count=20, path="/reso/odata/Property")
    storm = w.cli("sync", "--provider", "demo_reso", "--no-photos")
    assert storm.returncode == 4 and storm.stderr.count("\n") == 1 and "429" in storm.stderr
    w.mls.clear_faults()
    # the server refuses the credentials
    conn = json.loads(w.env["AIRFLOW_CONN_MLS_DEMO_RETS"])
    conn["password"] = "wrong-secret-9"
    refused = w.cli("sync", "--provider", "demo_rets", "--no-photos",
                    env={**w.env, "AIRFLOW_CONN_MLS_DEMO_RETS": json.dumps(conn)})
    assert refused.returncode == 3 and refused.stderr.startswith("mls-sync: authentication failed")
    # 5xx until the attempts run out
    w.mls.fault("http_error", status=503, count=20, path="/rets/search")
    down = w.cli("sync", "--provider", "demo_rets", "--no-photos")
    assert down.returncode == 4 and "503" in down.stderr
    w.mls.clear_faults()

    errors = w.rows("SELECT e.*, h.error_summary, h.state FROM mls_sync_errors e "
                    "JOIN mls_sync_history h ON h.id = e.sync_id ORDER BY e.id")
    assert [(e["provider_id"], e["stage"], e["category"], e["ref"]) for e in errors] == [
        ("demo_reso", "fetch", "rate_limit", f"sync:{errors[0]['sync_id']}"),
        ("demo_rets", "fetch", "auth", f"sync:{errors[1]['sync_id']}"),
        ("demo_rets", "fetch", "network", f"sync:{errors[2]['sync_id']}")]
    for e, words in zip(errors, ("429", "Login refused", "503"), strict=True):
        assert e["state"] == "failed" and words in e["message"] and words in e["payload"]["cause"]
        assert e["payload"]["request"] and e["error_summary"].startswith("fetch failed: ")
        assert e["category"] in e["error_summary"] and words in e["error_summary"]
    assert errors[2]["payload"]["request"]["transaction"] == "Search"
    assert errors[2]["payload"]["request"]["params"]["Class"] == "RE_1"
    # RESO's names the request too: the OData query the server kept refusing
    storm_request = errors[0]["payload"]["request"]
    assert storm_request["method"] == "GET" and "/reso/odata/Property?" in storm_request["url"], storm_request
    assert "filter=" in storm_request["url"] and "Bearer" not in json.dumps(storm_request)
    text = json.dumps(errors, default=str) + storm.stderr + refused.stderr + down.stderr
    for secret in ("wrong-secret-9", "mockpass", "uapass", "mock-secret"):
        assert secret not in text

    for provider in ("demo_reso", "demo_rets"):  # the provider works again: its failures are over
        assert w.cli("sync", "--provider", provider, "--no-photos").returncode == 0
        w.check(provider)
    assert w.scalar("SELECT count(*) FROM mls_sync_errors WHERE resolved_at IS NULL") == 0


HOSTILE = [
    {"modified_since": "0001-01-01T00:00:00Z"},  # passed, then failed fetch (OverflowError / a 400)
    {"modified_since": "2999-01-01T00:00:00Z"},
    {"listing_keys": ["x' or 1 eq 1 or ListingKey eq '"]},
    {"postal_codes": ["787|01"]},
    {"cities": ["Austin),(LIST_15=|ACT"]},
    {"mode": "everything"},
    {"dry_run": "sometimes"},
]


def test_hostile_conf_is_refused_before_a_run_opens(world) -> None:
    from mls_sync.run_options import RunOptionsError

    w: World = world(listings=20, seed=34, photos_per_listing=1)
    for conf in HOSTILE:
        with pytest.raises(RunOptionsError, match="invalid run conf"):
            w.dag_plan("demo_rets", "manual__hostile", conf)
    assert w.scalar("SELECT count(*) FROM mls_sync_history") == 0
    assert w.mls.counters()["requests_total"] == 0
    refused = w.cli("sync", "--provider", "demo_rets", "--listing", "K1),(LIST_15=*")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "listing key" in refused.stderr
    assert w.scalar("SELECT count(*) FROM mls_sync_history") == 0
    assert w.scalar("SELECT count(*) FROM mls_sync_leases") == 0
