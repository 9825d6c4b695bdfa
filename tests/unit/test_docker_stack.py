"""docker/compose.yaml (and the opt-in compose.auth.yaml): what is published where, and where credentials come from.

Parsed with PyYAML, so no Docker daemon is needed. When the docker CLI has its compose plugin, `docker compose
config` (which only parses and interpolates) also renders the files with docker/.env.example and without it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
AUTH = DOCKER / "compose.auth.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPOSE_FILES = [COMPOSE, AUTH]

BIND = "${RLHF_BIND:-127.0.0.1}"
SHORT_PORT = re.compile(r"\$\{RLHF_BIND:-127\.0\.0\.1\}:(\d+):(\d+)(/tcp|/udp)?")
# A compose interpolation (not the `$${...}` escape, which the container's shell expands): name, operator, rest.
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])([^}]*))?\}")
REQUIRED_WHOLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
# Names of credentials: variables and environment keys. MINIO_ROOT_USER is also the S3 access key id.
CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|ACCESS_KEY|MINIO_ROOT_USER")
# user:password@ in a URL, either part possibly an interpolation (whose message may hold spaces and colons).
URL_USERINFO = re.compile(r"://(\$\{[^}]*\}|[^:/@\s]+):(\$\{[^}]*\}|[^@\s]+)@")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _services(path: Path) -> dict[str, dict]:
    return _load(path).get("services") or {}


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _required_in(text: str) -> dict[str, str]:
    """Every `${NAME:?message}` in a compose file's text: name -> message."""
    return {name: rest for name, op, rest in REFERENCE.findall(text) if op == ":?"}


def _strings(services: dict[str, dict]):
    """(where, key, value) for every environment value and every command of every service."""
    for service_name, service in services.items():
        for key, value in _environment(service).items():
            yield f"{service_name}.{key}", key, value
        command = service.get("command") or ""
        for part in command if isinstance(command, list) else [command]:
            yield f"{service_name}.command", "command", str(part)


def _credential_problems(text: str, services: dict[str, dict]) -> list[str]:
    """What gives a credential a value that works without the operator setting it."""
    problems = [
        f"${{{name}{op}{rest}}}: a credential must use ${{{name}:?...}}"
        for name, op, rest in REFERENCE.findall(text)
        if CREDENTIAL.search(name) and op != ":?"
    ]
    for where, key, value in _strings(services):
        if CREDENTIAL.search(key) and not REQUIRED_WHOLE.fullmatch(value):
            problems.append(f"{where}={value!r} is not exactly one ${{VAR:?...}}")
        for _user, password in URL_USERINFO.findall(value):
            if not REQUIRED_WHOLE.fullmatch(password):
                problems.append(f"{where}: the password in a URL is {password!r}, not ${{VAR:?...}}")
    return problems


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def _mlflow_args(path: Path) -> list[str]:
    command = _services(path)["mlflow"]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# --- what is published where ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_published_port_is_bound_to_rlhf_bind_defaulting_to_loopback(path):
    for name, service in _services(path).items():
        for entry in service.get("ports") or []:
            if isinstance(entry, dict):  # long syntax
                assert entry.get("host_ip") == BIND, f"{path.name}: {name} publishes {entry} without host_ip {BIND}"
            else:
                assert SHORT_PORT.fullmatch(str(entry)), f"{path.name}: {name} publishes {entry!r}, not {BIND}:H:C"


def test_the_stack_still_publishes_prefect_mlflow_and_the_minio_console_and_nothing_else():
    published = {
        name: sorted(int(SHORT_PORT.fullmatch(str(entry)).group(1)) for entry in service.get("ports") or [])
        for name, service in _services(COMPOSE).items()
        if service.get("ports")
    }
    assert published == {"minio": [9001], "prefect-server": [4200], "mlflow": [5000]}


# --- credentials come from the environment ---------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_no_credential_has_a_working_default(path):
    assert _credential_problems(path.read_text(), _services(path)) == []


def test_the_database_urls_are_checked_too():
    urls = {where for where, _key, value in _strings(_services(COMPOSE)) if URL_USERINFO.search(value)}
    assert urls == {"prefect-server.PREFECT_API_DATABASE_CONNECTION_URL", "mlflow.command"}


def test_the_credential_check_catches_defaults_literals_and_passwords_in_urls():
    text = (
        "services:\n  db:\n    environment:\n"
        "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-rlhf}\n"
        "      AWS_SECRET_ACCESS_KEY: rlhf-secret\n"
        "      URL: postgresql://u:hunter2@db/x\n"
        "    command: server --store postgresql://u:${P:?set P}@db/x\n"
    )
    problems = _credential_problems(text, yaml.safe_load(text)["services"])
    assert len(problems) == 4, problems  # the default (as text and as a value), the literal, the URL's literal
    assert not any("${P:?" in p for p in problems)


def test_the_stack_requires_the_database_and_minio_credentials_with_a_message_pointing_at_docker_env():
    required = _required_in(COMPOSE.read_text())
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(required)
    for path in COMPOSE_FILES:
        for name, message in _required_in(path.read_text()).items():
            assert message == f"set {name} in docker/.env (see docker/README.md)", (path.name, name)


def test_env_example_lists_every_required_variable_with_a_placeholder():
    example = _env_example()
    for path in COMPOSE_FILES:
        missing = set(_required_in(path.read_text())) - set(example)
        assert not missing, f"{path.name} requires {sorted(missing)}, which docker/.env.example does not list"
    required = set().union(*(_required_in(path.read_text()) for path in COMPOSE_FILES))
    for name in required:
        assert "change-me" in example[name], f"{name}={example[name]!r} in .env.example looks usable as it is"


def test_docker_env_is_ignored_by_git_and_the_example_is_not():
    patterns = [line.strip() for line in (DOCKER / ".gitignore").read_text().splitlines()]
    assert ".env" in patterns or "/.env" in patterns
    git = shutil.which("git")
    if git and (REPO / ".git").exists():
        ignored = subprocess.run([git, "check-ignore", "-q", "docker/.env"], cwd=REPO, timeout=60)
        if ignored.returncode not in (0, 1):  # 128: git cannot read this repository (ownership, ...)
            return
        assert ignored.returncode == 0, "git does not ignore docker/.env"
        example = subprocess.run([git, "check-ignore", "-q", "docker/.env.example"], cwd=REPO, timeout=60)
        assert example.returncode == 1, "git ignores docker/.env.example"


# --- MLflow's server ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_mlflow_backend_uri_names_psycopg2(path):
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the image installs psycopg2-binary.
    args = _mlflow_args(path)
    uri = args[args.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql+psycopg2://"), uri


def test_auth_override_runs_the_same_mlflow_command_with_the_basic_auth_app():
    assert _mlflow_args(AUTH) == [*_mlflow_args(COMPOSE), "--app-name", "basic-auth"]
    services = _services(AUTH)
    assert set(_environment(services["prefect-server"])) == {"PREFECT_SERVER_API_AUTH_STRING"}
    worker = _environment(services["worker"])
    assert {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(worker)


# --- docker compose config (parses and interpolates; needs no daemon) -------------------------------------------


def _compose_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    try:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"`docker compose version` did not run: {error}")
    if version.returncode != 0:
        said = " ".join((version.stderr or version.stdout).split())
        pytest.skip(f"the docker CLI has no compose plugin ({said[:200]})")
    return docker


def _compose_config(docker: str, files: list[Path], env_file: Path, **env: str) -> subprocess.CompletedProcess:
    referenced = {name for path in COMPOSE_FILES for name, _op, _rest in REFERENCE.findall(path.read_text())}
    clean = {k: v for k, v in os.environ.items() if k not in referenced and not k.startswith("COMPOSE_")}
    args = [docker, "compose"]
    for path in files:
        args += ["-f", str(path)]
    args += ["--env-file", str(env_file), "config"]
    return subprocess.run(args, cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def _host_ips(rendered: dict) -> dict[str, set[str]]:
    return {
        name: {port.get("host_ip", "") for port in service.get("ports") or []}
        for name, service in rendered["services"].items()
        if service.get("ports")
    }


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, AUTH]], ids=["compose", "compose+auth"])
def test_docker_compose_config_renders_with_the_env_example(files):
    docker = _compose_cli()
    result = _compose_config(docker, files, ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert _host_ips(rendered) == {"minio": {"127.0.0.1"}, "prefect-server": {"127.0.0.1"}, "mlflow": {"127.0.0.1"}}
    assert rendered["services"]["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "change-me-minio-password"
    command = rendered["services"]["mlflow"]["command"]
    assert "postgresql+psycopg2://rlhf:change-me-postgres-password@postgres:5432/mlflow" in command

    opted_in = _compose_config(docker, files, ENV_EXAMPLE, RLHF_BIND="0.0.0.0")
    assert opted_in.returncode == 0, opted_in.stderr
    assert set().union(*_host_ips(yaml.safe_load(opted_in.stdout)).values()) == {"0.0.0.0"}


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, AUTH]], ids=["compose", "compose+auth"])
def test_docker_compose_config_without_credentials_fails_naming_the_variable(files, tmp_path):
    docker = _compose_cli()
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(docker, files, empty)
    assert result.returncode != 0, result.stdout
    required = set().union(*(_required_in(path.read_text()) for path in files))
    named = re.search(r"required variable (\w+) is missing a value", result.stderr)
    assert named and named.group(1) in required, result.stderr
    assert "docker/.env" in result.stderr
