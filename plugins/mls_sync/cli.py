"""`mls-sync`: diagnostics against any MLS the engine can talk to, without Airflow.

Every subcommand goes through `mls_sync.sources.open_source`, i.e. the same Source code the
DAGs run, so "it works from the CLI" means "the sync will see the same thing". The CLI knows no
protocol: a provider YAML (or explicit RETS arguments for an MLS that has none yet) picks it.

Exit codes: 0 ok, 2 usage or configuration (also: the server does not answer as configured, or
server metadata that cannot be used), 3 authentication, 4 server or network (MLS or photo storage),
5 refused because another run is syncing the provider, 6 database error, 1 unexpected error (a bug),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mls_sync.sources.base import AuthError, MismatchError, PhotoObject, SearchCriteria, Source, SourceError

if TYPE_CHECKING:
    from mls_sync.config import ProviderConfig

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_SERVER, EXIT_BUSY, EXIT_DATABASE = 0, 2, 3, 4, 5, 6
EXIT_BUG, EXIT_INTERRUPTED = 1, 130
Command = Callable[[argparse.Namespace, Source], int]


class UsageError(Exception):
    """Bad arguments or configuration: exit 2 with this message."""


# -- opening a source -----------------------------------------------------------------------------
def _explicit_provider(args: argparse.Namespace) -> tuple[ProviderConfig, Any]:
    """A minimal RETS ProviderConfig + Connection for an MLS with no YAML yet."""
    from mls_sync.config import ProviderConfig
    from mls_sync.connections import Connection

    if not (args.username and args.password is not None):
        raise UsageError("--login-url needs --username and --password")
    rets: dict[str, Any] = {"format": args.format or "COMPACT-DECODED"}
    for name in ("resource", "class_"):
        value = getattr(args, name, None)
        if value:
            rets["class" if name == "class_" else name] = value
    provider = ProviderConfig.model_validate({
        "provider_id": "cli_rets", "name": "mls-sync CLI (explicit arguments)", "protocol": "rets",
        "connection_id": "cli_rets", "rets": rets,
        "source_fields": {"key": args.key_field, "modified": args.modified_field},
        "fields": {args.key_field: {"column": "listing_key"}},
    })
    provider = _with_attempts(provider, args.attempts)
    extra = {k: v for k, v in (("user_agent", args.user_agent), ("ua_password", args.ua_password),
                               ("rets_version", args.rets_version)) if v}
    conn = Connection(conn_id="cli_rets", host=args.login_url, login=args.username,
                      password=args.password, extra=extra)
    return provider, conn


def _with_attempts(provider: ProviderConfig, attempts: int | None) -> ProviderConfig:
    """`--attempts` over the provider's limits, validated like the YAML's value."""
    from pydantic import ValidationError

    if attempts is None:
        return provider
    try:
        limits = type(provider.limits).model_validate({**provider.limits.model_dump(), "request_attempts": attempts})
    except ValidationError as exc:
        raise UsageError(f"--attempts {attempts}: {exc.errors()[0]['msg']} (attempts per request, "
                         "retries + 1)") from None
    return provider.model_copy(update={"limits": limits})


def provider_from_args(args: argparse.Namespace) -> ProviderConfig:
    """The --provider YAML with the command line's overrides (--attempts)."""
    from mls_sync.config import find_provider

    return _with_attempts(find_provider(args.provider), args.attempts)


def open_from_args(args: argparse.Namespace) -> Source:
    """--provider NAME (YAML + AIRFLOW_CONN_<ID>) or explicit --login-url arguments."""
    from mls_sync.config import ConfigError
    from mls_sync.connections import ConnectionNotFound, lookup
    from mls_sync.sources import open_source

    try:
        if args.provider and args.login_url:
            raise UsageError("use either --provider or --login-url, not both")
        if args.provider:
            provider = provider_from_args(args)
            conn = lookup(provider.connection_id)
        elif args.login_url:
            provider, conn = _explicit_provider(args)
        else:
            raise UsageError("say which MLS: --provider NAME, or --login-url URL --username U --password P")
        return open_source(provider, conn)
    except (ConfigError, ConnectionNotFound) as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # pydantic ValidationError, bad connection fields
        raise UsageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


# -- subcommands ------------------------------------------------------------------------------------
def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r} is not an ISO timestamp (e.g. 2024-06-01T00:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def cmd_check(args: argparse.Namespace, source: Source) -> int:
    facts = source.check()
    print(json.dumps(facts, indent=2, default=_json_default))
    return EXIT_OK


def cmd_metadata(args: argparse.Namespace, source: Source) -> int:
    print(json.dumps(source.metadata(), indent=2, default=_json_default))
    return EXIT_OK


def cmd_search(args: argparse.Namespace, source: Source) -> int:
    criteria = SearchCriteria(
        modified_since=_since(args.since),
        select=tuple(s.strip() for s in (args.select or "").split(",") if s.strip()),
        raw_query=args.query,
    )
    key_field = provider_from_args(args).roles().key if args.provider else args.key_field
    written = keyless = 0
    out = sys.stdout
    try:
        for page in source.pages(criteria):
            for record in page.records:
                if args.limit is not None and written >= args.limit:
                    return EXIT_OK
                out.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
                written += 1
                keyless += record.get(key_field) in (None, "")
            out.flush()
    finally:
        if keyless:  # printed as the server sent them; a sync rejects them (mls_sync_errors)
            print(f"mls-sync: {keyless} of {written} records have no {key_field}; a sync rejects them",
                  file=sys.stderr)
    if args.verbose:
        print(f"{written} records", file=sys.stderr)
    return EXIT_OK


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _photo_name(photo: PhotoObject) -> str:
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}.get(
        (photo.content_type or "").lower(), "bin")
    return f"{_UNSAFE.sub('_', photo.listing_key)}-{photo.order:03d}.{ext}"


def cmd_photos(args: argparse.Namespace, source: Source) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for photo in source.photos(args.listing):
        if photo.data is None:
            failures += 1
            print(f"{photo.listing_key}\t{photo.order}\tERROR\t{photo.error or 'no data'}")
            continue
        path = out / _photo_name(photo)
        path.write_bytes(photo.data)
        print(f"{photo.listing_key}\t{photo.order}\t{len(photo.data)}\t{path}")
    return EXIT_OK if not failures else EXIT_SERVER


# -- parser ---------------------------------------------------------------------------------------
def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which MLS")
    g.add_argument("--provider", help="provider YAML name (include/mappings/NAME.yaml); the connection "
                                      "comes from AIRFLOW_CONN_<CONNECTION_ID>")
    g.add_argument("--login-url", help="RETS login URL, for an MLS without a YAML yet")
    g.add_argument("--username")
    g.add_argument("--password")
    g.add_argument("--user-agent")
    g.add_argument("--ua-password")
    g.add_argument("--rets-version", help="e.g. RETS/1.7.2 (default) or RETS/1.8")
    g.add_argument("--resource", help="RETS resource (default Property)")
    g.add_argument("--class", dest="class_", help="RETS class (default RE_1)")
    g.add_argument("--format", choices=("COMPACT", "COMPACT-DECODED"))
    g.add_argument("--key-field", default="ListingKey", help="key field for explicit RETS (default ListingKey)")
    g.add_argument("--modified-field", default="ModificationTimestamp",
                   help="modification timestamp field for explicit RETS")
    g.add_argument("--attempts", type=int, default=None, help="attempts per request (retries + 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="log in and print what the server says about itself")
    _source_args(p)
    p.set_defaults(handler=cmd_check)


def add_metadata(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metadata", help="print resources, classes, fields and lookups as JSON")
    _source_args(p)
    p.set_defaults(handler=cmd_metadata)


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="stream records as JSON Lines (server field names)")
    _source_args(p)
    p.add_argument("--query", "--filter", dest="query", help="DMQL2 (RETS) or OData $filter (RESO), ANDed")
    p.add_argument("--since", help="only records modified at or after this ISO timestamp (UTC if no zone)")
    p.add_argument("--select", help="comma-separated server field names")
    p.add_argument("--limit", type=int, help="stop after this many records")
    p.set_defaults(handler=cmd_search)


def add_photos(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("photos", help="download a listing's photos into a directory")
    _source_args(p)
    p.add_argument("--listing", action="append", required=True, help="listing key (repeatable)")
    p.add_argument("--out", required=True, help="directory to write the photos to")
    p.set_defaults(handler=cmd_photos)


def cmd_sync(args: argparse.Namespace, source: Source) -> int:
    """One whole sync run with the engine, no Airflow: the DAG's stages in the DAG's order.

    The run holds the provider's lease from plan to finalize with a heartbeat from this process,
    so a second run is refused (exit 5) while this one lives, and takes over once this process
    is gone. Whatever a stage raises, finalize closes the run before the error is reported; a
    SIGTERM or Ctrl-C closes it as cancelled.
    """
    from mls_sync import lease, sync
    from mls_sync.connections import lookup
    from mls_sync.run_options import RunOptionsError
    from mls_sync.store.db import DatabaseConfigError, get_engine, migrate

    if not args.provider:
        raise UsageError("sync needs --provider NAME (a YAML in include/mappings)")
    cfg = provider_from_args(args)
    try:
        engine = get_engine()
    except DatabaseConfigError as exc:
        raise UsageError(str(exc)) from None
    migrate(engine)
    ctx = sync.SyncContext(provider=cfg, db=engine, mls=lookup(cfg.connection_id))
    conf: dict[str, Any] = {"mode": args.mode, "dry_run": args.dry_run, "include_photos": not args.no_photos,
                            "listing_keys": args.listing or None, "postal_codes": args.postal_code or None}
    run_id = f"cli__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
    try:
        plan = sync.plan(ctx, dag_id=cfg.dag_id(), dag_run_id=run_id, conf=conf, trigger="manual",
                         process_bound=True)
    except RunOptionsError as exc:
        raise UsageError(str(exc)) from None
    failed: list[str] = []
    error: BaseException | None = None
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with lease.keep_alive(engine, ctx.t, plan["sync_id"]):
            try:
                from mls_sync.roster import sync_roster

                for name, stage in (("fetch", sync.fetch), ("transform_load", sync.transform_load),
                                    ("reconcile", sync.reconcile), ("sync_roster", sync_roster), ("media", _photos)):
                    if name == "media" and not plan["include_photos"]:
                        continue
                    try:
                        stage(ctx, plan)
                    except Exception as exc:  # recorded by the stage; finalize closes the run first
                        failed.append(name)
                        error = exc
                        break
            except KeyboardInterrupt:
                interrupted = True
            result = sync.finalize(ctx, plan, failed, cancelled=interrupted)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(result, default=str))
    if interrupted:
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return EXIT_OK if result["state"] == "success" else EXIT_SERVER


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM like Ctrl-C: stop the stage, close the run as cancelled, exit 130."""
    raise KeyboardInterrupt


def _photos(ctx: Any, plan: dict[str, Any]) -> None:
    """The media stage of a CLI run: every planned batch, one after the other."""
    from mls_sync import media, sync
    from mls_sync.objectstore import storage_settings, store_from_settings

    try:
        store = store_from_settings(storage_settings(ctx.provider.storage))
    except Exception as exc:
        sync.record_failure(ctx, plan, "media_batch", exc, {"photo_storage": "open"})
        raise
    for batch in media.plan_batches(ctx, plan):
        media.run_batch(ctx, plan, batch, store)


def add_sync(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="run one sync (plan, fetch, load, reconcile, roster, photos, finalize) "
                                    "into MLS_DATABASE_URL, without Airflow")
    _source_args(p)
    p.add_argument("--mode", choices=("auto", "full", "incremental", "reconcile"), default="auto")
    p.add_argument("--listing", action="append", help="partial sync: listing key (repeatable)")
    p.add_argument("--postal-code", action="append", help="partial sync: postal code (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="fetch and compare; write nothing")
    p.add_argument("--no-photos", action="store_true", help="skip the media stage")
    p.set_defaults(handler=cmd_sync)


# One function per subcommand.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_check, add_metadata, add_search,
                                                                   add_photos, add_sync]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mls-sync", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"mls-sync: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        source = open_from_args(args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        with source:
            return args.handler(args, source)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except MismatchError as exc:
        return _fail(f"the server does not answer as configured: {exc}", EXIT_USAGE)
    except AuthError as exc:
        return _fail(f"authentication failed: {exc}", EXIT_AUTH)
    except SourceError as exc:
        if getattr(exc, "category", "") == "config":  # e.g. a $metadata document that cannot be used
            return _fail(str(exc), EXIT_USAGE)
        if getattr(exc, "category", "") == "data":
            return _fail(f"the server rejected the request: {exc}", EXIT_USAGE)
        return _fail(f"server or network error: {exc}", EXIT_SERVER)
    except BrokenPipeError:  # `mls-sync search | head`
        return EXIT_OK
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        return _engine_failure(exc)


def _engine_failure(exc: Exception) -> int:
    """The engine's own errors (what `sync` meets besides the MLS's), one line each, no traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from mls_sync.config import ConfigError
    from mls_sync.connections import ConnectionNotFound
    from mls_sync.lease import RunConflict
    from mls_sync.objectstore import ObjectStoreConfigError, ObjectStoreError

    if isinstance(exc, RunConflict):
        return _fail(str(exc), EXIT_BUSY)
    if isinstance(exc, SQLAlchemyError):
        return _fail(f"database error: {_db_reason(exc)}", EXIT_DATABASE)
    if isinstance(exc, (ConfigError, ConnectionNotFound, ObjectStoreConfigError)):
        return _fail(str(exc).splitlines()[0], EXIT_USAGE)
    if isinstance(exc, (ObjectStoreError, OSError)):
        return _fail(f"photo storage error: {exc}", EXIT_SERVER)
    logging.getLogger("mls_sync.cli").info("unexpected error", exc_info=exc)
    return _fail(f"unexpected error (a bug; -v shows where): {type(exc).__name__}: {exc}", EXIT_BUG)


def _db_reason(exc: Exception) -> str:
    """The driver's first line (which says what happened), the database password masked."""
    import os

    from sqlalchemy.engine import make_url

    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    try:
        password = make_url(os.environ.get("MLS_DATABASE_URL", "")).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
