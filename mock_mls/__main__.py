"""`python -m mock_mls`: serve until SIGTERM/SIGINT; prints `MOCK_MLS_URL=...` once ready.

The first stdout line is the contract for scripts and tests that start the mock as a subprocess
(with `--media-host`, a second line names the photo host).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from .control import RESO_PROFILES, Settings
from .server import MockMLS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m mock_mls", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--listings", type=int, default=10_000, help="generated listings (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="generator / mutation seed (default 1)")
    p.add_argument("--photos-per-listing", type=int, default=5, help="photos per listing (default 5)")
    p.add_argument("--data-dir", default=None, help="folder for the SQLite file (default: a temp dir)")
    p.add_argument("--keep-state", action="store_true",
                   help="with --data-dir: keep the feed and its changes for the next start (as make demo does)")
    p.add_argument("--photo-dir", default=None,
                   help="keep drawn photos as files here and serve them from there (default: draw on request)")
    p.add_argument("--cluster-size", type=int, default=None,
                   help="listings sharing one bulk-update ModificationTimestamp (default 30%%, >2500)")
    p.add_argument("--control", action="store_true", help="enable the /_control HTTP API")
    p.add_argument("--row-cap", type=int, default=d.row_cap, help="RETS rows per search reply (default 2500)")
    p.add_argument("--offset-mode", choices=("honour", "ignore", "reject"), default=d.offset_mode,
                   help="how RETS Offset is treated (default honour)")
    p.add_argument("--auth", choices=("digest", "basic"), default=d.auth, help="RETS HTTP auth (default digest)")
    p.add_argument("--require-ua-auth", action="store_true", help="require RETS-UA-Authorization")
    p.add_argument("--session-idle-seconds", type=float, default=None, help="RETS session idle expiry")
    p.add_argument("--expired-session-reply", choices=("20037", "401"), default=d.expired_session_reply,
                   help="reply to an expired RETS session (default 20037)")
    p.add_argument("--media-host", action="store_true",
                   help="serve photos also from a second port (another origin, like a CDN) and point RETS "
                        "Location URLs there; prints MOCK_MLS_MEDIA_URL=... after MOCK_MLS_URL")
    p.add_argument("--rets-location-escape", action="store_true",
                   help="write '&' in RETS Location headers as '&amp;' (XML-escaped, as real servers do)")
    p.add_argument("--rets-location-xml", action="store_true",
                   help="RETS Location parts are text/xml RETS replies (ReplyCode 0) instead of empty")
    p.add_argument("--rets-empty-parts", action="store_true",
                   help="an empty part (no headers, no body) before each listing's GetObject parts")
    p.add_argument("--rets-content-id", choices=("key", "other"), default=d.rets_content_id,
                   help="GetObject Content-ID: the asked key (default) or the listing's internal id")
    p.add_argument("--max-page-size", type=int, default=None,
                   help=f"RESO page size cap (default {d.max_page_size}, or the profile's)")
    p.add_argument("--key-only-cap", type=int, default=None,
                   help="rows per reply or page of a query selecting only key-index fields (key, modification "
                        "time, status...), as Trestle serves up to 300,000 (default: the same cap as any query)")
    p.add_argument("--extra-fields", type=int, default=0,
                   help="production-width RETS rows: this many more fields in Property searches of every field "
                        "(default 0: the 30 RETS fields of docs/FIELDS.md)")
    p.add_argument("--mlg-can-view", action="store_true", help="MLS Grid style MlgCanView=false for removals")
    p.add_argument("--reso-profile", choices=tuple(RESO_PROFILES), default=d.reso_profile,
                   help="RESO Web API vendor profile (default textbook; see mock_mls/README.md)")
    p.add_argument("--rate-limit-per-second", type=int, default=None, help="request budget per second")
    p.add_argument("--rate-limit-per-hour", type=int, default=None, help="request budget per hour")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    p.add_argument("--token-ttl-seconds", type=float, default=d.token_ttl_seconds, help="OAuth2 token life")
    p.add_argument("--timezone-offset", default=d.timezone_offset, help="RETS server zone (default -05:00)")
    for name in ("username", "password", "user_agent", "ua_password", "client_id", "client_secret"):
        p.add_argument(f"--{name.replace('_', '-')}", default=getattr(d, name),
                       help=f"credential (default {getattr(d, name)})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    core = {k: args.pop(k) for k in ("host", "port", "listings", "seed", "photos_per_listing", "data_dir",
                                     "cluster_size", "control", "photo_dir", "media_host", "keep_state")}
    settings: dict[str, Any] = {k: v for k, v in args.items() if not (k == "max_page_size" and v is None)}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with MockMLS(**core, **settings) as mls:
        print(f"MOCK_MLS_URL={mls.url}", flush=True)
        if mls.media_host:
            print(f"MOCK_MLS_MEDIA_URL={mls.media_url}", flush=True)
        print(f"mock_mls: {core['listings']} listings ready in {mls.startup_seconds:.2f}s", file=sys.stderr,
              flush=True)
        stop.wait()
    print("mock_mls: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
