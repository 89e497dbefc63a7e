"""`make demo`'s program: a real sync end to end, twice, and nothing left running afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from devstack import ROOT, private_airflow_home

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]


def _leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if marker in cmd:
            found.append(f"{proc.info['pid']}: {cmd[:120]}")
    return found


def _demo(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLS_DATABASE_URL" and not k.startswith("AIRFLOW_CONN_")}
    env.pop("MLS_MEDIA_STORAGE", None)
    env.update(private_airflow_home(data_dir / "airflow"))  # its dag.test() runs write Airflow's metadata
    return subprocess.run([sys.executable, "-m", "devstack.demo", "--data-dir", str(data_dir), "--listings", "60",
                           "--photos-per-listing", "1", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _roster_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines()
            if line.strip().startswith(("members:", "offices:", "open_houses:"))]


def test_demo_runs_twice_and_leaves_no_process(tmp_path) -> None:
    first = _demo(tmp_path, "--providers", "demo_rets", "demo_reso")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "demo_rets: full sync success" in first.stdout and "demo_reso: full sync success" in first.stdout
    assert "photos added" in first.stdout and "embedded PostgreSQL" in first.stdout
    # both providers bring the roster and open houses, all of them
    roster = _roster_lines(first.stdout)
    assert len(roster) == 6 and all("(they match)" in line and "added 0," not in line for line in roster), roster
    assert not _leftovers(str(tmp_path)), _leftovers(str(tmp_path))

    second = _demo(tmp_path, "--providers", "demo_rets", "demo_reso")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "mock MLS changes since last demo" in second.stdout and "member_new 2" in second.stdout
    assert "demo_rets: reconcile sync success" in second.stdout and "demo_reso: reconcile sync success" in second.stdout
    assert "reconciled with the MLS's keys" in second.stdout and "(they match)" in second.stdout
    # the re-run brings the new members and open houses and deletes the removed open house
    roster = _roster_lines(second.stdout)
    assert len(roster) == 6 and all("(they match)" in line for line in roster), roster
    assert all("added 2," in line for line in roster if line.startswith(("members:", "open_houses:"))), roster
    assert all("deleted 1;" in line for line in roster if line.startswith("open_houses:")), roster
    assert not _leftovers(str(tmp_path)), _leftovers(str(tmp_path))
    assert any((tmp_path / "media").rglob("*.webp"))


def test_demo_with_bad_database_url_says_one_line(tmp_path) -> None:
    env = {**os.environ, "MLS_DATABASE_URL": "postgresql://demo:s3cret@127.0.0.1:1/nowhere"}
    out = subprocess.run([sys.executable, "-m", "devstack.demo", "--data-dir", str(tmp_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MLS_DATABASE_URL" in lines[0] and "Traceback" not in out.stderr
    assert "s3cret" not in out.stderr
    assert not _leftovers(str(tmp_path))
