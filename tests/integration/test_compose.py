"""docker-compose.yaml as docker-compose renders it: the wiring users rely on, checked without Docker.

`docker-compose config` resolves anchors, `${VAR}` interpolation and relative paths exactly as
`docker-compose up` would, so these assertions hold for the stack users start. The airflow-init
script is run by bash here too (with `airflow` stubbed) to check its refusal of missing secrets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devstack import ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="needs docker-compose: apt-get install docker-compose")

AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker")
LONG_RUNNING = ("postgres", "properties-db", "redis", "minio", "mock-mls", *AIRFLOW_SERVICES[1:])
SECRETS = {
    "AIRFLOW_ADMIN_PASSWORD": "adminpw-test-1", "AIRFLOW_DB_PASSWORD": "afdbpw-test-2",
    "PROPERTIES_DB_PASSWORD": "propspw-test-3", "REDIS_PASSWORD": "redispw-test-4",
    "AIRFLOW_FERNET_KEY": "fernet-test-5", "AIRFLOW_JWT_SECRET": "jwt-test-6",
    "AIRFLOW_API_SECRET_KEY": "apikey-test-7", "MINIO_ROOT_USER": "minio-user-8",
    "MINIO_ROOT_PASSWORD": "miniopw-test-9",
}


def _compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    return subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yaml"), "--env-file", str(env_file), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**SECRETS, "MLS_MEDIA_BUCKET": "photos-test"}.items()))
    done = _compose("config", env_file=env_file)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _env(config: dict[str, Any], service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (config["services"][service].get("environment") or {}).items()}


def _host_ip(port: Any) -> str:
    """The host address of a published port, in either form compose versions render."""
    if isinstance(port, dict):
        return str(port.get("host_ip"))
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else ""


def _argv(command: Any) -> list[str]:
    return command.split() if isinstance(command, str) else list(command or [])


def test_config_is_valid_without_an_env_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = _compose("config", "--quiet", env_file=empty)
    assert done.returncode == 0, done.stderr


def test_services_networks_volumes(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "properties-db", "redis", "minio", "minio-init", "mock-mls",
                                       *AIRFLOW_SERVICES}
    assert set(config["volumes"]) >= {"airflow-db", "properties-db", "minio-data", "airflow-logs", "airflow-auth"}
    for name, svc in config["services"].items():
        assert set(svc["networks"]) == {"mls"}, name
        for port in svc.get("ports", []):  # published to the host's loopback only
            assert _host_ip(port) == "127.0.0.1", (name, port)
    published = {n for n, s in config["services"].items() if s.get("ports")}
    assert published == {"airflow-apiserver", "minio"}
    for name in LONG_RUNNING:
        assert config["services"][name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_airflow_services_share_one_image_and_env(config: dict[str, Any]) -> None:
    common = _env(config, "airflow-scheduler")
    images = {config["services"][s]["image"] for s in AIRFLOW_SERVICES}
    assert images == {config["services"]["mock-mls"]["image"]} and len(images) == 1
    for svc in AIRFLOW_SERVICES:
        env = _env(config, svc)
        assert {k: env.get(k) for k in common} == common, f"{svc} differs from the shared environment"
        assert config["services"][svc]["build"]["context"] == str(ROOT)
        mounts = config["services"][svc]["volumes"]
        for folder in ("dags", "plugins", "include"):
            assert f"{ROOT / folder}:/opt/mls/{folder}:ro" in mounts, (svc, mounts)
        assert "airflow-logs:/opt/airflow/logs:rw" in mounts, svc
    commands = {s: _argv(config["services"][s].get("command")) for s in AIRFLOW_SERVICES[1:]}
    assert commands == {"airflow-apiserver": ["api-server"], "airflow-scheduler": ["scheduler"],
                        "airflow-dag-processor": ["dag-processor"], "airflow-triggerer": ["triggerer"],
                        "airflow-worker": ["celery", "worker"]}


def test_celery_executor_wiring(config: dict[str, Any]) -> None:
    env = _env(config, "airflow-worker")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port, broker.password) == (
        "redis", "redis", 6379, SECRETS["REDIS_PASSWORD"])
    meta = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    result = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert result.scheme == "db+postgresql" and meta.scheme == "postgresql+psycopg2"
    assert (result.hostname, result.path, result.password) == (meta.hostname, meta.path, meta.password) == (
        "postgres", "/airflow", SECRETS["AIRFLOW_DB_PASSWORD"])
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["AIRFLOW_FERNET_KEY"]
    assert env["DUMB_INIT_SETSID"] == "0"  # warm shutdown of the worker
    redis = config["services"]["redis"]
    assert _env(config, "redis")["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert "--requirepass" in " ".join(redis["command"])
    assert _env(config, "postgres") == {"POSTGRES_USER": "airflow", "POSTGRES_DB": "airflow",
                                        "POSTGRES_PASSWORD": SECRETS["AIRFLOW_DB_PASSWORD"]}


def test_properties_database_is_separate(config: dict[str, Any]) -> None:
    url = urlsplit(_env(config, "airflow-worker")["AIRFLOW_CONN_MLS_PROPERTIES_DB"])
    db = _env(config, "properties-db")
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "properties-db", 5432)
    assert (url.username, url.password, url.path) == (db["POSTGRES_USER"], db["POSTGRES_PASSWORD"],
                                                      f"/{db['POSTGRES_DB']}")
    assert db["POSTGRES_PASSWORD"] == SECRETS["PROPERTIES_DB_PASSWORD"]
    assert config["services"]["properties-db"]["volumes"] != config["services"]["postgres"]["volumes"]


def test_media_storage_is_minio_with_its_bucket(config: dict[str, Any]) -> None:
    env = _env(config, "airflow-worker")
    storage = json.loads(env["MLS_MEDIA_STORAGE"])
    assert storage == {"backend": "s3", "bucket": "photos-test", "endpoint_url": "http://minio:9000",
                       "region_name": "us-east-1", "aws_conn_id": "aws_default"}
    from mls_sync.objectstore import store_from_settings

    store_from_settings(storage, s3_client_factory=lambda _s: object())  # the engine accepts every key
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert (aws["conn_type"], aws["login"], aws["password"]) == (
        "aws", SECRETS["MINIO_ROOT_USER"], SECRETS["MINIO_ROOT_PASSWORD"])
    init = config["services"]["minio-init"]
    assert _env(config, "minio-init")["MLS_MEDIA_BUCKET"] == "photos-test"
    assert 'mc mb --ignore-existing "local/$$MLS_MEDIA_BUCKET"' in init["command"][0]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert config["services"]["airflow-init"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"}


def test_demo_connections_reach_the_mock(config: dict[str, Any]) -> None:
    from mls_sync.config import find_provider

    from mock_mls.control import Settings

    mock = config["services"]["mock-mls"]
    cmd = " ".join(_argv(mock["command"]))
    assert re.search(r"python -m mock_mls --host 0\.0\.0\.0 --port 8000 --control\b", cmd), cmd
    assert not any(k.startswith(("AIRFLOW", "MINIO", "REDIS")) for k in _env(config, "mock-mls"))
    env = _env(config, "airflow-worker")
    creds = Settings()
    for pid, path, user, pw in (("demo_rets", "/rets/login", creds.username, creds.password),
                                ("demo_reso", "/reso/odata", creds.client_id, creds.client_secret)):
        conn_id = find_provider(pid, ROOT / "include" / "mappings").connection_id
        conn = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
        assert conn["host"] == f"http://mock-mls:8000{path}"
        assert (conn["login"], conn["password"]) == (user, pw)
    rets = json.loads(env["AIRFLOW_CONN_MLS_DEMO_RETS"])["extra"]
    assert (rets["user_agent"], rets["ua_password"]) == (creds.user_agent, creds.ua_password)
    reso = json.loads(env["AIRFLOW_CONN_MLS_DEMO_RESO"])["extra"]
    assert reso["token_url"] == "http://mock-mls:8000/reso/oauth2/token"


def test_start_order(config: dict[str, Any]) -> None:
    svc = config["services"]
    init_deps = svc["airflow-init"]["depends_on"]
    for db in ("postgres", "properties-db", "redis"):
        assert init_deps[db] == {"condition": "service_healthy"}
    for name in AIRFLOW_SERVICES[1:]:
        deps = svc[name]["depends_on"]
        assert deps["airflow-init"] == {"condition": "service_completed_successfully"}, name
    assert svc["airflow-worker"]["depends_on"]["mock-mls"] == {"condition": "service_healthy"}
    assert svc["airflow-worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    assert svc["airflow-init"]["restart"] == "no" and svc["minio-init"]["restart"] == "no"
    # airflow-init writes the simple auth manager's passwords file; only the API server reads it
    holders = {n for n, s in svc.items() if "airflow-auth:/opt/airflow/auth:rw" in s.get("volumes", [])}
    assert holders == {"airflow-init", "airflow-apiserver"}


def test_secrets_only_from_the_environment(config: dict[str, Any]) -> None:
    raw = (ROOT / "docker-compose.yaml").read_text()
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for name in SECRETS:
        assert example.get(name) == "", f".env.example must leave {name} empty"
        assert f"${{{name}:-}}" in raw, f"{name} must come from the environment with no default"
    rendered = yaml.safe_dump(config)
    for name, value in SECRETS.items():
        assert value in rendered, name
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _init_script(config: dict[str, Any]) -> str:
    svc = config["services"]["airflow-init"]
    assert svc["entrypoint"] == ["/bin/bash", "-c"]
    return svc["command"][0].replace("$$", "$")


def _run_init(script: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "airflow").write_text('#!/bin/sh\necho "airflow $*" >> "$CALLS"\n')
    (stubs / "python").write_text('#!/bin/sh\nif [ "$1" = "-m" ]; then echo "python $*" >> "$CALLS"; exit 0; fi\n'
                                  f'exec {sys.executable} "$@"\n')
    for f in stubs.iterdir():
        f.chmod(0o755)
    full = {"PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"), **env}
    return subprocess.run(["bash", "-c", script], env=full, capture_output=True, text=True, timeout=60)


def test_init_refuses_missing_secrets_then_migrates_and_makes_pools(config: dict[str, Any], tmp_path: Path) -> None:
    script = _init_script(config)
    assert subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0
    env = _env(config, "airflow-init")
    pw_file = tmp_path / "passwords.json"
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(pw_file)

    missing = _run_init(script, tmp_path, {**env, "REDIS_PASSWORD": "", "AIRFLOW_JWT_SECRET": ""})
    assert missing.returncode == 1
    assert "REDIS_PASSWORD AIRFLOW_JWT_SECRET" in missing.stderr and not pw_file.exists()

    done = _run_init(script, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "airflow db migrate", "python -m mls_sync_airflow.setup", "airflow dags list-import-errors --local"]
    assert json.loads(pw_file.read_text()) == {"admin": SECRETS["AIRFLOW_ADMIN_PASSWORD"]}
    assert pw_file.stat().st_mode & 0o077 == 0


def test_dockerfile_builds_the_package_on_airflow() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:3\.3\.2-python3\.11$", text, re.M)
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps -e ." in text
    reqs = (ROOT / "requirements.txt").read_text()
    for pin in ("apache-airflow==3.3.2", "apache-airflow-providers-celery==", "celery[redis]==", "redis=="):
        assert pin in reqs, pin
    # the image gets the runtime only; tests, benchmarks and the demo's embedded server stay out
    pins = [line for line in reqs.splitlines() if line and not line.startswith("#")]
    assert all("==" in line for line in pins), pins
    for dev in ("pytest", "moto", "playwright", "ruff", "pgserver", "psycopg2-binary", "rets=="):
        assert not any(line.startswith(dev) for line in pins), dev
    dev_reqs = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev_reqs
    assert all("==" in line for line in dev_reqs if line and not line.startswith(("#", "-r")))
