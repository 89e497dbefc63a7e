"""Floors: what the same work costs with nothing but plain tools.

Records: the same search requests the client made (recorded URLs), replayed with plain `requests`
GETs that only read the bytes, plus a PostgreSQL COPY of the same rows into an UNLOGGED table.
The records floor's CPU (user + system seconds per process, PostgreSQL's backends included) covers
the same two timed parts.
Photos: a bare Pillow loop (`imaging.floor_variants`) over the same bytes on a pool of 2 processes.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import time
from typing import Any

import requests
from requests.auth import HTTPDigestAuth

from bench.stack import Mock, engine

CHUNK = 1 << 16


def _rets_session(mock: Mock) -> requests.Session:
    creds = mock.credentials
    s = requests.Session()
    s.headers.update({"RETS-Version": "RETS/1.7.2", "User-Agent": creds["user_agent"]})
    r = s.get(f"{mock.url}/rets/login", auth=HTTPDigestAuth(creds["username"], creds["password"]), timeout=60)
    r.raise_for_status()
    return s


def _reso_session(mock: Mock) -> requests.Session:
    creds = mock.credentials
    s = requests.Session()
    r = s.post(f"{mock.url}/reso/oauth2/token", data={"grant_type": "client_credentials",
                                                      "client_id": creds["client_id"],
                                                      "client_secret": creds["client_secret"]}, timeout=60)
    r.raise_for_status()
    s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return s


def replay(mock: Mock, protocol: str, recorded: list[dict[str, Any]]) -> dict[str, Any]:
    """GET (or POST) every recorded search URL and read the body; login is not timed."""
    s = _rets_session(mock) if protocol == "rets" else _reso_session(mock)
    nbytes = 0
    started = time.monotonic()
    for req in recorded:
        with s.request(req["method"], req["url"], data=req.get("body"), stream=True, timeout=300) as r:
            r.raise_for_status()
            for chunk in r.iter_content(CHUNK):
                nbytes += len(chunk)
    seconds = time.monotonic() - started
    s.close()
    return {"seconds": seconds, "requests": len(recorded), "bytes": nbytes}


def _cpu(monitor: Any) -> dict[str, float]:
    return monitor.peak()["cpu_seconds"] if monitor is not None else {}


def _cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}


def copy_rows(db_url: str, provider_id: str, monitor: Any = None) -> dict[str, Any]:
    """COPY the rows the sync wrote (read out untimed) into an UNLOGGED twin of `properties`."""
    eng = engine(db_url)
    raw = eng.raw_connection()
    try:
        cur = raw.cursor()
        buf = io.BytesIO()
        with cur.copy("COPY (SELECT * FROM properties WHERE provider_id = %s) TO STDOUT", (provider_id,)) as out:
            for data in out:
                buf.write(data)
        rows = buf.getvalue().count(b"\n")
        cur.execute("DROP TABLE IF EXISTS bench_floor_copy")
        cur.execute("CREATE UNLOGGED TABLE bench_floor_copy (LIKE properties INCLUDING DEFAULTS)")
        raw.commit()
        data = buf.getvalue()
        cpu_before = _cpu(monitor)
        started = time.monotonic()
        with cur.copy("COPY bench_floor_copy FROM STDIN") as into:
            into.write(data)
        raw.commit()
        seconds = time.monotonic() - started
        cpu = _cpu_between(cpu_before, _cpu(monitor))
        cur.execute("DROP TABLE bench_floor_copy")
        raw.commit()
    finally:
        raw.close()
    return {"seconds": seconds, "rows": rows, "cpu_seconds_by_process": cpu}


def records_floor(mock: Mock, protocol: str, recorded: list[dict[str, Any]], db_url: str,
                  provider_id: str, monitor: Any = None) -> dict[str, Any]:
    """With `monitor` (bench.monitor.RssMonitor), the CPU seconds per process of the two timed parts
    (replay and COPY; not the untimed read-out of the rows), in `cpu_seconds_by_process`."""
    if monitor is not None:
        monitor.reset()
    fetch = replay(mock, protocol, recorded)
    fetch_cpu = _cpu(monitor)
    copy = copy_rows(db_url, provider_id, monitor)
    cpu = {k: round(fetch_cpu.get(k, 0.0) + copy["cpu_seconds_by_process"].get(k, 0.0), 3)
           for k in {*fetch_cpu, *copy["cpu_seconds_by_process"]}}
    return {"seconds": fetch["seconds"] + copy["seconds"], "fetch_seconds": fetch["seconds"],
            "copy_seconds": copy["seconds"], "requests": fetch["requests"], "bytes": fetch["bytes"],
            "rows": copy["rows"], "cpu_seconds_by_process": dict(sorted(cpu.items()))}


def _noop(_: int) -> int:
    return 0


def photo_floor(datas: list[bytes], sizes: dict[str, int], formats: tuple[str, ...], quality: int,
                workers: int = 2) -> dict[str, Any]:
    """Photos/s of the bare Pillow loop on `workers` processes (pool start-up not timed)."""
    from mls_sync.imaging import floor_variants

    fn = functools.partial(floor_variants, sizes=sizes, formats=formats, quality=quality)
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers) as pool:
        pool.map(_noop, range(workers * 2))  # workers up and imported before the clock starts
        started = time.monotonic()
        out = pool.map(fn, datas, chunksize=2)
        seconds = time.monotonic() - started
    variants = sum(len(v) for v in out)
    return {"seconds": seconds, "photos": len(datas), "variants": variants,
            "photos_per_second": len(datas) / seconds if seconds else None, "workers": workers}
