"""The native stack (make stack, make airflow, the tests on a real Airflow) is docker-compose.yaml's.

devstack/compose.py reads the compose file and devstack/topology.py starts its services from it.
These tests hold the two side by side: the reader renders the file as `docker-compose config`
does, and each native service runs the compose command with the compose environment, differing
only where compose.py declares it (addresses, container paths, loopback binding).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devstack import ROOT
from devstack import compose as cf
from devstack.topology import AIRFLOW, airflow_services, clean_env, generated_secrets, worker_hostnames

VARIABLES = {**generated_secrets(), "AIRFLOW_ADMIN_USER": "admin", "AIRFLOW_BASE_URL": "http://127.0.0.1:18080",
             "MLS_MEDIA_BUCKET": "bucket-x", "MOCK_LISTINGS": "77"}
ENDPOINTS = cf.Endpoints(postgres="postgresql://postgres@127.0.0.1:5432/af_x",
                         properties_db="postgresql://postgres@127.0.0.1:5432/props_x",
                         redis="redis://:pw@127.0.0.1:16379/0", minio="http://127.0.0.1:19000",
                         mock_mls="http://127.0.0.1:18000", apiserver="http://127.0.0.1:18080")
SERVICE_OF = {"api-server": "airflow-apiserver", "scheduler": "airflow-scheduler",
              "dag-processor": "airflow-dag-processor", "triggerer": "airflow-triggerer",
              "celery-worker-1": "airflow-worker", "celery-worker-2": "airflow-worker",
              "airflow-init": "airflow-init"}
COMPOSE_HOSTS = ("postgres:", "properties-db:", "redis:", "minio:", "mock-mls:", "airflow-apiserver:")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    home = tmp_path_factory.mktemp("native")
    config = cf.load(VARIABLES)
    services = airflow_services(config, ENDPOINTS, home, port=18080, workers=worker_hostnames(2),
                                key_prefix="mls-stack-x:")
    return config, services, home


def test_reader_renders_the_file_as_docker_compose_does(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("needs docker-compose to check the reader against it (Debian: apt-get install docker-compose)")
    env_file = tmp_path / "native.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in VARIABLES.items()))
    done = subprocess.run([compose, "-f", str(cf.COMPOSE_FILE), "--env-file", str(env_file), "config"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import yaml

    theirs = yaml.safe_load(done.stdout)
    ours = cf.load(VARIABLES, unescape=False)
    assert set(ours["services"]) == set(theirs["services"])
    for name, svc in theirs["services"].items():
        assert cf.environment(ours, name) == cf.environment(theirs, name), name
        assert cf.argv(ours["services"][name].get("command")) == cf.argv(svc.get("command")), name
        targets = sorted(v.split(":")[1] for v in ours["services"][name].get("volumes") or [])
        assert targets == sorted(v.split(":")[1] for v in svc.get("volumes") or []), name


def test_each_native_service_runs_the_compose_command(native: tuple) -> None:
    config, services, _ = native
    for name, svc in services.items():
        compose = SERVICE_OF[name]
        if name == "airflow-init":
            assert svc.cmd == ["bash", "-c", cf.init_script(config)]
            assert "airflow db migrate\n" in svc.cmd[2] and "$$" not in svc.cmd[2]
            continue
        args = cf.argv(config["services"][compose]["command"])
        extra = list(cf.NATIVE_FLAGS.get(compose, ()))
        if compose == "airflow-worker":
            hostname = svc.env["MLS_TOPOLOGY_WORKER_HOSTNAME"]
            extra.append(f"{hostname}@127.0.0.1")
        assert svc.cmd == [AIRFLOW, *args, *extra], name
    assert cf.NATIVE_FLAGS["airflow-worker"][-1] == "--celery-hostname"
    assert cf.mock_args(config) == ["--seed", "1", "--listings", "77", "--photos-per-listing", "3"]


def test_each_native_service_has_the_compose_environment(native: tuple) -> None:
    config, services, home = native
    for name, svc in services.items():
        compose_env = cf.environment(config, SERVICE_OF[name])
        ours = svc.env
        # every compose key; beyond them only the declared native keys and the caller's own
        # environment (PATH, HOME ...; Airflow, MLS and AWS settings are stripped from it)
        assert set(compose_env) <= set(ours), (name, set(compose_env) - set(ours))
        added = set(ours) - set(compose_env) - set(clean_env())
        assert added <= set(cf.NATIVE_ONLY_ENV) | set(cf.WORKER_ENV), (name, added)
        assert not {k for k in clean_env() if k.startswith(("AIRFLOW", "_AIRFLOW", "MLS_", "AWS_"))}
        for key, value in compose_env.items():
            mine = ours[key]
            if not any(h in value for h in COMPOSE_HOSTS) and not value.startswith("/opt/"):
                assert mine == value, (name, key)  # plain settings are the compose file's own
            assert not any(f"//{h}" in mine or f"@{h}" in mine for h in COMPOSE_HOSTS), (name, key, mine)
    env = services["celery-worker-1"].env
    meta, result, broker = (urlsplit(env[k]) for k in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                                                       "AIRFLOW__CELERY__RESULT_BACKEND",
                                                       "AIRFLOW__CELERY__BROKER_URL"))
    assert (meta.scheme, meta.netloc, meta.path) == ("postgresql+psycopg2", "postgres@127.0.0.1:5432", "/af_x")
    assert (result.scheme, result.netloc, result.path) == ("db+postgresql", "postgres@127.0.0.1:5432", "/af_x")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == ENDPOINTS.redis and broker.scheme == "redis"
    assert env["AIRFLOW_CONN_MLS_PROPERTIES_DB"] == ENDPOINTS.properties_db
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    storage = json.loads(env["MLS_MEDIA_STORAGE"])
    assert storage == {"backend": "s3", "bucket": "bucket-x", "endpoint_url": ENDPOINTS.minio,
                       "region_name": "us-east-1", "aws_conn_id": "aws_default"}
    rets = json.loads(env["AIRFLOW_CONN_MLS_DEMO_RETS"])
    assert rets["host"] == "http://127.0.0.1:18000/rets/login" and rets["login"] == "mockuser"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == VARIABLES["AIRFLOW_FERNET_KEY"]
    # only the API server and airflow-init mount the auth volume: the passwords file is theirs
    auth = str(home / "volumes" / "airflow-auth" / "simple_auth_manager_passwords.json")
    assert services["api-server"].env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == auth
    assert services["airflow-init"].env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == auth
    # every worker is its own host: own name, own scratch folder and working directory
    w1, w2 = services["celery-worker-1"], services["celery-worker-2"]
    assert w1.env["MLS_TOPOLOGY_WORKER_HOSTNAME"] != w2.env["MLS_TOPOLOGY_WORKER_HOSTNAME"]
    assert w1.cwd != w2.cwd and w1.env["TMPDIR"].startswith(str(w1.cwd))
    # nothing binds beyond loopback
    api = services["api-server"].env
    assert api["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert api["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


def test_make_airflow_changes_only_the_executor_and_the_stores(tmp_path: Path) -> None:
    config = cf.load(VARIABLES)
    overrides = {**cf.executor_overrides(config, "LocalExecutor"), "AIRFLOW_CONN_MLS_PROPERTIES_DB": None,
                 "AIRFLOW_CONN_AWS_DEFAULT": None, "MLS_MEDIA_STORAGE": '{"backend": "local", "root": "/x"}'}
    local = cf.Endpoints(postgres=ENDPOINTS.postgres, properties_db=ENDPOINTS.properties_db, redis="", minio="",
                         mock_mls=ENDPOINTS.mock_mls, apiserver=ENDPOINTS.apiserver)
    services = airflow_services(config, local, tmp_path, port=18080, workers=[], key_prefix=None, overrides=overrides)
    assert "celery-worker" not in services
    env = services["scheduler"].env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not any(k.startswith("AIRFLOW__CELERY") for k in env)
    assert "AIRFLOW_CONN_MLS_PROPERTIES_DB" not in env and env["MLS_MEDIA_STORAGE"].startswith('{"backend": "local"')
    # with Celery's keys still in, a broker address that has no native endpoint is refused, not left dangling
    with pytest.raises(ValueError, match="redis"):
        airflow_services(config, local, tmp_path, port=18080, workers=[], key_prefix=None,
                         overrides={k: v for k, v in overrides.items() if not k.startswith("AIRFLOW__CELERY")})


def test_interpolation_follows_compose() -> None:
    v = {"SET": "x", "EMPTY": ""}
    assert cf.interpolate("${SET}-${EMPTY:-d}-${EMPTY-d}-${UNSET-d}-${UNSET:-d}-$SET-$$SET", v) == "x-d--d-d-x-$SET"
    assert cf.interpolate("$$HOSTNAME", v, unescape=False) == "$$HOSTNAME"
    with pytest.raises(ValueError, match="not supported"):
        cf.interpolate("${SET:?missing}", v)
