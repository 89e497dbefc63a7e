"""Validated provider configs kept on disk between DAG-file parses, keyed by each YAML's stamp.

The dag-processor parses the DAG file in a fresh process every few seconds; reading and validating
every provider YAML each time (libyaml + pydantic, ~1.5 ms a provider) grew with the number of
providers. Here a YAML whose path, size and modification time are unchanged is not read again.

The cache is a pickle, so it is only ever read from a directory this user owns and nobody else
may write (a planted file would run code); anything unexpected means "no cache", never an error.
The key includes this package's config code, so a new version never reads an old entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ENV_VAR = "MLS_CONFIG_CACHE_DIR"
Stamp = tuple[str, int, int]  # path, mtime_ns, size


def _code_version() -> str:
    """Changes when the code that validates configs changes (or the Python/pydantic running it)."""
    import pydantic

    from mls_sync import config

    src = Path(config.__file__).stat()
    return f"{sys.version_info[:2]}|{pydantic.VERSION}|{src.st_mtime_ns}|{src.st_size}"


def cache_dir() -> Path | None:
    """MLS_CONFIG_CACHE_DIR, else AIRFLOW_HOME/cache, else the user's cache directory; None when unsafe."""
    chosen = os.environ.get(ENV_VAR)
    if chosen:
        d = Path(chosen)
    elif os.environ.get("AIRFLOW_HOME"):
        d = Path(os.environ["AIRFLOW_HOME"]) / "cache"
    else:
        d = Path.home() / ".cache" / "mls_sync"
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = d.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return d


def _file_for(directory: Path, mappings: Path) -> Path:
    digest = hashlib.sha256(str(mappings.resolve()).encode()).hexdigest()[:16]
    return directory / f"provider_configs_{digest}.pickle"


def read(mappings: Path) -> dict[Stamp, Any]:
    """Cached entries for one mappings directory: stamp -> ProviderConfig or an error message."""
    d = cache_dir()
    if d is None:
        return {}
    path = _file_for(d, mappings)
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return {}
        with path.open("rb") as f:
            version, entries = pickle.load(f)  # noqa: S301 (our own file, in a directory only we can write)
    except (OSError, EOFError, pickle.PickleError, ValueError, TypeError, AttributeError, ImportError):
        return {}
    return entries if version == _code_version() and isinstance(entries, dict) else {}


def write(mappings: Path, entries: dict[Stamp, Any]) -> None:
    """Replace the cache atomically (a concurrent reader sees the old file or the new, whole)."""
    d = cache_dir()
    if d is None:
        return
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".provider_configs_")
        with os.fdopen(fd, "wb") as f:
            pickle.dump((_code_version(), entries), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, _file_for(d, mappings))
    except (OSError, pickle.PickleError, TypeError, AttributeError):
        log.debug("could not write the provider config cache in %s", d, exc_info=True)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
