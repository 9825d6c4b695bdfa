"""The services of docker/compose.yaml without Docker: natively on 127.0.0.1, each on a free port, all state
in one directory. ``docker/local-stack.sh`` runs this with the project's venv (its ``prefect``, ``mlflow``
and moto); ``make stack`` / ``make stack-down`` call it.

    local-stack.sh up [DIR]            start the stack (default DIR: runs/stack); writes DIR/stack.env
    local-stack.sh status [DIR]        each service and whether it answers (exit 1 if one does not)
    local-stack.sh down [DIR]          stop everything it started; fails if a process or a port is left
    local-stack.sh worker-stop [DIR]   stop the Prefect worker and the flow runs it started (--kill: SIGKILL)
    local-stack.sh worker-start [DIR]  start the worker again

Services, in start order (compose.yaml's names in brackets):

- postgres   [postgres]        PostgreSQL from the Debian package, data in DIR/postgres, a random password,
                               the databases of docker/initdb/*.sql (``prefect`` and ``mlflow``)
- s3         [minio]           moto's S3 server, buckets ``mlflow`` (MLflow's artifacts) and ``rlhf``
                               (campaign outputs). Kept in memory: its objects are lost on ``down``
- prefect    [prefect-server]  ``prefect server start`` on Postgres (asyncpg), PREFECT_HOME DIR/prefect-server
- mlflow     [mlflow]          ``mlflow server``: Postgres backend store, artifacts proxied to s3://mlflow
- worker     [worker]          ``prefect worker start --type process`` on the work pool (default ``rlhf``),
                               PREFECT_HOME DIR/worker (the flow runs' cached task results)

Every process gets ``RLHF_STACK=<id>:<service>`` in its environment, and so does everything it starts (the
flow runs a worker starts inherit its environment). ``down`` and ``worker-stop`` find the processes to stop by
that tag as well as by the process groups they started: Prefect's process worker starts each flow run in a
session of its own (``start_new_session``), so signalling the worker's process group does not reach a
running flow run.

Standard library only: it runs the venv's executables (``sys.executable``'s folder) as subprocesses, the
buckets are made by a boto3 snippet run with the venv's python.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: local-stack.sh runs this file with the venv's python
DEFAULT_DIR = REPO / "runs" / "stack"
RECORD, ENV_FILE, PASSWORD_FILE = "stack.json", "stack.env", "postgres.password"
TAG = "RLHF_STACK"
SERVICES = ("postgres", "s3", "prefect", "mlflow", "worker")  # start order; stopped in reverse
BUCKETS = ("mlflow", "rlhf")  # MLflow's artifacts (as in compose.yaml); campaign outputs (RLHF_S3_BUCKET)
DB_USER = "rlhf"
# moto accepts any keys; the MLflow server and every client need some to sign their requests.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "rlhf-local", "AWS_SECRET_ACCESS_KEY": "rlhf-local-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
TIMEOUTS = {"postgres": 60, "s3": 60, "prefect": 180, "mlflow": 240, "worker": 120}  # first start: migrations


class StackError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --- processes -------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def carries(pid: int, prefix: str) -> bool:
    """The live process ``pid`` has ``RLHF_STACK`` starting with ``prefix`` in its environment. Checked before
    anything trusts a recorded pid: after a reboot or a crash the number may belong to another program."""
    needle = f"{TAG}={prefix}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as env:
            return any(var.startswith(needle) for var in env.read().split(b"\0")) and alive(pid)
    except OSError:  # gone, or not ours to read
        return False


def tagged(prefix: str) -> list[int]:
    """The live processes whose environment carries ``RLHF_STACK`` starting with ``prefix``."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and carries(int(entry), prefix)]


def signal_all(pids: list[int], signum: int) -> None:
    """``signum`` once to each process group among ``pids`` (a flow run's subprocesses share its group); a
    process that already left its group gets its own."""
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for target, send in [*((g, os.killpg) for g in groups), *((p, os.kill) for p in pids)]:
        try:
            if send is os.killpg or os.getpgid(target) not in groups:
                send(target, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop_processes(find, timeout: float, first: int = signal.SIGTERM) -> list[int]:
    """``first`` (once) to the processes ``find()`` returns and to their groups, and to any that appear
    meanwhile; SIGKILL to what is left after ``timeout``. Returns the pids still alive after that (none, unless
    something ignores SIGKILL)."""
    signalled: set[int | None] = set()  # process groups: a second SIGINT would cut short a flow run's clean-up
    deadline = time.monotonic() + timeout
    while (pids := find()) and time.monotonic() < deadline:
        fresh = [p for p in pids if _pgid(p) not in signalled]
        signal_all(fresh, first)
        signalled.update(_pgid(p) for p in fresh)
        time.sleep(0.3)
    if pids:
        signal_all(pids, signal.SIGKILL)
        end = time.monotonic() + 10
        while (pids := find()) and time.monotonic() < end:
            time.sleep(0.2)
    return pids


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:  # the server is there, just not happy with this request
        return err.code < 500
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# --- the stack's record ----------------------------------------------------------------------------------


class Stack:
    """One stack: its directory, and ``stack.json`` there, which records what was started (pids, ports, logs)
    as soon as each service starts, so ``down`` can stop a stack whose ``up`` was interrupted."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.record_path = self.dir / RECORD
        self.record: dict = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}

    # the record
    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2))
        tmp.chmod(0o600)  # it holds the database password
        os.replace(tmp, self.record_path)

    @property
    def services(self) -> dict[str, dict]:
        return self.record.setdefault("services", {})

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.services[service]['port']}"

    def health_url(self, service: str) -> str:
        return self.url(service) + {"s3": "/moto-api/", "prefect": "/api/health", "mlflow": "/health",
                                    "worker": "/health"}[service]

    def running(self, service: str) -> bool:
        """The service's recorded process is alive and is the one this stack started."""
        entry = self.services.get(service)
        return bool(entry and entry["pid"] and carries(entry["pid"], self.tag(service)))

    def healthy(self, service: str) -> bool:
        entry = self.services.get(service)
        if not self.running(service):
            return False
        if service == "postgres":
            return subprocess.run([self.pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(entry["port"])],
                                  stdout=subprocess.DEVNULL).returncode == 0
        return answers(self.health_url(service))

    def tag(self, service: str) -> str:
        return f"{self.record['id']}:{service}"

    # PostgreSQL
    def pg_bin(self) -> Path:
        """Folder of initdb and pg_ctl: PG_BIN, else the newest /usr/lib/postgresql/<major>/bin."""
        if os.environ.get("PG_BIN"):
            found = [os.path.join(os.environ["PG_BIN"], "initdb")]
        else:
            found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found or not os.access(found[-1], os.X_OK):
            where = os.environ.get("PG_BIN") or "/usr/lib/postgresql/*/bin"
            raise StackError(f"PostgreSQL's server programs are not installed (no initdb in {where}): install them "
                             "(Debian/Ubuntu: apt-get install postgresql), or set PG_BIN to the folder holding "
                             "initdb and pg_ctl")
        return Path(found[-1]).parent

    def postgres_url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{DB_USER}:{self.record['password']}@127.0.0.1:{self.services['postgres']['port']}/{database}"

    # the environment
    def env(self) -> dict[str, str]:
        """What a client of the stack needs (stack.env): the worker's environment is this too."""
        env = {
            "PREFECT_API_URL": self.url("prefect") + "/api",
            "PREFECT_WORK_POOL": self.record["pool"],
            "MLFLOW_TRACKING_URI": self.url("mlflow"),  # for plain MLflow clients; rlhf takes tracking.uri
            "MLFLOW_S3_ENDPOINT_URL": self.url("s3"),
            "AWS_ENDPOINT_URL_S3": self.url("s3"),  # boto3 and s3fs read it (the S3 endpoint for every client)
            **S3_KEYS,
            "RLHF_S3_BUCKET": "rlhf",
            "POSTGRES_USER": DB_USER, "POSTGRES_PASSWORD": self.record["password"],  # compose.yaml's names
            "PGHOST": "127.0.0.1", "PGPORT": str(self.services["postgres"]["port"]),  # so `psql -d prefect` works
            "PGUSER": DB_USER, "PGPASSWORD": self.record["password"],
            "RLHF_STACK_DIR": str(self.dir),
        }
        return env


def clean_environ() -> dict[str, str]:
    """This process's environment without settings that would point a service elsewhere (a caller's Prefect
    home or server, MLflow or AWS settings, PG* connection variables)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "PG", TAG))}


# --- starting ----------------------------------------------------------------------------------------------


def launch(stack: Stack, service: str, argv: list, env: dict[str, str], log: Path, port: int,
           cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in a session of its own (its process group is its pid), logging to ``log``, and record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen([str(a) for a in argv], env={**env, TAG: stack.tag(service)}, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=cwd or stack.dir)
    stack.services[service] = {"pid": process.pid, "port": port, "log": str(log)}
    stack.save()
    return process


def wait_healthy(stack: Stack, service: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + TIMEOUTS[service]
    log = Path(stack.services[service]["log"])
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{service} exited at start (status {process.returncode}); the end of {log}:\n"
                             f"{tail(log)}")
        if stack.healthy(service):
            return
        time.sleep(0.5)
    raise StackError(f"{service} did not answer within {TIMEOUTS[service]} s; the end of {log}:\n{tail(log)}")


def check_ports(ports: dict[str, int]) -> None:
    """The ports asked for (0: any free one) are free, before anything starts."""
    for name, wanted in ports.items():
        if wanted and port_in_use(wanted):
            raise StackError(f"port {wanted} (for {name}) is in use by another process: stop it (`ss -ltnp "
                             f"'sport = :{wanted}'` shows which), or leave --{name}-port out for a free port")


def as_postgres_user() -> tuple[list[str], tuple[int, int] | None]:
    """initdb refuses to run as root: as root, the server runs as ``nobody`` (like tests/servers.py)."""
    if os.geteuid() != 0:
        return [], None
    nobody = pwd.getpwnam("nobody")
    return ["runuser", "-u", "nobody", "--"], (nobody.pw_uid, nobody.pw_gid)


def start_postgres(stack: Stack, port: int) -> None:
    pg = stack.pg_bin()
    as_user, owner = as_postgres_user()
    home = stack.dir / "postgres"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    if owner:
        os.chown(home, *owner)
        reach = subprocess.run([*as_user, "test", "-w", str(home)], stderr=subprocess.DEVNULL)
        if reach.returncode != 0:
            raise StackError(f"PostgreSQL runs as the user nobody here (initdb refuses root), and nobody cannot reach "
                             f"{home}: make its parent folders searchable by others (chmod o+x each of them), or "
                             f"choose a DIR that is, e.g. under /tmp")
    log = home / "server.log"  # the server writes it, as nobody
    env = clean_environ() | {TAG: stack.tag("postgres")}
    quiet = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    if not (data / "PG_VERSION").is_file():
        pwfile = home / ".initdb-password"
        pwfile.write_text(stack.record["password"] + "\n")
        if owner:
            os.chown(pwfile, *owner)
        pwfile.chmod(0o600)
        try:
            # Password (scram) on TCP; trust on the Unix socket, which is in DIR/postgres (only nobody and root).
            done = subprocess.run([*as_user, pg / "initdb", "-D", data, "-U", DB_USER, f"--pwfile={pwfile}",
                                   "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
                                  **quiet)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(f"initdb failed:\n{done.stdout[-3000:]}")
        fresh = True
    else:
        fresh = False
    # synchronous_commit=off: a crash of the machine may lose the last commits, never corrupt the data; the
    # Prefect server commits often and this is a development stack.
    stack.services["postgres"] = {"pid": 0, "port": port, "log": str(log)}
    stack.save()
    with open(os.devnull, "wb") as devnull:
        # pg_ctl in a session of its own: the postmaster it forks (and its backends) belong to that session
        started = subprocess.run([*as_user, pg / "pg_ctl", "-D", data, "-l", log, "-w", "-t",
                                  str(TIMEOUTS["postgres"]), "-o",
                                  f"-h 127.0.0.1 -p {port} -k {home} -c synchronous_commit=off", "start"],
                                 env=env, stdout=devnull, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file = data / "postmaster.pid"
    if pid_file.is_file():
        stack.services["postgres"]["pid"] = int(pid_file.read_text().split()[0])
        stack.save()
    if started.returncode != 0:
        raise StackError(f"PostgreSQL did not start; the end of {log}:\n{tail(log)}")
    wait_healthy(stack, "postgres")
    if fresh:
        for sql in sorted((REPO / "docker" / "initdb").glob("*.sql")):  # the databases compose.yaml creates
            done = subprocess.run([pg / "psql", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U",
                                   DB_USER, "-d", "postgres", "-f", sql],
                                  **{**quiet, "env": env | {"PGPASSWORD": stack.record["password"]}})
            if done.returncode != 0:
                raise StackError(f"{sql.name} failed:\n{done.stdout[-3000:]}")


CREATE_BUCKETS = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
have = {b["Name"] for b in s3.list_buckets()["Buckets"]}
for name in sys.argv[2:]:
    if name not in have:
        s3.create_bucket(Bucket=name)
"""


def start_s3(stack: Stack, port: int) -> None:
    process = launch(stack, "s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
                     clean_environ(), stack.dir / "logs" / "s3.log", port)
    wait_healthy(stack, "s3", process)
    done = subprocess.run([sys.executable, "-c", CREATE_BUCKETS, stack.url("s3"), *BUCKETS],
                          env=clean_environ() | S3_KEYS, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"creating the buckets {', '.join(BUCKETS)} failed:\n{done.stderr[-3000:]}")


def start_prefect(stack: Stack, port: int) -> None:
    env = clean_environ() | {
        "PREFECT_HOME": str(stack.dir / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.postgres_url("prefect", "asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    process = launch(stack, "prefect", [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                     env, stack.dir / "logs" / "prefect.log", port)
    wait_healthy(stack, "prefect", process)


def start_mlflow(stack: Stack, port: int) -> None:
    # compose.yaml's command and environment: the backend store in MLFLOW_BACKEND_STORE_URI (its password stays off
    # the command line, which `ps` shows every user); --workers 2 instead of MLflow's 4 on a laptop.
    env = clean_environ() | S3_KEYS | {"MLFLOW_S3_ENDPOINT_URL": stack.url("s3"),
                                       "MLFLOW_BACKEND_STORE_URI": stack.postgres_url("mlflow", "psycopg2")}
    argv = [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", port, "--workers", "2",
            "--artifacts-destination", "s3://mlflow", "--serve-artifacts",
            "--allowed-hosts", f"localhost,localhost:{port},127.0.0.1,127.0.0.1:{port}"]
    process = launch(stack, "mlflow", argv, env, stack.dir / "logs" / "mlflow.log", port)
    wait_healthy(stack, "mlflow", process)


def create_pool(stack: Stack) -> None:
    env = clean_environ() | {"PREFECT_API_URL": stack.url("prefect") + "/api",
                             "PREFECT_HOME": str(stack.dir / "worker")}
    done = subprocess.run([BIN / "prefect", "--no-prompt", "work-pool", "create", stack.record["pool"], "--type",
                           "process", "--overwrite"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"creating the work pool {stack.record['pool']} failed:\n"
                         f"{(done.stdout + done.stderr)[-3000:]}")


def worker_env(stack: Stack) -> dict[str, str]:
    """The worker's environment, which the flow runs it starts inherit: the stack's clients' settings (S3 keys
    and endpoint for campaign outputs on object storage; MLflow is reached through tracking.uri), its own
    PREFECT_HOME (the flow runs' result storage, where cached task results are found again), the platform's
    log lines in the server's logs, and a poll every 2 s."""
    return clean_environ() | stack.env() | {
        "PREFECT_HOME": str(stack.dir / "worker"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(stack.services["worker"]["port"]),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "rlhf",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def start_worker(stack: Stack, port: int) -> None:
    stack.services["worker"] = {"pid": 0, "port": port, "log": str(stack.dir / "logs" / "worker.log")}
    argv = [BIN / "prefect", "--no-prompt", "worker", "start", "--pool", stack.record["pool"], "--type", "process",
            "--name", f"local-stack-{stack.record['id']}", "--with-healthcheck", "--install-policy", "never"]
    (stack.dir / "worker").mkdir(parents=True, exist_ok=True)
    process = launch(stack, "worker", argv, worker_env(stack), Path(stack.services["worker"]["log"]), port,
                     cwd=stack.dir / "worker")
    wait_healthy(stack, "worker", process)


def up(stack: Stack, ports: dict[str, int], pool: str) -> int:
    if stack.record.get("services"):
        running = {name: stack.healthy(name) for name in stack.services}
        if all(running.values()) and set(running) == set(SERVICES):
            print(f"the stack in {stack.dir} is already running:")
            status(stack)
            return 0
        if any(stack.running(name) for name in stack.services):
            down_ones = ", ".join(name for name, ok in running.items() if not ok) or "none"
            raise StackError(f"the stack in {stack.dir} is partly running (not answering: {down_ones}): stop it "
                             f"first with `docker/local-stack.sh down {stack.dir}`, then start it again")
    check_ports(ports)
    stack.pg_bin()  # PostgreSQL installed: said before anything starts
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.dir.chmod(0o755)  # PostgreSQL (as nobody, when run as root) must reach DIR/postgres
    password_file = stack.dir / PASSWORD_FILE
    if not password_file.is_file():  # kept across down/up: the data directory's role has this password
        password_file.write_text(secrets.token_hex(16))
        password_file.chmod(0o600)
    stack.record = {"id": secrets.token_hex(6), "dir": str(stack.dir), "pool": pool,
                    "password": password_file.read_text().strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "services": {}}
    stack.save()
    starts = {"postgres": start_postgres, "s3": start_s3, "prefect": start_prefect, "mlflow": start_mlflow,
              "worker": start_worker}
    try:
        for name in SERVICES:
            port = ports.get(name) or free_port()
            print(f"starting {name} on 127.0.0.1:{port} ...", flush=True)
            starts[name](stack, port)
            if name == "mlflow":
                create_pool(stack)
    except StackError as err:
        print(f"error: {err}\nstopping what started ...", file=sys.stderr, flush=True)
        give_up(stack)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopping what started ...", file=sys.stderr, flush=True)
        give_up(stack)
        return 130
    except BaseException:  # a bug (its traceback follows): nothing is left running either way
        print("stopping what started ...", file=sys.stderr, flush=True)
        give_up(stack)
        raise
    env_file = stack.dir / ENV_FILE
    env_file.write_text(f"# docker/local-stack.sh up {stack.dir} (id {stack.record['id']}); `source` this file\n"
                        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in stack.env().items()))
    env_file.chmod(0o600)
    status(stack)
    print(f"\nsource {env_file}   # then e.g. rlhf deploy experiment=smoke tracking=server "
          f"tracking.uri=$MLFLOW_TRACKING_URI")
    return 0


# --- stopping ----------------------------------------------------------------------------------------------


def stop_service(stack: Stack, name: str, timeout: float, kill_at_once: bool = False) -> list[int]:
    """Stop one service: PostgreSQL with ``pg_ctl stop -m fast``, the others by their process group and every
    process carrying their tag (SIGTERM, SIGKILL after ``timeout``; SIGKILL at once with ``kill_at_once``).
    The worker's flow runs are interrupted first, as Ctrl-C would (SIGINT): Prefect then marks them Crashed and
    the campaign ends its MLflow runs KILLED, where SIGTERM ends Prefect's engine process on the spot and leaves
    them RUNNING on the servers. Returns the pids that would not die."""
    entry = stack.services.get(name)
    if name == "postgres" and entry:
        data = stack.dir / "postgres" / "data"
        if (data / "postmaster.pid").is_file():
            as_user, _ = as_postgres_user()
            subprocess.run([*as_user, stack.pg_bin() / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t",
                            str(int(timeout)), "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=clean_environ())
    pid = entry["pid"] if entry else 0

    def find() -> list[int]:  # by the tag: the recorded pid, and whatever it started
        return tagged(stack.tag(name))

    if name == "worker" and not kill_at_once:
        def flow_runs() -> list[int]:  # the worker's tagged descendants in sessions of their own
            return [p for p in find() if p != pid and _pgid(p) not in (pid, None)]

        stop_processes(flow_runs, timeout, first=signal.SIGINT)
    return stop_processes(find, timeout, first=signal.SIGKILL if kill_at_once else signal.SIGTERM)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stop_all(stack: Stack, timeout: float = 30) -> list[str]:
    """Stop every service (reverse start order) and any other process carrying the stack's tag; returns
    problems: processes still alive, ports still listening."""
    problems = []
    for name in reversed(SERVICES):
        if name in stack.services:
            if left := stop_service(stack, name, timeout):
                problems.append(f"{name}: processes {left} would not stop")
    if left := stop_processes(lambda: tagged(stack.record.get("id", "-") + ":"), timeout):
        problems.append(f"processes of the stack still alive: {left}")
    for name, entry in stack.services.items():
        if port_in_use(entry["port"]):
            problems.append(f"{name}: port {entry['port']} is still listening")
    return problems


def give_up(stack: Stack) -> None:
    """After a failed ``up``: stop what started, and say if that did not work either."""
    if problems := stop_all(stack):
        print("error: and stopping it did not work cleanly:\n  " + "\n  ".join(problems), file=sys.stderr)
        return
    stack.record["services"] = {}
    stack.save()


def down(stack: Stack, timeout: float) -> int:
    if not stack.record.get("services"):
        print(f"no stack recorded in {stack.dir} ({RECORD} is missing): nothing to stop")
        return 0
    problems = stop_all(stack, timeout)
    if problems:
        print("error: the stack did not stop cleanly:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    ports = ", ".join(f"{name} {entry['port']}" for name, entry in stack.services.items())
    stack.record["services"] = {}
    stack.record["stopped"] = time.strftime("%Y-%m-%d %H:%M:%S")
    stack.save()
    (stack.dir / ENV_FILE).unlink(missing_ok=True)
    print(f"stopped the stack in {stack.dir}: no process of it is alive, no port of it listens ({ports}); its "
          f"data stays there (Postgres, Prefect's and the worker's homes; the S3 server's objects are gone)")
    return 0


def worker_stop(stack: Stack, kill: bool, timeout: float) -> int:
    require_running(stack, "worker-stop")
    left = stop_service(stack, "worker", timeout, kill_at_once=kill)
    if left:
        print(f"error: worker processes {left} would not stop", file=sys.stderr)
        return 1
    print("stopped the worker and the flow runs it had started "
          + ("(SIGKILL)" if kill else "(the flow runs with SIGINT, the worker with SIGTERM)"))
    return 0


def worker_start(stack: Stack) -> int:
    require_running(stack, "worker-start")
    if stack.healthy("worker"):
        print("the worker is already running")
        return 0
    try:
        start_worker(stack, stack.services["worker"]["port"])
    except StackError:
        stop_service(stack, "worker", 10)
        raise
    print(f"worker started (pid {stack.services['worker']['pid']}) on pool {stack.record['pool']}")
    return 0


def require_running(stack: Stack, command: str) -> None:
    if "worker" not in stack.services:
        raise StackError(f"no stack is running in {stack.dir}: `docker/local-stack.sh up {stack.dir}` first "
                         f"({command} needs one)")


# --- status --------------------------------------------------------------------------------------------------


def status(stack: Stack) -> int:
    if not stack.record.get("services"):
        print(f"no stack running in {stack.dir}")
        return 1
    where = {"postgres": lambda: f"127.0.0.1:{stack.services['postgres']['port']} (databases prefect, mlflow)",
             "s3": lambda: f"{stack.url('s3')} (buckets {', '.join(BUCKETS)})",
             "prefect": lambda: f"{stack.url('prefect')} (API {stack.url('prefect')}/api)",
             "mlflow": lambda: stack.url("mlflow"),
             "worker": lambda: f"pool {stack.record['pool']}, health {stack.url('worker')}/health"}
    all_ok = True
    for name in SERVICES:
        if name not in stack.services:
            print(f"  {name:<9} not started")
            all_ok = False
            continue
        ok = stack.healthy(name)
        all_ok &= ok
        print(f"  {name:<9} pid {stack.services[name]['pid']:<7} {'answers' if ok else 'NOT ANSWERING':<14} "
              f"{where[name]()}")
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/local-stack.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "worker-stop", "worker-start"):
        command = sub.add_parser(name)
        command.add_argument("dir", nargs="?", default=str(DEFAULT_DIR), help=f"the stack's folder ({DEFAULT_DIR})")
        if name == "up":
            command.add_argument("--pool", default=os.environ.get("PREFECT_WORK_POOL", "rlhf"),
                                 help="the Prefect work pool (PREFECT_WORK_POOL, default rlhf)")
            for service in SERVICES:
                command.add_argument(f"--{service}-port", type=int, default=0, help="default: a free port")
        if name in ("down", "worker-stop"):
            command.add_argument("--timeout", type=float, default=30,
                                 help="seconds between SIGTERM (SIGINT for flow runs) and SIGKILL (default 30)")
        if name == "worker-stop":
            command.add_argument("--kill", action="store_true",
                                 help="SIGKILL at once, as a crash would (default: SIGTERM first)")
    args = parser.parse_args(argv)
    stack = Stack(Path(args.dir))
    try:
        if args.command == "up":
            ports = {s: getattr(args, f"{s}_port") for s in SERVICES}
            return up(stack, ports, args.pool)
        if args.command == "down":
            return down(stack, args.timeout)
        if args.command == "status":
            return status(stack)
        if args.command == "worker-stop":
            return worker_stop(stack, args.kill, args.timeout)
        return worker_start(stack)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
