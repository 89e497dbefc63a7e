"""docker-compose.yaml read as the one definition of the stack, and turned into native processes.

`make stack`, `make airflow`, the tests on a real Airflow and `make bench` run the compose file's
services as processes on 127.0.0.1. Each Airflow service's command and environment are taken
from the file here, so the two cannot drift; what has to differ off Docker is said below, key by
key, with its reason, and tests/integration/test_compose.py holds the two side by side.

Reading: YAML anchors and merge keys (PyYAML), then compose's variable interpolation
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$` for a literal `$`). `docker-compose
config` renders the file the same way (the test compares both where docker-compose is installed).

Mapping to native: every URL whose host is a compose service is pointed at the native endpoint
(databases and the broker: all but the scheme; HTTP services: scheme, host and port), and every
container path under a volume mount at the folder that stands for it. A URL naming a compose
service without a native endpoint is an error, not something left pointing nowhere.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from devstack import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yaml"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")
# compose services reached by URL whose whole address (user, password, host, port, database) is
# replaced natively; the others (HTTP) keep their path and query
_DATASTORES = frozenset({"postgres", "properties-db", "redis"})

# Flags added to a compose command natively, with why. Nothing else may differ.
NATIVE_FLAGS: dict[str, tuple[str, ...]] = {
    # Airflow's log servers bind every interface; natively all processes share one log folder, so
    # the API server reads task logs from disk and nothing listens beyond loopback.
    "airflow-scheduler": ("--skip-serve-logs",),
    "airflow-triggerer": ("--skip-serve-logs",),
    # each container has its own host name; several workers on one machine need their own
    # (the flag is appended per worker with its name)
    "airflow-worker": ("--skip-serve-logs", "--celery-hostname"),
}

# Keys natively set that the compose file does not have, with why.
NATIVE_ONLY_ENV = {
    "AIRFLOW_HOME": "the image's /opt/airflow: logs and the auth folder live under it",
    "PYTHONPATH": "the image installs the package (pip install -e .) and sets PYTHONPATH=/opt/mls",
    "AIRFLOW__API__HOST": "the container listens on 8080 of its own address; natively 127.0.0.1",
    "AIRFLOW__API__PORT": "a free port instead of the container's 8080",
    "AIRFLOW__API__WORKERS": "one API server worker on a 2-core machine",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "the health check server binds loopback",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "a free port instead of the container's 8974",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX":
        "Redis may be the machine's, shared: this stack's keys carry their own prefix",
    "AWS_EC2_METADATA_DISABLED": "boto3 must not look for an instance role off EC2 (moto takes any key)",
}
# Worker-only keys natively (one per worker process)
WORKER_ENV = {
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "each worker reports its own host name on its task instances",
    "MLS_TOPOLOGY_WORKER_HOSTNAME": "the name that callable returns",
    "TMPDIR": "the worker's own scratch folder, like a host's /tmp: nothing in it is seen by another worker",
}

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+")


def interpolate(text: str, variables: Mapping[str, str], *, unescape: bool = True) -> str:
    """compose's interpolation of one string; `$$` stays `$$` when `unescape` is False (as
    `docker-compose config` prints it) and becomes `$` for running the command."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$" if unescape else "$$"
        name = m.group("braced") or m.group("bare")
        value = variables.get(name)
        op = m.group("op")
        if op == ":-" and not value:
            return m.group("default")
        if op == "-" and value is None:
            return m.group("default")
        return value or ""

    if re.search(r"\$\{[^}]*:?[?+]", text):
        raise ValueError(f"compose interpolation form not supported here: {text!r}")
    return _VAR.sub(one, text)


def _walk(node: Any, variables: Mapping[str, str], unescape: bool) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables, unescape=unescape)
    if isinstance(node, list):
        return [_walk(x, variables, unescape) for x in node]
    if isinstance(node, dict):
        return {k: _walk(v, variables, unescape) for k, v in node.items()}
    return node


def load(variables: Mapping[str, str], *, unescape: bool = True, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file with anchors merged and variables interpolated (extension fields dropped)."""
    raw = yaml.safe_load(path.read_text())
    raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
    return _walk(raw, variables, unescape)


def argv(command: Any) -> list[str]:
    """A compose `command` as an argument list (a string is split the way compose splits it)."""
    return shlex.split(command) if isinstance(command, str) else [str(x) for x in command or []]


def environment(config: Mapping[str, Any], service: str) -> dict[str, str]:
    env = config["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Endpoints:
    """Where the compose services' addresses point natively (each a URL)."""

    postgres: str  # Airflow's metadata database, any driver (the scheme is kept from compose)
    properties_db: str
    redis: str
    minio: str  # http://127.0.0.1:<port>
    mock_mls: str
    apiserver: str

    def of(self, service: str) -> str | None:
        return {"postgres": self.postgres, "properties-db": self.properties_db, "redis": self.redis,
                "minio": self.minio, "mock-mls": self.mock_mls,
                "airflow-apiserver": self.apiserver}.get(service) or None


def executor_overrides(config: Mapping[str, Any], executor: str) -> dict[str, str | None]:
    """Compose keys to change for another executor than the file's: the executor, and (off Celery)
    no broker, result backend or worker settings."""
    if executor == environment(config, "airflow-scheduler")["AIRFLOW__CORE__EXECUTOR"]:
        return {}
    celery = {k: None for k in environment(config, "airflow-scheduler") if k.startswith("AIRFLOW__CELERY__")}
    return {"AIRFLOW__CORE__EXECUTOR": executor, **celery}


def _mounts(config: Mapping[str, Any], service: str, volumes_dir: Path) -> list[tuple[str, str]]:
    """(container path, native folder) of the service's mounts, longest container path first."""
    out = []
    for spec in config["services"][service].get("volumes") or []:
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            native = (ROOT / source).resolve() if source.startswith(".") else Path(source)
        else:  # a named volume: a folder of its own
            native = volumes_dir / source
        out.append((target, str(native)))
    return sorted(out, key=lambda m: -len(m[0]))


def _rebase(url: str, native: str, datastore: bool) -> str:
    old, new = urlsplit(url), urlsplit(native)
    if datastore:
        return urlunsplit((old.scheme, new.netloc, new.path, new.query, ""))
    return urlunsplit((old.scheme, new.netloc, old.path, old.query, old.fragment))


def to_native(value: str, config: Mapping[str, Any], service: str, endpoints: Endpoints, volumes_dir: Path) -> str:
    """One compose value with service addresses and container paths replaced by native ones."""
    services = set(config["services"])

    def url(m: re.Match[str]) -> str:
        text = m.group(0)
        host = urlsplit(text).hostname
        if host not in services:
            return text
        native = endpoints.of(host)
        if native is None:
            raise ValueError(f"{service}: {text} names compose service {host!r}, which has no native endpoint")
        return _rebase(text, native, host in _DATASTORES)

    value = _URL.sub(url, value)
    for target, native in _mounts(config, service, volumes_dir):
        if value == target or value.startswith(target + "/"):
            return native + value[len(target):]
    return value


def native_env(config: Mapping[str, Any], service: str, endpoints: Endpoints, volumes_dir: Path) -> dict[str, str]:
    """The service's compose environment, every key kept, values pointed at native endpoints."""
    return {k: to_native(v, config, service, endpoints, volumes_dir)
            for k, v in environment(config, service).items()}


def native_command(config: Mapping[str, Any], service: str, airflow: str) -> list[str]:
    """`airflow <compose command>` plus the declared native flags (values appended by the caller)."""
    return [airflow, *argv(config["services"][service].get("command")), *NATIVE_FLAGS.get(service, ())]


def init_script(config: Mapping[str, Any]) -> str:
    """airflow-init's script (its entrypoint is bash -c): run natively as it is."""
    svc = config["services"]["airflow-init"]
    if svc.get("entrypoint") != ["/bin/bash", "-c"]:
        raise ValueError("airflow-init no longer runs a bash script; update devstack/compose.py")
    return svc["command"] if isinstance(svc["command"], str) else svc["command"][0]


def mock_args(config: Mapping[str, Any]) -> list[str]:
    """mock-mls's arguments without the address it binds (natively 127.0.0.1 and a free port)."""
    args = argv(config["services"]["mock-mls"]["command"])
    if args[:3] != ["python", "-m", "mock_mls"]:
        raise ValueError(f"mock-mls no longer runs python -m mock_mls: {args}")
    out, skip = [], False
    for a in args[3:]:
        if skip:
            skip = False
        elif a in ("--host", "--port"):
            skip = True
        elif a != "--control":
            out.append(a)
    return out
