"""Peer comparison: our RETS search walk vs the PyPI `rets` package, each in its own process.

`python -m bench.peer ours|rets --provider demo_rets --query DMQL --format F` walks the search and
prints one JSON line: seconds and CPU seconds (search walk only; login and metadata warm-up excluded), unique keys,
rows received, requests, peak RSS (VmHWM) and RSS after login, plus RSS samples along the walk.
Neither keeps the records: both count keys, as a streaming consumer would.

Both walk the same pages: the mock caps a reply at 2,500 rows like real servers, so the `rets`
package (Limit=9999999, then Offset after each MAXROWS) and ours (Limit=2500) send the same
number of searches; each result lists its requests. They differ in how many ask for a COUNT
(`counted_requests`): the `rets` package asks on every page, ours on the first and the last, and
each COUNT is a second query on the server. At 100,000 listings that, not parsing, is most of the
difference in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil

from bench.child import run_module

MB = 1024 * 1024


def _rss() -> float:
    return psutil.Process().memory_info().rss / MB


def _peak() -> float:
    """This process's RSS high-water mark (VmHWM). Not ru_maxrss: on Linux that survives exec and
    so reports the RSS of the (large) bench process we were spawned from."""
    try:
        for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _asks_count(url: str, body: str | None = None) -> bool:
    """Did this search ask the server for a COUNT too (a second query on its side)?"""
    params = parse_qs(urlsplit(url).query)
    if body:
        params.update(parse_qs(body))
    return params.get("Count", ["0"])[0] not in ("", "0")


def walk_ours(provider_id: str) -> dict[str, Any]:
    from mls_sync import sync
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env
    from mls_sync.sources import open_source

    cfg = find_provider(provider_id)
    criteria = sync.criteria_for(cfg, {"mode": "full"})
    source = open_source(cfg, from_env(cfg.connection_id))
    source.session.login()
    source.zone()
    source.lookups()  # the metadata a walk needs once per session: not fetch-and-parse
    base = _rss()
    before = sum(source.session.stats["requests"].values())
    key = cfg.roles().key  # once, as the `rets` walk does: roles() builds a dataclass per call
    keys: set[str] = set()
    rows = 0
    samples: list[float] = []
    from bench.runner import record_requests

    started, cpu = time.monotonic(), time.process_time()
    with record_requests(("/rets/search",)) as seen:
        for page in source.pages(criteria):
            for rec in page.records:
                keys.add(rec[key])
            rows += len(page.records)
            samples.append(round(_rss(), 1))
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    requests_made = sum(source.session.stats["requests"].values()) - before
    source.close()
    first = parse_qs(urlsplit(seen[0]["url"]).query) if seen else {}
    counted = sum(1 for req in seen if _asks_count(req["url"], req.get("body")))
    return {"seconds": seconds, "cpu_seconds": cpu, "unique_keys": len(keys), "rows": rows,
            "requests": requests_made, "counted_requests": counted, "query": first.get("Query", [""])[0],
            "format": first.get("Format", ["COMPACT-DECODED"])[0],
            "rss_after_login_mb": round(base, 1), "samples_mb": samples[:: max(1, len(samples) // 40)]}


def walk_rets(provider_id: str, query: str, fmt: str) -> dict[str, Any]:
    import rets
    from mls_sync.config import find_provider
    from mls_sync.connections import from_env

    cfg = find_provider(provider_id)
    conn = from_env(cfg.connection_id)
    extra = conn.extra or {}
    session = rets.Session(conn.url(), conn.login, conn.password, version=extra.get("rets_version", "RETS/1.7.2"),
                           http_auth="digest", user_agent=extra.get("user_agent", "Python RETS"),
                           user_agent_password=extra.get("ua_password"), use_post_method=False, timeout=300)
    session.login()
    searches: list[str] = []  # the search requests it sends, to compare with ours
    session.client.hooks["response"].append(
        lambda r, *a, **k: searches.append(r.url) if "/rets/search" in r.url else None)
    base = _rss()
    key = cfg.roles().key
    keys: set[str] = set()
    rows = 0
    samples: list[float] = []
    started, cpu = time.monotonic(), time.process_time()
    for rec in session.search(resource=cfg.rets.resource, resource_class=cfg.rets.class_, dmql_query=query,
                              response_format=fmt):
        keys.add(rec[key])
        rows += 1
        if rows % 2500 == 0:
            samples.append(round(_rss(), 1))
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    with contextlib.suppress(Exception):  # the peer's logout is not what we measure
        session.logout()
    limits = [parse_qs(urlsplit(u).query).get("Limit", [""])[0] for u in searches]
    return {"seconds": seconds, "cpu_seconds": cpu, "unique_keys": len(keys), "rows": rows,
            "requests": len(searches), "counted_requests": sum(1 for u in searches if _asks_count(u)),
            "limits": sorted(set(limits)),
            "rss_after_login_mb": round(base, 1), "samples_mb": samples[:: max(1, len(samples) // 40)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peer")
    ap.add_argument("client", choices=("ours", "rets"))
    ap.add_argument("--provider", default="demo_rets")
    ap.add_argument("--query", default="")
    ap.add_argument("--format", default="COMPACT-DECODED")
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = walk_ours(a.provider) if a.client == "ours" else walk_rets(a.provider, a.query, a.format)
    out["peak_rss_mb"] = round(_peak(), 1)
    out["growth_mb"] = round(out["peak_rss_mb"] - out["rss_after_login_mb"], 1)
    print("PEER_RESULT " + json.dumps(out), flush=True)
    return 0


def run_peer(client: str, provider_id: str, query: str = "", fmt: str = "COMPACT-DECODED",
             timeout: float = 1800, monitor: Any = None) -> dict[str, Any]:
    """Run one walk in a child process (so its RSS is its own) and return its JSON result."""
    cmd = [client, "--provider", provider_id, "--query", query, "--format", fmt]
    on_start = (lambda pid: monitor.watch(pid, f"peer:{client}")) if monitor is not None else None
    return run_module("bench.peer", cmd, "PEER_RESULT ", f"peer {client}", timeout=timeout, on_start=on_start)


if __name__ == "__main__":
    sys.exit(main())
