"""Real servers for tests, on 127.0.0.1 in temporary folders, each stopped (and its folder removed) when
its block ends: PostgreSQL from the Debian package, an MLflow tracking server and an S3 server (moto).

``import servers`` works from any test: pytest puts ``tests/`` on the path (``conftest.py`` is there).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them versioned), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres(*databases: str) -> Iterator[str]:
    """A PostgreSQL server on loopback with ``databases`` created; yields ``host:port``. Its user is
    ``rlhf`` with trust authentication (loopback only). As root, the server runs as ``nobody``
    (``initdb`` refuses root)."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    port, data = free_port(), home / "data"
    quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    try:
        subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "rlhf", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], **quiet)
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-w", "-l", home / "log", "-o",
                        f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off", "start"], **quiet)
        try:
            for name in databases:
                subprocess.run([bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "rlhf", name], **quiet)
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], **quiet)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def wait_for(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on loopback with ``backend_uri`` and its own artifact store in ``artifacts``
    (served through it: clients see ``mlflow-artifacts:``); yields its URL."""
    with served("mlflow", lambda port: [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts.resolve().as_uri(),
            "--serve-artifacts"], "/health", 120) as url:
        yield url


@contextmanager
def served(name: str, argv, health: str, timeout: float) -> Iterator[str]:
    """A server ``argv(port)`` started on a free loopback port in a process group of its own, its output in
    a temporary log; yields its URL once ``<url><health>`` answers. On exit its group is stopped, the log
    removed, and the port checked closed."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix=f"rlhf-{name}-")) / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}{health}", process, timeout, log)
        yield url
    finally:
        stop_group(process)
        shutil.rmtree(log.parent, ignore_errors=True)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"the {name} server's port {port} is still open after it was stopped")


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group a server was started in (``start_new_session``), then wait until every
    member is gone, not only the leader (``mlflow server`` runs uvicorn and several job consumers, which
    take a few seconds to exit); SIGKILL whatever is left after ``timeout``."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # raises once the group is empty
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait()


@contextmanager
def s3_server() -> Iterator[str]:
    """An S3-compatible server on loopback (moto's server mode, in memory: nothing on disk); yields its
    endpoint URL (what ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` take). Any access key is accepted
    until ``<endpoint>/moto-api/reset-auth`` switches IAM checks on. Stopped with its process group on
    exit, and the port checked closed."""
    with served("s3", lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                "/moto-api/data.json", 60) as url:
        yield url
