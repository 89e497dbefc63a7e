"""The docker-compose topology without Docker: every service as a child process on 127.0.0.1.

What docker-compose.yaml runs, started here on free loopback ports so an end-to-end test can drive
the real scheduler, Celery worker, pools and API server on a machine without a container engine:

    compose service      here
    mock-mls             python -m mock_mls --control
    minio (+ init)       moto's S3 server (moto_server) and a bucket
    redis                the machine's Redis on 127.0.0.1:6379, a dedicated db number, flushed
    postgres             the machine's PostgreSQL on 127.0.0.1:5432: a throwaway Airflow metadata
                         database (also the Celery result backend) and a throwaway properties one
    airflow-init         airflow db migrate; python -m mls_sync_airflow.setup (pools)
    airflow-apiserver    airflow api-server (simple auth manager, passwords file in AIRFLOW_HOME)
    airflow-scheduler    airflow scheduler --skip-serve-logs
    airflow-dag-processor airflow dag-processor
    airflow-worker       airflow celery worker --concurrency 2 --skip-serve-logs

Each long-running process gets its own session (process group) and is stopped by that id; the
helpers below are shared with tests/integration/test_admin_api.py. `python -m devstack.topology`
starts the stack and waits for Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import ROOT, airflow_env, free_port, mls_connections, mock_mls_process

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PG_ADMIN_URL = os.environ.get("MLS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MLS_TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379/9")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
WORKER_HOSTNAME = "mls-topology-celery-worker"
# Inherited settings that would aim our processes at someone else's Airflow, database or bucket.
_FOREIGN_ENV = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "MLS_DATABASE_URL", "MLS_MEDIA_STORAGE",
                "MLS_MAPPINGS_DIR", "AWS_")


# ---------------------------------------------------------------- process helpers (shared with test_admin_api)

def clean_env() -> dict[str, str]:
    """os.environ without Airflow/MLS/AWS settings, so a child sees only what we give it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}


def api_server_env(home: Path, port: int, passwords_file: Path, users: str = "admin:admin") -> dict[str, str]:
    """Settings for an API server on 127.0.0.1:port with the simple auth manager and fresh secrets.

    Every process of one deployment must share these (the scheduler signs task tokens with the
    same JWT secret the API server checks), so callers build the env once and pass it to all.
    """
    env = airflow_env(home)
    env.update({
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(24),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(24),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",  # Airflow's default: what operators see in task logs
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
    })
    return env


def run_cli(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> None:
    """Run a one-shot command (migrate, setup) to completion; its output goes to `log`."""
    with log.open("ab") as out:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a long-running service in its own session, so its whole process group can be stopped."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _exists(kill: Any, target: int) -> bool:
    """Signal 0 through `kill` (os.kill or os.killpg): whether the target exists, even if not ours."""
    try:
        kill(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group `pgid` still exists."""
    return _exists(os.killpg, pgid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (zombies of ours are reaped by Popen.wait)."""
    return _exists(os.kill, pid)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group the service leads, SIGKILL what is left after `timeout`."""
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return
        time.sleep(0.2)
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait until `url` answers 200; fail early, with the log's tail, if the process exits."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def api_server_cmd(port: int) -> list[str]:
    return [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


# ---------------------------------------------------------------- the topology

def worker_hostname() -> str:
    """Hostname a Celery worker's tasks report (AIRFLOW__CORE__HOSTNAME_CALLABLE in the workers only),
    so a test can tell which worker ran a task: each worker gets its own in its environment."""
    return os.environ.get("MLS_TOPOLOGY_WORKER_HOSTNAME", WORKER_HOSTNAME)


def worker_hostnames(workers: int) -> list[str]:
    return [WORKER_HOSTNAME] if workers == 1 else [f"{WORKER_HOSTNAME}-{i + 1}" for i in range(workers)]


@dataclass
class Topology:
    """A running stack: where each service answers, and the processes to stop."""

    home: Path
    api_url: str
    mock_url: str
    s3_endpoint: str
    bucket: str
    airflow_db_url: str
    properties_db_url: str
    redis_url: str
    passwords: dict[str, str]
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def token(self, user: str = "admin") -> str:
        import requests

        r = requests.post(f"{self.api_url}/auth/token", timeout=30,
                          json={"username": user, "password": self.passwords[user]})
        r.raise_for_status()
        return r.json()["access_token"]

    def session(self, user: str = "admin") -> Any:
        """A requests.Session carrying a bearer token for `user`."""
        import requests

        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token(user)}"
        return s

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _pg(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def with_db(url: str, name: str, driver: str = "postgresql") -> str:
    """`url` pointing at database `name` (and the given driver)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


@contextmanager
def databases(admin_url: str, *names: str) -> Iterator[None]:
    """Create the databases on the server at admin_url; drop them (WITH FORCE) on exit."""
    import psycopg2

    admin = psycopg2.connect(_pg(admin_url))
    admin.autocommit = True
    made: list[str] = []
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'CREATE DATABASE "{name}"')
                made.append(name)
        yield
    finally:
        with admin.cursor() as cur:  # FORCE: ends connections a killed process left behind
            for name in made:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def _redis_db(url: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@contextmanager
def moto_server(log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """moto's S3 server in its own process group on a free port; yields (endpoint URL, process)."""
    port = free_port()
    proc = spawn([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                 clean_env(), log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, log, timeout=60)
        yield url, proc
    finally:
        stop_group(proc)


def _mappings(dest: Path, providers: tuple[str, ...], media_batch_listings: int | None) -> Path:
    """Copies of the chosen provider YAMLs (only their DAGs and pools exist); optionally with smaller
    media batches, so a small feed's media stage still maps to several tasks."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for pid in providers:
        data = yaml.safe_load((ROOT / "include" / "mappings" / f"{pid}.yaml").read_text())
        if media_batch_listings:
            data.setdefault("media", {})["batch_listings"] = media_batch_listings
        (dest / f"{pid}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


@contextmanager
def topology(*, listings: int = 60, photos_per_listing: int = 1, providers: tuple[str, ...] = ("demo_reso",),
             executor: str = "CeleryExecutor", media_batch_listings: int | None = 10,
             worker_concurrency: int = 2, scheduled: bool = False, workers: int = 1,
             mappings_dir: Path | None = None, extra_env: dict[str, str] | None = None,
             mock_env: Callable[[str, dict[str, str]], dict[str, str]] | None = None,
             triggerer: bool = True, parse_interval: int | None = None) -> Iterator[Topology]:
    """Start the whole stack, yield it, and stop every process it started (by process group).

    Needs PostgreSQL on 127.0.0.1:5432 (trust auth; MLS_TEST_PG_URL overrides) and, for the
    CeleryExecutor, Redis on 127.0.0.1:6379 (MLS_TOPOLOGY_REDIS_URL overrides; the db is flushed).
    `scheduled=False` keeps the scheduler from creating cron runs, so only triggered runs happen.
    `mappings_dir` is used as it is (the caller may add and break YAMLs while the stack runs);
    otherwise copies of `providers` are made. `mock_env(mock_url, credentials)` adds settings that
    name the mock MLS (more connections to it). `parse_interval` makes the dag-processor re-read the
    DAG files that often (seconds), so a changed YAML shows quickly.
    """
    from tests.integration.s3_server import CREDENTIALS, REGION, make_bucket, s3_client

    home = Path(tempfile.mkdtemp(prefix="mls_topology_"))
    tag = uuid.uuid4().hex[:10]
    af_db, props_db = f"mls_topo_airflow_{tag}", f"mls_topo_props_{tag}"
    stack = ExitStack()
    topo: Topology | None = None
    keep = False
    try:
        stack.enter_context(databases(PG_ADMIN_URL, af_db, props_db))
        celery = executor == "CeleryExecutor"
        if celery:
            stack.enter_context(_redis_db(REDIS_URL))
        s3_url, moto_proc = stack.enter_context(moto_server(home / "moto.log"))
        bucket = make_bucket(s3_client(s3_url), f"mls-media-{tag}")
        mock = stack.enter_context(mock_mls_process(
            "--listings", str(listings), "--photos-per-listing", str(photos_per_listing), "--seed", "3"))

        port = free_port()
        passwords = {"admin": secrets.token_urlsafe(12)}
        pw_file = home / "simple_auth_manager_passwords.json"
        pw_file.write_text(json.dumps(passwords))
        airflow_db_url = with_db(PG_ADMIN_URL, af_db, "postgresql+psycopg2")
        properties_db_url = with_db(PG_ADMIN_URL, props_db)
        env = clean_env()
        env.update(api_server_env(home, port, pw_file))
        env.update(mls_connections(mock["url"], mock["credentials"]))
        env.update({
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db_url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(scheduled),
            "AIRFLOW_CONN_MLS_PROPERTIES_DB": properties_db_url,
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
                "conn_type": "aws", "login": CREDENTIALS["aws_access_key_id"],
                "password": CREDENTIALS["aws_secret_access_key"], "extra": {"region_name": REGION}}),
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLS_MEDIA_STORAGE": json.dumps({"backend": "s3", "bucket": bucket, "endpoint_url": s3_url,
                                             "region_name": REGION, "aws_conn_id": "aws_default"}),
            "MLS_MAPPINGS_DIR": str(mappings_dir or _mappings(home / "mappings", providers, media_batch_listings)),
        })
        if parse_interval:
            env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] = str(parse_interval)
        env.update(extra_env or {})
        if mock_env:
            env.update(mock_env(mock["url"], mock["credentials"]))
        if celery:
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + with_db(PG_ADMIN_URL, af_db),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
            })
        topo = Topology(home=home, api_url=f"http://127.0.0.1:{port}", mock_url=mock["url"], s3_endpoint=s3_url,
                        bucket=bucket, airflow_db_url=airflow_db_url, properties_db_url=properties_db_url,
                        redis_url=REDIS_URL if celery else "", passwords=passwords, env=env,
                        pids={"mock-mls": mock["pid"], "s3": moto_proc.pid})

        def stop_all() -> None:  # reverse start order: workers first, the API server last
            for proc in reversed(list(topo.processes.values())):
                stop_group(proc)

        stack.callback(stop_all)
        init_log = home / "airflow-init.log"
        run_cli([AIRFLOW, "db", "migrate"], env, init_log)
        run_cli([sys.executable, "-m", "mls_sync_airflow.setup"], env, init_log)
        services = {
            "api-server": api_server_cmd(port),
            "scheduler": [AIRFLOW, "scheduler", "--skip-serve-logs"],
            "dag-processor": [AIRFLOW, "dag-processor"],
        }
        if triggerer:
            services["triggerer"] = [AIRFLOW, "triggerer", "--skip-serve-logs"]
        for name, cmd in services.items():
            topo.processes[name] = spawn(cmd, env, home / f"{name}.log")
        if celery:
            for i, hostname in enumerate(worker_hostnames(workers)):
                worker_env = {**env, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.topology.worker_hostname",
                              "MLS_TOPOLOGY_WORKER_HOSTNAME": hostname}
                name = "celery-worker" if workers == 1 else f"celery-worker-{i + 1}"
                topo.processes[name] = spawn(
                    [AIRFLOW, "celery", "worker", "--concurrency", str(worker_concurrency), "--skip-serve-logs",
                     "--celery-hostname", f"{hostname}@127.0.0.1", "--without-gossip", "--without-mingle"],
                    worker_env, home / f"{name}.log")
        topo.pids.update({name: p.pid for name, p in topo.processes.items()})
        wait_http(f"{topo.api_url}/api/v2/monitor/health", topo.processes["api-server"], home / "api-server.log")
        yield topo
    except BaseException:
        keep = True  # the logs are what explains a failure
        raise
    finally:
        stack.close()
        if keep or os.environ.get("MLS_TOPOLOGY_KEEP_HOME"):
            print(f"topology logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    """Start the stack and print where it answers; Ctrl-C stops everything."""
    with topology(listings=int(os.environ.get("DEMO_LISTINGS", 200)), media_batch_listings=None,
                  providers=("demo_reso", "demo_rets"), scheduled=True) as t:
        print(f"Airflow API/UI: {t.api_url}  (user admin, password {t.passwords['admin']})")
        print(f"mock MLS: {t.mock_url}; S3: {t.s3_endpoint} bucket {t.bucket}; logs: {t.home}")
        try:
            while all(p.poll() is None for p in t.processes.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
