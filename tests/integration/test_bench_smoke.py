"""`python -m bench` end to end at a tiny size: the JSON has the documented keys and sane values.

No timing assertions: the figures are the bench's business, not the test suite's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack import ROOT, pg_reachable

KEYS = ("scenario", "label", "provider", "path", "wall_seconds", "records_per_second", "mls_requests",
        "bytes_transferred", "rows_written", "peak_rss_mb", "peak_rss_process", "stage_timings", "ratios",
        "targets", "floor", "error")


@pytest.mark.skipif(not pg_reachable("postgresql://postgres@127.0.0.1:5432/postgres"),
                    reason="needs the PostgreSQL on 127.0.0.1:5432")
def test_bench_scenario_1_small(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    cmd = [sys.executable, "-m", "bench", "1", "--listings", "300", "--providers", "demo_reso", "--no-dag",
           "--no-peer", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Targets:" in proc.stdout
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["machine"]["cpus"] >= 1
    [res] = doc["scenarios"]
    for key in KEYS:
        assert key in res, key
    assert res["error"] is None, res.get("traceback")
    assert res["scenario"] == "1" and res["path"] == "engine"
    assert res["wall_seconds"] > 0 and res["records_per_second"] > 0
    assert 100 < res["records"] <= 300  # the full sync asks for active-ish statuses only
    assert res["rows_written"] >= res["records"]
    assert res["mls_requests"] >= 1 and res["bytes_transferred"] > 0
    assert res["peak_rss_mb"] > 10
    assert {"fetch", "transform_load"} <= set(res["stage_timings"])
    assert res["floor"]["rows"] == res["counts"]["added"] and res["floor"]["seconds"] > 0
    assert res["ratios"]["full_sync_vs_floor"] > 0
    # five sync/floor pairs by default; the quoted ratio is their median
    ratios = sorted(r["ratio"] for r in res["repeats"])
    assert len(ratios) == 5 and res["ratios"]["full_sync_vs_floor"] == ratios[2]
    # repeats are listed in the order they ran, the quoted one marked; the other figures are
    # that pair's sync's too
    median = sorted(res["repeats"], key=lambda r: r["ratio"])[2]
    assert [r for r in res["repeats"] if r.get("median")] == [median]
    assert res["wall_seconds"] == median["wall_seconds"] and res["stage_walls"] == median["stage_walls"]
    assert sum(res["stage_walls"].values()) <= res["wall_seconds"] + 0.01  # its stages, not another run's
    assert all(t["status"] in ("PASS", "MISS", "n/a") for t in res["targets"])
    # who used the cores: the sync and the database did work; the mock is watched (its share of a
    # 300-listing sync can round to nothing)
    cpu = res["cpu_seconds_by_process"]
    assert cpu["bench"] > 0 and cpu["postgres"] > 0 and "mock" in cpu, cpu
    assert "CPU seconds by process" in proc.stdout
    assert len(list(tmp_path.glob("*.json"))) == 2  # <timestamp>.json and latest.json


@pytest.mark.skipif(not pg_reachable("postgresql://postgres@127.0.0.1:5432/postgres"),
                    reason="needs the PostgreSQL on 127.0.0.1:5432")
def test_bench_reconciliation_small(tmp_path) -> None:
    """Scenario 9: the full sync, then reconciliations against a server serving large key-only
    pages and one capping them like any; then the same at production width (the mock's
    extra_fields), where a full row is ~2.3 KB and the key list is the same."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    cmd = [sys.executable, "-m", "bench", "9", "--listings", "6000", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads((tmp_path / "latest.json").read_text())["scenarios"]
    full, generous, capped, wide_full, wide = runs
    for res in runs:
        assert res["error"] is None, res.get("traceback")
    assert "full sync" in full["label"] and "up to 100,000" in generous["label"] and "capped" in capped["label"]
    assert "production-width" in wide_full["label"] and "production-width" in wide["label"]
    # 6,000 listings: ~4,300 keys in scope, one key page against two of 2,500
    searches = [r["mls_requests_by_endpoint"]["rets:search"] for r in (generous, capped)]
    assert searches[0] == searches[1] - 1, searches
    # the same listings, each full row ~4x wider; the key list is not
    assert abs(wide_full["records"] - full["records"]) <= 10  # less what the reconciliations removed
    widening = (wide_full["bytes_transferred"] / wide_full["records"]) / (full["bytes_transferred"] / full["records"])
    assert widening > 3.5, widening
    assert 0.8 < wide["bytes_transferred"] / generous["bytes_transferred"] < 1.25
    for res in (generous, capped, wide):
        assert 0 < res["ratios"]["bytes_vs_full_sync"] < 0.2 and res["ratios"]["wall_vs_full_sync"] > 0
        assert res["reconcile"]["mls_count"] > 4000 and res["reconcile"]["gone"] >= 1, res["reconcile"]
        # at this size some "late" changes fall inside the incremental walk's overlap, which
        # fetches them itself; at 100,000 every one is older than the watermark
        repaired = res["checks"]["repaired"]
        assert 1 <= repaired["stale"] <= repaired["stale_made"], repaired
    assert wide["ratios"]["bytes_vs_full_sync"] < 0.05
    judged = {r["label"]: {t["name"]: t["status"] for t in r["targets"]} for r in (generous, capped, wide)}
    assert judged[generous["label"]]["wall vs a full sync"] in ("PASS", "MISS")
    assert judged[wide["label"]]["MLS bytes vs a full sync"] == "PASS", judged
    assert set(judged[capped["label"]].values()) == {"n/a"}, judged
    # each judged reconciliation left nothing: a second one finds the store equal to the MLS's list
    for res in (generous, wide):
        assert judged[res["label"]]["differences a second reconciliation finds"] == "PASS", judged
        assert res["checks"]["second_reconciliation"]["mls_count"] == res["reconcile"]["mls_count"]


@pytest.mark.skipif(not pg_reachable("postgresql://postgres@127.0.0.1:5432/postgres"),
                    reason="needs the PostgreSQL on 127.0.0.1:5432")
def test_bench_peer_pairs_walk_the_same_pages(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    cmd = [sys.executable, "-m", "bench", "1", "--listings", "6000", "--peer-only", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [res] = json.loads((tmp_path / "latest.json").read_text())["scenarios"]
    assert res["error"] is None, res.get("traceback")
    ours, theirs = res["peer"]["ours"], res["peer"]["rets"]
    # the mock caps a reply at 2,500 rows: both clients page through the same searches
    assert ours["requests"] == theirs["requests"] >= 2
    # the rets package asks for a COUNT on every page, ours on the first and the expected last
    assert res["checks"]["counted_requests"] == {"ours": 2, "rets": theirs["requests"]}
    assert ours["unique_keys"] == theirs["unique_keys"] > 2500
    assert res["notes"] == []
    # five interleaved pairs at this size; the quoted ratio is the median pair's
    ratios = sorted(r["ratio"] for r in res["repeats"])
    assert len(ratios) == 5 and res["ratios"]["ours_vs_rets_time"] == ratios[2]
    # listed in the order they ran, the quoted pair marked
    [quoted] = [r for r in res["repeats"] if r.get("median")]
    assert quoted["ratio"] == ratios[2] and quoted["ours_seconds"] == round(ours["seconds"], 3)


def test_bench_parse_curve_small(tmp_path) -> None:
    """Scenario 10 at 1 and 3 providers: every parse builds each provider's two DAGs (and the
    maintenance DAG), cold and warm, and the curve is printed."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    cmd = [sys.executable, "-m", "bench", "10", "--parse-sizes", "1,3", "--repeat", "1", "--results-dir",
           str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [res] = json.loads((tmp_path / "latest.json").read_text())["scenarios"]
    assert res["error"] is None, res.get("traceback")
    assert res["scenario"] == "10" and res["path"] == "parse"
    points = {(p["providers"], p["mode"]): p for p in res["parse_curve"]}
    assert set(points) == {(1, "cold"), (1, "warm"), (3, "cold"), (3, "warm")}
    for (n, _), p in points.items():
        assert p["dags"] == p["expected_dags"] == 2 * n + 1 and p["import_errors"] == [], p
        assert p["files"]["mls_sync.py"]["dags"] == 2 * n
        assert p["cpu_seconds"] > 0 and p["wall_seconds"] > 0
        assert p["cache_written"]  # the warm parse had the cold one's config cache to read
    assert set(res["marginal_ms_per_provider"]) == {"cold", "warm"}
    assert [t["status"] for t in res["targets"] if "DAGs built" in t["name"]] == ["PASS"]
    assert "Parse curve" in proc.stdout and "marginal (warm)" in proc.stdout


@pytest.mark.skipif(not pg_reachable("postgresql://postgres@127.0.0.1:5432/postgres"),
                    reason="needs the PostgreSQL on 127.0.0.1:5432")
def test_bench_million_at_a_tiny_size(tmp_path) -> None:
    """Scenario 8's code paths at 2,000 listings: per protocol a reference sync at a tenth, the full
    sync of every status with its floor and space per record, then an incremental run."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    cmd = [sys.executable, "-m", "bench", "8", "--listings", "2000", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "latest.json").read_text())["scenarios"]
    for r in results:
        assert r["scenario"] == "8" and r["error"] is None, (r["label"], r.get("traceback"), proc.stderr[-3000:])
    assert [(r["provider"], r["listings"]) for r in results] == [
        ("demo_rets", 200), ("demo_rets", 2000), ("demo_rets", 2000),
        ("demo_reso", 200), ("demo_reso", 2000), ("demo_reso", 2000)]
    for ref, full, inc in (results[:3], results[3:]):
        # every status, not only the active-ish ~72 % a default full sync asks for
        assert full["records"] > 0.95 * 2000 and ref["records"] > 0.95 * 200
        assert full["floor"]["rows"] == full["counts"]["added"] == full["space"]["records"]
        assert full["space"]["tables"]["properties"]["index_bytes"] > 0
        assert full["space"]["per_record_bytes"] > 0
        assert full["ratios"]["full_sync_vs_floor"] > 0 and full["ratios"]["peak_rss_vs_tenth"] > 0
        assert full["checks"]["peak_rss_reference_mb"] == ref["peak_rss_ours_mb"]
        assert {t["name"] for t in full["targets"]} >= {"wall", "engine-only vs floor", "peak RSS of our processes"}
        # the incremental run fetched what changed and nothing older than its overlap window
        assert inc["checks"]["missing"] == 0 and inc["checks"]["extra_outside_overlap"] == 0, inc["checks"]
        assert 0 < inc["records"] < 0.1 * full["records"]
