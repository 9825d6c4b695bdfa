"""Bad input to docker/local-stack.sh and `rlhf deploy` gets a clear error, before anything starts or is
registered. No server is started here (these run in `make test`; test_stack.py starts the real stack)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "local-stack.sh"
CLI = "import sys; from rlhf.cli import main; raise SystemExit(main(sys.argv[1:]))"


def stack(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_up_without_postgresql_says_how_to_install_it_and_starts_nothing(tmp_path):
    done = stack("up", str(tmp_path / "s"), env={"PG_BIN": str(tmp_path / "nowhere")})
    assert done.returncode == 1
    assert "PostgreSQL's server programs are not installed" in done.stderr
    assert "apt-get install postgresql" in done.stderr and "PG_BIN" in done.stderr
    assert not (tmp_path / "s").exists()


def test_up_on_a_port_in_use_names_it_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = stack("up", str(tmp_path / "s"), "--prefect-port", str(port))
    assert done.returncode == 1
    assert f"port {port} (for prefect) is in use" in done.stderr and "--prefect-port" in done.stderr
    assert not (tmp_path / "s").exists()


def test_status_down_and_the_worker_commands_on_a_folder_without_a_stack(tmp_path):
    assert stack("status", str(tmp_path)).returncode == 1
    down = stack("down", str(tmp_path))
    assert down.returncode == 0 and "nothing to stop" in down.stdout
    for command in ("worker-stop", "worker-start"):
        done = stack(command, str(tmp_path))
        assert done.returncode == 1 and "no stack is running" in done.stderr and "up" in done.stderr


def rlhf_deploy(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_WORK_POOL")}
    return subprocess.run([sys.executable, "-c", CLI, "deploy", "experiment=smoke", "campaign.name=d",
                           f"campaign.root={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=120,
                          env={**base, "PREFECT_HOME": str(tmp_path / "home"), **env})


@pytest.mark.parametrize(("env", "message"), [
    ({}, "PREFECT_API_URL is not set"),
    ({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "set orchestration.work_pool (or PREFECT_WORK_POOL)"),
    ({"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_WORK_POOL": "rlhf"}, "does not answer"),
])
def test_deploy_needs_a_server_and_a_work_pool(tmp_path, env, message):
    done = rlhf_deploy(tmp_path, env)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # a failed deploy leaves no folder behind


def test_deploy_makes_campaign_root_absolute(tmp_path, monkeypatch):
    from rlhf.flows.config import compose_config
    from rlhf.flows.deploy import with_absolute_root

    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=smoke", "campaign.root=./runs", "campaign.name=d"]
    assert with_absolute_root(compose_config(overrides), overrides) == [
        "experiment=smoke", "campaign.name=d", f"campaign.root={tmp_path / 'runs'}"]
    default = ["experiment=smoke"]  # campaign.root's default, ./runs, is relative too
    assert with_absolute_root(compose_config(default), default)[-1] == f"campaign.root={tmp_path / 'runs'}"
    remote = ["campaign.root=s3://rlhf/campaigns"]
    assert with_absolute_root(compose_config(remote), remote) == remote
