"""The docker-compose topology without Docker: every service as a child process on 127.0.0.1.

What docker-compose.yaml runs, started here on free loopback ports (`make stack`, the tests on a
real Airflow in tests/integration/airflow_stack/, `make bench` scenario 7):

    compose service       here
    postgres              the machine's PostgreSQL on 127.0.0.1:5432 (MLS_TEST_PG_URL overrides), else
    properties-db         an embedded one (pgserver) in a temp folder: a throwaway Airflow metadata
                          database (also the Celery result backend) and a throwaway properties one
    redis                 the machine's Redis on 127.0.0.1:6379 (MLS_TOPOLOGY_REDIS_URL overrides), or
                          a redis-server of its own on a free port; either way the stack's keys carry
                          a prefix of their own, deleted at the end
    minio (+ init)        moto's S3 server and a bucket
    mock-mls              the compose command (python -m mock_mls ...) on a free port
    airflow-init          the compose file's own script, run by bash
    airflow-apiserver     `airflow api-server`, and so on: each Airflow service's command and
    airflow-scheduler     environment come from docker-compose.yaml (devstack/compose.py), with the
    airflow-dag-processor native differences declared there
    airflow-triggerer
    airflow-worker        one process per worker, each with its own host name and scratch folder

Each long-running process gets its own session (process group) and is stopped by that id.
`make airflow` (devstack/run.py) starts the same Airflow services on the demo's data instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import ROOT, airflow_env, embedded_postgres, free_port, mock_mls_process, pg_reachable
from devstack import compose as cf

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
PG_ADMIN_URL = os.environ.get("MLS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MLS_TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379/9")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
WORKER_HOSTNAME = "mls-topology-celery-worker"
ADMIN = "admin"
# Inherited settings that would aim our processes at someone else's Airflow, database or bucket,
# or tell them they run inside a task (AIRFLOW_CTX_*, left in os.environ by an in-process dag.test()).
_FOREIGN_ENV = ("AIRFLOW", "_AIRFLOW", "MLS_", "AWS_")
# Settings the tests add to every stack they start (not the compose file's: test pacing only).
TEST_TUNING = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    # Airflow's default level stays: task logs must show what an operator reads there (a test checks)
}


class Unavailable(RuntimeError):
    """A service the stack needs cannot start here (tests skip with this message)."""


# ---------------------------------------------------------------- process helpers (shared with test_admin_api)

def clean_env() -> dict[str, str]:
    """os.environ without Airflow/MLS/AWS settings, so a child sees only what we give it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}


def api_server_env(home: Path, port: int, passwords_file: Path, users: str = "admin:admin") -> dict[str, str]:
    """Settings for a lone API server on 127.0.0.1:port with the simple auth manager and fresh secrets
    (tests/integration/test_admin_api.py; the stack's come from docker-compose.yaml)."""
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
        raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log}:\n{log.read_text()[-2000:]}")


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """Start a long-running service in its own session, so its whole process group can be stopped;
    `cpus` pins it (and what it forks) to those CPUs."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pin)


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


def kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the service and everything it started, at once, as when its host dies; the pids killed."""
    import psutil

    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    for p in victims:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return [p.pid for p in victims]


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


# ---------------------------------------------------------------- data services

def _pg(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def with_db(url: str, name: str, driver: str = "postgresql") -> str:
    """`url` pointing at database `name` (and the given driver)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


@contextmanager
def databases(admin_url: str, *names: str, keep: bool = False) -> Iterator[None]:
    """Create the databases on the server at admin_url (those that exist are kept as they are);
    drop the ones made here (WITH FORCE) on exit unless `keep`."""
    import psycopg2

    admin = psycopg2.connect(_pg(admin_url))
    admin.autocommit = True
    made: list[str] = []
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if keep and cur.fetchone():
                    continue
                cur.execute(f'CREATE DATABASE "{name}"')
                made.append(name)
        yield
    finally:
        if not keep:
            with admin.cursor() as cur:  # FORCE: ends connections a killed process left behind
                for name in made:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """(admin URL, where): the machine's PostgreSQL when it answers, else an embedded one in a temp folder."""
    if pg_reachable(PG_ADMIN_URL):
        yield PG_ADMIN_URL, f"the machine's PostgreSQL ({PG_ADMIN_URL})"
        return
    tmp = Path(tempfile.mkdtemp(prefix="mls_stack_pg_"))
    try:
        with embedded_postgres(tmp / "pg") as url:
            yield url, f"an embedded PostgreSQL (pgserver) in {tmp}"
    except Exception as exc:
        raise Unavailable(f"no PostgreSQL at {PG_ADMIN_URL} and the embedded one did not start: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _redis_answers(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except Exception:
        return False


@contextmanager
def redis_server(home: Path, password: str, prefer_machine: bool) -> Iterator[tuple[str, str]]:
    """(broker URL, where). The machine's Redis (`prefer_machine` and it answers), else Debian's
    redis-server started here on a free port with compose's --requirepass, else the machine's."""
    binary = shutil.which("redis-server")
    if (prefer_machine or not binary) and _redis_answers(REDIS_URL):
        yield REDIS_URL, f"the machine's Redis ({REDIS_URL})"
        return
    if not binary:
        raise Unavailable(f"no Redis at {REDIS_URL} and no redis-server to start "
                          "(Debian: apt-get install redis-server)")
    port = free_port()
    log = home / "redis.log"
    proc = spawn([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                  "--dir", str(home), "--requirepass", password], clean_env(), log)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while not _redis_answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"redis-server did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        yield url, f"redis-server on 127.0.0.1:{port}"
    finally:
        stop_group(proc)


def delete_prefixed(url: str, prefix: str) -> None:
    """Remove this stack's broker keys from a Redis it shares."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    finally:
        client.close()


@contextmanager
def moto_server(log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """moto's S3 server in its own process group on a free port; yields (endpoint URL, process)."""
    port = free_port()
    proc = spawn([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], clean_env(), log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, log, timeout=60)
        yield url, proc
    finally:
        stop_group(proc)


# ---------------------------------------------------------------- the Airflow services

def worker_hostname() -> str:
    """Hostname a Celery worker's tasks report (AIRFLOW__CORE__HOSTNAME_CALLABLE in the workers only),
    so a test can tell which worker ran a task: each worker gets its own in its environment."""
    return os.environ.get("MLS_TOPOLOGY_WORKER_HOSTNAME", WORKER_HOSTNAME)


def worker_hostnames(workers: int) -> list[str]:
    return [WORKER_HOSTNAME] if workers == 1 else [f"{WORKER_HOSTNAME}-{i + 1}" for i in range(workers)]


def worker_name(hostname: str) -> str:
    """The service name of the worker reporting `hostname` (celery-worker, celery-worker-2, ...)."""
    return "celery-worker" + hostname[len(WORKER_HOSTNAME):]


@dataclass
class Service:
    """How to start one long-running service: what `restart` runs again."""

    cmd: list[str]
    env: dict[str, str]
    cwd: Path = ROOT
    cpus: set[int] | None = None


def generated_secrets() -> dict[str, str]:
    """The secrets .env.example asks for, made fresh (the databases and moto ignore theirs here)."""
    from cryptography.fernet import Fernet

    from tests.integration.s3_server import CREDENTIALS

    return {
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(12),
        "AIRFLOW_DB_PASSWORD": secrets.token_hex(12),
        "PROPERTIES_DB_PASSWORD": secrets.token_hex(12),
        "REDIS_PASSWORD": secrets.token_hex(12),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_hex(24),
        "MINIO_ROOT_USER": CREDENTIALS["aws_access_key_id"],
        "MINIO_ROOT_PASSWORD": CREDENTIALS["aws_secret_access_key"],
    }


def native_only_env(home: Path, port: int, key_prefix: str | None) -> dict[str, str]:
    """The keys every native Airflow process has that the compose file does not (see compose.NATIVE_ONLY_ENV)."""
    env = {
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if key_prefix:
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = key_prefix
    return env


def service_env(config: Mapping[str, Any], service: str, endpoints: cf.Endpoints, home: Path,
                native: Mapping[str, str], overrides: Mapping[str, str | None] | None = None,
                extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """One compose service's environment natively: compose's keys (pointed at native endpoints,
    minus `overrides`), then the native-only keys, then the caller's extras."""
    overrides = overrides or {}
    env = clean_env()
    for key, value in cf.environment(config, service).items():
        if key not in overrides:
            env[key] = cf.to_native(value, config, service, endpoints, home / "volumes")
    env.update({k: v for k, v in overrides.items() if v is not None})
    env.update(native)
    env.update(extra_env or {})
    return env


def airflow_services(config: Mapping[str, Any], endpoints: cf.Endpoints, home: Path, *, port: int,
                     workers: list[str], key_prefix: str | None, overrides: Mapping[str, str | None] | None = None,
                     extra_env: Mapping[str, str] | None = None, triggerer: bool = True,
                     worker_cpus: list[set[int]] | None = None) -> dict[str, Service]:
    """Each Airflow service of the compose file (airflow-init included, run once) as a native
    command and environment.

    `overrides` replace (or, as None, drop) compose keys: make airflow's LocalExecutor and local
    photos; `extra_env` adds keys the compose file does not have (test pacing, test connections).
    """
    native = native_only_env(home, port, key_prefix)

    def env_of(service: str) -> dict[str, str]:
        return service_env(config, service, endpoints, home, native, overrides, extra_env)

    init_env = env_of("airflow-init")
    init_env["PATH"] = f"{VENV_BIN}{os.pathsep}{init_env.get('PATH', '')}"  # `airflow` and `python` of this venv
    out = {"airflow-init": Service(["bash", "-c", cf.init_script(config)], init_env)}
    names = {"api-server": "airflow-apiserver", "scheduler": "airflow-scheduler",
             "dag-processor": "airflow-dag-processor"}
    if triggerer:
        names["triggerer"] = "airflow-triggerer"
    out.update({name: Service(cf.native_command(config, svc, AIRFLOW), env_of(svc)) for name, svc in names.items()})
    for i, hostname in enumerate(workers):
        host_dir = home / "hosts" / hostname  # the worker's own disk: its working and scratch folder
        (host_dir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**env_of("airflow-worker"), "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.topology.worker_hostname",
               "MLS_TOPOLOGY_WORKER_HOSTNAME": hostname, "TMPDIR": str(host_dir / "tmp")}
        cmd = [*cf.native_command(config, "airflow-worker", AIRFLOW), f"{hostname}@127.0.0.1"]
        cpus = worker_cpus[i % len(worker_cpus)] if worker_cpus else None
        out[worker_name(hostname) if len(workers) > 1 else "celery-worker"] = Service(cmd, env, host_dir, cpus)
    return out


def run_init(config: Mapping[str, Any], init: Service, home: Path) -> None:
    """The compose file's airflow-init script, as it is: refuse empty secrets, migrate, make the
    pools, write the admin password, list DAG import errors."""
    for volume in config.get("volumes") or {}:
        (home / "volumes" / volume).mkdir(parents=True, exist_ok=True)
    run_cli(init.cmd, init.env, home / "airflow-init.log", timeout=600)


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
    services: dict[str, Service] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    killed: dict[str, list[int]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def token(self, user: str = ADMIN) -> str:
        import requests

        r = requests.post(f"{self.api_url}/auth/token", timeout=30,
                          json={"username": user, "password": self.passwords[user]})
        r.raise_for_status()
        return r.json()["access_token"]

    def session(self, user: str = ADMIN) -> Any:
        """A requests.Session carrying a bearer token for `user`."""
        import requests

        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token(user)}"
        return s

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str) -> subprocess.Popen:
        svc = self.services[name]
        proc = spawn(svc.cmd, svc.env, self.home / f"{name}.log", svc.cwd, svc.cpus)
        self.processes[name] = proc
        self.pids[name] = proc.pid
        return proc

    def stop(self, name: str) -> None:
        """Stop a service cleanly (it is no longer watched)."""
        stop_group(self.processes.pop(name))

    def kill(self, name: str) -> list[int]:
        """`kill -9` the service and all it runs, like a host that dies; it is no longer watched."""
        pids = kill_tree(self.processes.pop(name))
        self.killed[name] = pids
        return pids

    def worker_answers(self, hostname: str) -> bool:
        """Whether the Celery worker of that host name answers a ping through the stack's broker."""
        from celery import Celery

        app = Celery(broker=self.redis_url)
        prefix = self.env.get("AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX")
        if prefix:
            app.conf.broker_transport_options = {"global_keyprefix": prefix}
        try:
            return bool(app.control.ping(destination=[f"{hostname}@127.0.0.1"], timeout=2))
        finally:
            app.close()

    def stop_all(self) -> None:
        """Reverse start order: workers first, the API server last."""
        for name in reversed(list(self.processes)):
            self.stop(name)


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


def start_services(topo: Topology, stack: ExitStack, order: list[str]) -> None:
    """Start the services in order, stopped again when `stack` closes; wait for the API server."""
    stack.callback(topo.stop_all)
    for name in order:
        topo.start(name)
    wait_http(f"{topo.api_url}/api/v2/monitor/health", topo.processes["api-server"], topo.home / "api-server.log",
              timeout=300)


def start_airflow(stack: ExitStack, config: Mapping[str, Any], endpoints: cf.Endpoints, home: Path, *,
                  variables: Mapping[str, str], port: int, workers: list[str], key_prefix: str | None,
                  overrides: Mapping[str, str | None] | None = None, extra_env: Mapping[str, str] | None = None,
                  triggerer: bool = True, worker_cpus: list[set[int]] | None = None, s3_endpoint: str = "",
                  bucket: str = "", pids: Mapping[str, int] | None = None) -> Topology:
    """airflow-init, then every Airflow service, on the given endpoints; stopped when `stack` closes."""
    services = airflow_services(config, endpoints, home, port=port, workers=workers, key_prefix=key_prefix,
                                overrides=overrides, extra_env=extra_env, triggerer=triggerer,
                                worker_cpus=worker_cpus)
    init = services.pop("airflow-init")
    env = services["scheduler"].env
    topo = Topology(home=home, api_url=endpoints.apiserver, mock_url=endpoints.mock_mls, s3_endpoint=s3_endpoint,
                    bucket=bucket, airflow_db_url=env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                    properties_db_url=endpoints.properties_db,
                    redis_url=endpoints.redis if workers else "",
                    passwords={variables["AIRFLOW_ADMIN_USER"]: variables["AIRFLOW_ADMIN_PASSWORD"]}, env=env,
                    services=services, pids=dict(pids or {}))
    run_init(config, init, home)
    start_services(topo, stack, list(services))
    return topo


@contextmanager
def topology(*, listings: int | None = 60, photos_per_listing: int | None = 1,
             providers: tuple[str, ...] = ("demo_reso",), executor: str = "CeleryExecutor",
             media_batch_listings: int | None = 10, worker_concurrency: int | None = 2, scheduled: bool = False,
             workers: int = 1, mappings_dir: Path | None = None, extra_env: dict[str, str] | None = None,
             mock_env: Callable[[str, dict[str, str]], dict[str, str]] | None = None,
             triggerer: bool = True, parse_interval: int | None = None, mock_extra_args: tuple[str, ...] = (),
             worker_cpus: list[set[int]] | None = None, prefer_machine_services: bool = False,
             tuning: Mapping[str, str] | None = None, variables: Mapping[str, str] | None = None,
             on_ready: Callable[[str], None] | None = None) -> Iterator[Topology]:
    """Start the whole stack, yield it, and stop every process it started (by process group).

    `listings`, `photos_per_listing`, `worker_concurrency` and `variables` set the compose file's
    variables (MOCK_LISTINGS ...; None keeps its default). `scheduled=False` keeps the scheduler from
    creating cron runs, so only triggered runs happen. `mappings_dir` is used as it is (the caller
    may add and break YAMLs while the stack runs); otherwise copies of `providers` are made, or
    include/mappings is used when `providers` is empty. `mock_env(mock_url, credentials)` adds
    settings that name the mock MLS. `parse_interval` makes the dag-processor re-read the DAG files
    that often (seconds). `prefer_machine_services`: the machine's Redis even when a redis-server
    could be started (make stack); tests start their own, so two test runs never share a broker.
    `tuning` (default TEST_TUNING) paces Airflow for tests; make stack passes {} (compose's defaults).
    `on_ready(message)` hears where each data service came from.
    """
    from tests.integration.s3_server import make_bucket, s3_client

    say = on_ready or (lambda _m: None)
    home = Path(tempfile.mkdtemp(prefix="mls_topology_"))
    tag = uuid.uuid4().hex[:10]
    af_db, props_db = f"mls_topo_airflow_{tag}", f"mls_topo_props_{tag}"
    celery = executor == "CeleryExecutor"
    stack = ExitStack()
    keep = False
    try:
        admin_url, where = stack.enter_context(postgres_server())
        say(f"PostgreSQL: {where}, databases {af_db} (Airflow) and {props_db} (properties), dropped at the end")
        stack.enter_context(databases(admin_url, af_db, props_db))
        chosen = {"AIRFLOW_WORKER_CONCURRENCY": worker_concurrency, "MOCK_LISTINGS": listings,
                  "MOCK_PHOTOS_PER_LISTING": photos_per_listing}
        values = {**generated_secrets(), "AIRFLOW_ADMIN_USER": ADMIN,
                  **{k: str(v) for k, v in chosen.items() if v is not None}, **(variables or {})}
        redis_url, prefix = "", None
        if celery:
            redis_url, where = stack.enter_context(redis_server(home, values["REDIS_PASSWORD"],
                                                               prefer_machine_services))
            prefix = f"mls-stack-{tag}:"
            say(f"Redis: {where}, keys prefixed {prefix} (deleted at the end)")
            stack.callback(delete_prefixed, redis_url, prefix)
        s3_url, moto_proc = stack.enter_context(moto_server(home / "moto.log"))
        values["MLS_MEDIA_BUCKET"] = make_bucket(s3_client(s3_url), f"mls-media-{tag}")
        port = free_port()
        values["AIRFLOW_BASE_URL"] = f"http://127.0.0.1:{port}"
        config = cf.load(values)
        mock = stack.enter_context(mock_mls_process(*cf.mock_args(config), *mock_extra_args))
        endpoints = cf.Endpoints(postgres=with_db(admin_url, af_db), properties_db=with_db(admin_url, props_db),
                                 redis=redis_url, minio=s3_url, mock_mls=mock["url"],
                                 apiserver=f"http://127.0.0.1:{port}")
        extra = dict(TEST_TUNING if tuning is None else tuning)
        extra["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = str(scheduled)
        if mappings_dir or providers:
            extra["MLS_MAPPINGS_DIR"] = str(mappings_dir or _mappings(home / "mappings", providers,
                                                                       media_batch_listings))
        if parse_interval:
            extra["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] = str(parse_interval)
        extra.update(extra_env or {})
        if mock_env:
            extra.update(mock_env(mock["url"], mock["credentials"]))
        topo = start_airflow(stack, config, endpoints, home, variables=values, port=port,
                             workers=worker_hostnames(workers) if celery else [], key_prefix=prefix,
                             overrides=cf.executor_overrides(config, executor),
                             extra_env=extra, triggerer=triggerer, worker_cpus=worker_cpus, s3_endpoint=s3_url,
                             bucket=values["MLS_MEDIA_BUCKET"], pids={"mock-mls": mock["pid"], "s3": moto_proc.pid})
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


def wait_until_interrupted(topo: Topology) -> int:
    """Block until Ctrl-C (0) or until a service dies (1, with its log's tail)."""
    try:
        while True:
            dead = {n: p.returncode for n, p in topo.processes.items() if p.poll() is not None}
            if dead:
                name = next(iter(dead))
                print(f"\n{name} exited ({dead[name]}); its log:\n{topo.log(name)[-2000:]}", file=sys.stderr)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0


def main() -> int:
    """`python -m devstack.topology`: kept for older notes; `make stack` is devstack.run."""
    from devstack.run import main as run_main

    return run_main(["stack"])


if __name__ == "__main__":
    sys.exit(main())
