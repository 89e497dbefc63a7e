"""`MockMLS`: data, protocols, faults and the threaded HTTP server on 127.0.0.1 in one object.

The stdlib server keeps raw socket control, which is what connection resets and truncated
bodies need; bodies are streamed with chunked encoding so a 100,000-row walk stays flat.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .control import Clock, Counters, Faults, Mutator, RateLimiter, Settings
from .data import Generator, Store, default_cluster
from .fields import FIELDS
from .httpio import Request, Response, json_response, odata_error
from .photos import PhotoCache, corrupt
from .reso import Reso, reso_value
from .rets import Rets

PHOTO_PATH = re.compile(r"^/photos/([^/]+)/(\d+)/(\d+)\.jpg$")


class MockMLS:
    """A running mock MLS (RETS + RESO Web API + photo URLs). Use as a context manager."""

    def __init__(self, listings: int = 10_000, seed: int = 1, photos_per_listing: int = 5,
                 data_dir: str | Path | None = None, control: bool = False, host: str = "127.0.0.1",
                 port: int = 0, cluster_size: int | None = None, photo_cache_size: int = 64,
                 photo_dir: str | Path | None = None, media_host: bool = False, keep_state: bool = False,
                 **settings: Any) -> None:
        self.listings_count = listings
        self.seed = seed
        self.photos_per_listing = photos_per_listing
        self.cluster_size = default_cluster(listings) if cluster_size is None else cluster_size
        self.control_enabled = control
        self.host, self.port = host, port
        self.settings = Settings()
        self.settings.update(**settings)
        self._initial_settings = self.settings.as_dict()
        self.clock = Clock()
        self.faults = Faults()
        self.stats = Counters()
        self.limiter = RateLimiter()
        self.photos = PhotoCache(photo_cache_size, photo_dir)
        self.generator = Generator(seed, photos_per_listing)
        self._data_dir = Path(data_dir) if data_dir else None
        # with a data_dir: the feed and its changes outlive the process, so a second run of the
        # demo sees the first run's changes still there (and the next mutate() continues them)
        self.keep_state = keep_state and self._data_dir is not None
        self._tmp: str | None = None
        self.store: Store | None = None
        self.rets = Rets(self)
        self.reso = Reso(self)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # A second listener serving only /photos/: another origin, like a photo CDN.
        self.media_host = media_host
        self._media_httpd: _Server | None = None
        self.media_port = 0
        # Headers of the last photo requests (any listener), lower-cased names: what a CDN saw.
        self.photo_requests: deque[dict[str, str]] = deque(maxlen=10_000)
        self.startup_seconds = 0.0

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> MockMLS:
        """Generate the data, bind the port and serve in a daemon thread."""
        started = time.perf_counter()
        if self._data_dir:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            folder = self._data_dir
        else:
            self._tmp = tempfile.mkdtemp(prefix="mock_mls_")
            folder = Path(self._tmp)
        name = "" if self.keep_state else f"_{id(self):x}"
        self.store = Store(folder / f"mock_mls_{self.seed}_{self.listings_count}{name}.sqlite")
        if not (self.keep_state and self.store.has_feed()):
            self.store.create(self.generator, self.listings_count, self.cluster_size)
        elif not self.store.has_roster():
            self.store.create_roster(self.seed)
        self.mutator = Mutator(self.store, self.generator, self.clock, self.seed, persistent=self.keep_state)
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.app = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mock-mls", daemon=True)
        self._thread.start()
        if self.media_host:
            self._media_httpd = _Server((self.host, 0), _Handler)
            self._media_httpd.app = self
            self._media_httpd.media_only = True
            self.media_port = self._media_httpd.server_address[1]
            threading.Thread(target=self._media_httpd.serve_forever, name="mock-mls-media", daemon=True).start()
            if not self.settings.rets_location_base:  # Location URLs point at the photo host, also after reset()
                self.settings.rets_location_base = self._initial_settings["rets_location_base"] = self.media_url
        self.startup_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """Stop serving and delete the SQLite file (kept with keep_state). Safe to call twice."""
        for httpd in (self._httpd, self._media_httpd):
            if httpd:
                httpd.shutdown()
                httpd.server_close()
        self._httpd = self._media_httpd = None
        if self.store:
            self.store.close()
            for suffix in ("", "-wal", "-shm") if not self.keep_state else ():
                Path(str(self.store.path) + suffix).unlink(missing_ok=True)
            self.store = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> MockMLS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def media_url(self) -> str:
        """The photo-only second host (start with `media_host=True`): another origin than `url`."""
        if not self.media_port:
            raise ValueError("no media host: start MockMLS(media_host=True) / python -m mock_mls --media-host")
        return f"http://{self.host}:{self.media_port}"

    @property
    def rets_login_url(self) -> str:
        return f"{self.url}/rets/login"

    @property
    def reso_url(self) -> str:
        return f"{self.url}/reso/odata"

    @property
    def token_url(self) -> str:
        return f"{self.url}/reso/oauth2/token"

    @property
    def credentials(self) -> dict[str, str]:
        s = self.settings
        return {"username": s.username, "password": s.password, "user_agent": s.user_agent,
                "ua_password": s.ua_password, "client_id": s.client_id, "client_secret": s.client_secret}

    # --- control --------------------------------------------------------------------------------
    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change any `Settings` field at runtime; returns the full settings."""
        self.settings.update(**settings)
        return self.settings.as_dict()

    def fault(self, kind: str, **params: Any) -> None:
        """Switch a fault on; `count=N` for the next N hits, `fraction=`+`seed=`, `path=` prefix."""
        self.faults.add(kind, **params)

    def clear_faults(self) -> None:
        self.faults.clear()

    def mutate(self, **counts: int) -> dict[str, list[str]]:
        """Apply seeded changes (price, status, photo, new, remove, touch); returns keys by kind."""
        return self.mutator.mutate(**counts)

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def counters(self) -> dict[str, Any]:
        return self.stats.snapshot()

    def reset_counters(self) -> None:
        self.stats.reset()

    def expire_sessions(self) -> None:
        self.rets.sessions.clear()

    def expire_tokens(self) -> None:
        self.reso.expire_tokens()

    def reset(self) -> None:
        """Back to the generated data and the constructor's settings; faults, counters, sessions,
        tokens and budgets cleared (the clock keeps its offset: time never runs backwards)."""
        assert self.store is not None
        self.store.restore()
        self.settings.update(**self._initial_settings)
        self.mutator.calls = 0
        self.faults.clear()
        self.stats.reset()
        self.rets.sessions.clear()
        self.reso.reset()
        self.limiter.reset()
        self.photo_requests.clear()

    def listing(self, key: str) -> dict[str, Any] | None:
        """A listing as RESO would serve it (plus `MlgCanView`), or None if the key never existed."""
        assert self.store is not None
        row = self.store.listing(key)
        if row is None:
            return None
        out = {f.reso: reso_value(f, row.get(f.reso)) for f in FIELDS if f.reso != "MlgCanView"}
        out["MlgCanView"] = bool(row["InFeed"])
        return out

    def key_numbers(self) -> dict[str, int]:
        """ListingKey -> ListingKeyNumeric (what `reso_key="int"` serves as the key), every listing."""
        assert self.store is not None
        return dict(self.store.query("SELECT ListingKey, Serial FROM listings").fetchall())

    def _keys(self, where: str) -> list[str]:
        assert self.store is not None
        return [r[0] for r in self.store.query(f"SELECT ListingKey FROM listings WHERE {where} ORDER BY ListingKey")]

    def all_keys(self) -> list[str]:
        """Every key the feed serves now (removed listings excluded): what a full sync must hold."""
        return self._keys("InFeed = 1")

    def active_keys(self) -> list[str]:
        """Keys in the feed with StandardStatus 'Active'."""
        return self._keys("InFeed = 1 AND StandardStatus = 'Active'")

    def roster_keys(self, resource: str, which: str = "all") -> list[str]:
        """Keys of a roster resource (Member, Office, OpenHouse) in the feed now, or removed ones."""
        from . import roster

        assert self.store is not None
        res = roster.BY_SET[resource]
        where = "InFeed = 0" if which == "removed" else "InFeed = 1"
        return [r[0] for r in self.store.query(f'SELECT "{res.key}" FROM {res.table} WHERE {where} ORDER BY 1')]

    def removed_keys(self) -> list[str]:
        return self._keys("InFeed = 0")

    # --- helpers used by the protocol modules -----------------------------------------------------
    def photo_url(self, base: str, row: tuple[Any, ...]) -> str:
        return f"{base or self.url}/photos/{row[1]}/{row[2]}/{row[3]}.jpg"

    def signed_photo_url(self, base: str, row: tuple[Any, ...]) -> str:
        """A photo URL with a CDN-style signed query (`?expires=..&sig=..`), checked when it is fetched."""
        url = self.photo_url(base, row)
        expires = "4102444800"  # 2100-01-01: the signature matters here, not the expiry
        return f"{url}?expires={expires}&sig={_signature(url[url.index('/photos/'):], expires)}"

    def photo_bytes(self, row: tuple[Any, ...]) -> bytes:
        """JPEG for a media row, corrupted when a `corrupt_photo` fault names it."""
        data = self.photos.get(row[1], row[2], row[3], row[4], row[5], row[6])
        self.stats.add("photos_served")
        if self.faults.take("corrupt_photo", "", listing_key=row[1], order=row[2]) is not None:
            self.stats.fault("corrupt_photo")
            return corrupt(data)
        return data

    def prerender(self) -> int:
        """Draw every photo of the feed now, into the photo folder, so that serving them later costs
        a file read and no drawing (a benchmark's cores are shared with this server)."""
        if self.photos.directory is None:
            raise ValueError("prerender needs a photo folder (--photo-dir)")
        assert self.store is not None
        rows = self.store.query("SELECT m.* FROM media m JOIN listings l ON l.ListingKey = m.ResourceRecordKey "
                                "WHERE l.InFeed = 1").fetchall()
        for row in rows:
            self.photos.get(row[1], row[2], row[3], row[4], row[5], row[6])
        return len(rows)

    # --- request pipeline -------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/_control"):
            if not self.control_enabled:
                return odata_error(404, "control API disabled (start with --control)")
            return self._control(req)
        endpoint = endpoint_name(path)
        self.stats.request(endpoint)
        delay = self.settings.latency
        latency = self.faults.take("latency", path)
        if latency:
            self.stats.fault("latency")
            delay += float(latency.get("seconds", 0.5))
        if delay:
            time.sleep(delay)
        if endpoint.startswith(("rets:", "reso:")) and endpoint != "reso:token":
            wait = self.limiter.check(self.clock.now(), self.settings.rate_limit_per_second,
                                      self.settings.rate_limit_per_hour)
            if wait is not None:
                self.stats.add("rate_limited")
                return self.too_many(wait)
        forced = self.faults.take("too_many_requests", path)
        if forced is not None:
            self.stats.fault("too_many_requests")
            return self.too_many(float(forced.get("retry_after", 1)))
        failure = self.faults.take("http_error", path)
        if failure is not None:
            self.stats.fault("http_error")
            status = int(failure.get("status", 503))
            return Response(status, [("Content-Type", "text/html")],
                            f"<html><body><h1>{status} Server Error</h1></body></html>".encode(), "")
        if path.startswith("/rets/"):
            return self.rets.handle(req)
        if path.startswith("/reso/"):
            return self.reso.handle(req)
        match = PHOTO_PATH.match(path)
        if match:
            self.photo_requests.append(dict(req.headers))
            if "authorization" in req.headers or "cookie" in req.headers:
                self.stats.add("photo_requests_with_credentials")
            refused = _refuse_query(path, req.query)
            return refused or self._photo(*match.groups())
        return Response(404, [("Content-Type", "text/plain")], b"not found")

    @staticmethod
    def too_many(wait: float) -> Response:
        seconds = max(1, int(wait + 0.999))
        resp = odata_error(429, f"Rate limit exceeded; retry after {seconds} s", "TooManyRequests")
        return resp.header("Retry-After", str(seconds))

    def _photo(self, key: str, order: str, version: str) -> Response:
        assert self.store is not None
        row = self.store.query(
            "SELECT m.* FROM media m JOIN listings l ON l.ListingKey = m.ResourceRecordKey "
            "WHERE m.ResourceRecordKey = ? AND m.MediaOrder = ? AND m.Version = ?",
            (key, int(order), int(version))).fetchone()
        if row is None:
            return Response(404, [("Content-Type", "text/plain")], b"no such photo")
        return Response(200, [("Content-Type", "image/jpeg"), ("Cache-Control", "max-age=86400")],
                        self.photo_bytes(row), "jpeg")

    def _control(self, req: Request) -> Response:
        """JSON control API mirroring the Python methods (POST bodies are JSON objects)."""
        try:
            args = json.loads(req.body or b"{}") if req.method == "POST" else {}
        except ValueError:
            return odata_error(400, "body must be JSON")
        action = req.path[len("/_control/"):].strip("/")
        try:
            if action in ("", "state"):
                return json_response({"url": self.url, "media_url": self.media_url if self.media_port else None,
                                      "settings": self.settings.as_dict(),
                                      "faults": self.faults.active(), "clock": self.clock.now(),
                                      "counters": self.counters(), "credentials": self.credentials})
            if action == "configure":
                return json_response(self.configure(**args))
            if action == "fault":
                self.fault(args.pop("kind"), **args)
                return json_response({"faults": self.faults.active()})
            simple = {"clear_faults": self.clear_faults, "reset_counters": self.reset_counters,
                      "reset": self.reset, "expire_sessions": self.expire_sessions,
                      "expire_tokens": self.expire_tokens}
            if action in simple:
                simple[action]()
                return json_response({"ok": True})
            if action == "mutate":
                return json_response(self.mutate(**args))
            if action == "advance_clock":
                self.advance_clock(float(args.get("seconds", 0)))
                return json_response({"clock": self.clock.now()})
            if action == "counters":
                return json_response(self.counters())
            if action == "prerender":
                return json_response({"photos": self.prerender()})
            if action.startswith("listing/"):
                found = self.listing(action.split("/", 1)[1])
                return json_response(found) if found else odata_error(404, "no such listing")
            if action == "roster_keys":
                return json_response({"keys": self.roster_keys(req.param("resource") or "Member",
                                                               req.param("which") or "all")})
            if action == "keys":
                lists = {"all": self.all_keys, "active": self.active_keys, "removed": self.removed_keys}
                keys = lists[req.param("which") or "all"]()
                return json_response({"keys": keys})
        except (ValueError, KeyError, TypeError) as exc:
            return odata_error(400, f"{type(exc).__name__}: {exc}")
        return odata_error(404, f"unknown control action {action!r}")


def _signature(path: str, expires: str) -> str:
    return hashlib.md5(f"{path}:{expires}".encode(), usedforsecurity=False).hexdigest()[:16]


def _refuse_query(path: str, query: dict[str, str]) -> Response | None:
    """A CDN's strictness: unknown parameters (`amp;sig` from an unescaped `&amp;`) and bad
    signatures are refused; a URL without a query is served (RESO MediaURL, old links)."""
    unknown = sorted(set(query) - {"expires", "sig"})
    if unknown:
        return Response(400, [("Content-Type", "text/plain")],
                        f"unknown query parameter(s) {', '.join(unknown)}".encode())
    if query and query.get("sig") != _signature(path, query.get("expires", "")):
        return Response(403, [("Content-Type", "text/plain")], b"signature does not match")
    return None


def endpoint_name(path: str) -> str:
    """Counter key per transaction / entity set: rets:search, reso:Property, photo, ..."""
    if path.startswith("/rets/"):
        return "rets:" + path[6:].strip("/").lower()
    if path.startswith("/reso/oauth2"):
        return "reso:token"
    if path.startswith("/reso/odata"):
        tail = path[len("/reso/odata"):].strip("/")
        return "reso:" + (tail.split("(")[0] or "service")
    if path.startswith("/photos/"):
        return "photo"
    return "other"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    app: MockMLS
    media_only = False  # the photo host answers /photos/ only, like a CDN


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock_mls/1.0"
    sys_version = ""
    server: _Server
    timeout = 120
    # TCP_NODELAY, as production HTTP servers set it. Without it every reply on a kept-alive
    # connection stalled about 40 ms (Nagle's algorithm holding the last small write until the
    # client's delayed ACK): a RETS login took 45 ms instead of 3, and each search page ended
    # with a 40 ms pause that the bench's floor counted as MLS time.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_GET
    do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the benchmark do thousands of requests."""

    def _serve(self) -> None:
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = headers.get("host") or f"{app.host}:{app.port}"
        req = Request.build(self.command, self.path, headers, body, f"http://{host}")
        try:
            if self.server.media_only and not req.path.startswith("/photos/"):
                resp = Response(404, [("Content-Type", "text/plain")], b"not found (photo host)")
            else:
                resp = app.dispatch(req)
        except Exception as exc:  # a mock bug must still answer, loudly
            resp = odata_error(500, f"mock_mls internal error: {type(exc).__name__}: {exc}")
        self._send(req, resp)

    def _send(self, req: Request, resp: Response) -> None:
        app = self.server.app
        faults = app.faults
        kind = resp.kind
        reset = bool(kind) and faults.take("reset_mid_body", req.path) is not None
        truncate = kind in ("xml", "json", "multipart") and faults.take("truncated_body", req.path) is not None
        malformed = kind in ("xml", "json") and faults.take("malformed_xml", req.path) is not None
        if reset or truncate or malformed:
            data = b"".join(resp.chunks())
            for name, on in (("reset_mid_body", reset), ("truncated_body", truncate), ("malformed_xml", malformed)):
                if on:
                    app.stats.fault(name)
            if truncate:
                data = data[: max(1, len(data) // 2)]
            if malformed:
                cut = len(data) // 2
                data = data[:cut] + b"<<&BROKEN <DATA\x01>>" + data[cut:]
            resp.body = data
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if req.path.startswith("/rets/"):
                self.send_header("RETS-Version", app.settings.rets_version)
            if isinstance(resp.body, bytes):
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if reset:
                    self._reset(resp.body[: len(resp.body) // 2])
                    return
                # counted before the reply goes out: a client that has read the whole reply must
                # find it in the counters (counted after, a fast client read them first)
                app.stats.add("bytes_sent", len(resp.body))
                self.wfile.write(resp.body)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                for chunk in resp.chunks():
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                app.stats.add("bytes_sent", sent)  # before the last chunk ends the reply, as above
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reset(self, partial: bytes) -> None:
        """Write part of the body, then close with SO_LINGER 0 so the client sees a TCP RST."""
        with contextlib.suppress(OSError):
            self.wfile.write(partial)
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            super().handle()

