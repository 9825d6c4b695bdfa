"""docker/ (compose.yaml, the opt-in compose.auth.yaml, the Dockerfile) and the repository's .dockerignore: what is
published where, where credentials come from, the health-gated start order, the MLflow server's stores, the
volumes' ownership and the build context.

Parsed with PyYAML, so no Docker daemon is needed. When Compose v2 is on PATH (the docker CLI's compose plugin, or
a `docker-compose` binary of version 2), `docker compose config` (which only parses, validates and interpolates)
also renders the files with docker/.env.example and without it.
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
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILES = [COMPOSE, AUTH]
IMAGE = "rlhf-platform:latest"  # the image docker/Dockerfile builds (compose.yaml's mlflow `build:`)

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
    assert urls == {"prefect-server.PREFECT_API_DATABASE_CONNECTION_URL", "mlflow.MLFLOW_BACKEND_STORE_URI"}


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
def test_mlflow_backend_uri_names_psycopg2_and_stays_off_the_command_line(path):
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the image installs psycopg2-binary. In the environment
    # (MLflow reads MLFLOW_BACKEND_STORE_URI for --backend-store-uri), the password is not in `ps` output.
    assert "--backend-store-uri" not in _mlflow_args(path)
    assert "MLFLOW_BACKEND_STORE_URI" not in _environment(_services(AUTH)["mlflow"])  # compose.yaml's applies
    uri = _environment(_services(COMPOSE)["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert uri.startswith("postgresql+psycopg2://"), uri


def test_auth_override_runs_the_same_mlflow_command_with_the_basic_auth_app():
    assert _mlflow_args(AUTH) == [*_mlflow_args(COMPOSE), "--app-name", "basic-auth"]
    services = _services(AUTH)
    assert set(_environment(services["prefect-server"])) == {"PREFECT_SERVER_API_AUTH_STRING"}
    worker = _environment(services["worker"])  # and its flow runs
    assert {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(worker)
    assert set(_environment(services["deploy"])) == {"PREFECT_API_AUTH_STRING"}


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in a command line; None if absent."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _bucket_created_by_minio_init() -> str:
    entrypoint = _services(COMPOSE)["minio-init"]["entrypoint"]
    made = re.search(r"mc mb (?:--ignore-existing )?local/([a-z0-9.-]+)", str(entrypoint))
    assert made, f"minio-init does not create a bucket: {entrypoint!r}"
    return made.group(1)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_mlflow_serves_artifacts_from_the_bucket_minio_init_creates(path):
    # Clients (the worker, teammates) upload and download through the server (mlflow-artifacts:), so only the
    # server holds S3 keys; a --default-artifact-root elsewhere would send new experiments around the proxy.
    args = _mlflow_args(path)
    assert "--serve-artifacts" in args and "--no-serve-artifacts" not in args, args
    assert _option(args, "--artifacts-destination") == f"s3://{_bucket_created_by_minio_init()}", args
    root = _option(args, "--default-artifact-root")
    assert root is None or root.startswith("mlflow-artifacts:"), root
    environment = _environment(_services(COMPOSE)["mlflow"])
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


# --- the start order: health-gated dependencies ------------------------------------------------------------------

GATES = {"service_healthy", "service_completed_successfully"}


def _depends_on(service: dict) -> dict[str, object]:
    """A service's depends_on as name -> its settings (None for an entry of the short, list syntax)."""
    depends = service.get("depends_on") or {}
    return dict.fromkeys(depends) if isinstance(depends, list) else dict(depends)


def _one_shots(services: dict[str, dict]) -> set[str]:
    """Services others wait to have exited 0 (minio-init): they run once, so they have no healthcheck."""
    return {
        name
        for service in services.values()
        for name, settings in _depends_on(service).items()
        if isinstance(settings, dict) and settings.get("condition") == "service_completed_successfully"
    }


def _depends_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        for dependency, settings in _depends_on(service).items():
            condition = settings.get("condition") if isinstance(settings, dict) else None
            if condition not in GATES:  # the list syntax and service_started wait for the start only
                problems.append(f"{name} -> {dependency}: condition {condition!r}, not one of {sorted(GATES)}")
            elif dependency not in services:
                problems.append(f"{name} -> {dependency}: no such service")
            elif condition == "service_healthy" and not _healthcheck(services[dependency]):
                problems.append(f"{name} waits for {dependency} to be healthy, which has no healthcheck")
    return problems


def _healthcheck(service: dict) -> list[str] | str | None:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    if check.get("disable") or not test or test in (["NONE"], "NONE"):
        return None
    return test


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_dependency_waits_for_a_condition(path):
    services = _services(COMPOSE)
    overrides = _services(path) if path != COMPOSE else {}
    for name, override in overrides.items():  # an override's depends_on entries add to compose.yaml's
        base = services.setdefault(name, {})
        base["depends_on"] = {**_depends_on(base), **_depends_on(override)}
    assert _depends_problems(services) == []


def test_the_depends_check_catches_the_list_syntax_service_started_and_a_missing_healthcheck():
    services = {
        "a": {"depends_on": ["b"]},
        "b": {"depends_on": {"c": {"condition": "service_started"}}},
        "c": {"depends_on": {"d": {"condition": "service_healthy"}}},
        "d": {"healthcheck": {"test": ["NONE"]}},
    }
    assert len(_depends_problems(services)) == 3


# Services that run once and exit: minio-init (others wait for it), deploy (registers the deployment; nothing waits).
ONE_SHOTS = {"minio-init", "deploy"}


def test_every_long_running_service_has_a_healthcheck_and_one_shots_are_only_waited_for():
    services = _services(COMPOSE)
    assert _one_shots(services) == {"minio-init"}
    missing = [name for name, service in services.items() if name not in ONE_SHOTS and not _healthcheck(service)]
    assert missing == []
    for name in ONE_SHOTS:  # nobody must wait for a one-shot to be healthy, nor may it publish anything
        assert not services[name].get("ports"), name
        assert not any(_depends_on(service).get(name) == {"condition": "service_healthy"}
                       for service in services.values())


def test_the_start_order():
    services = _services(COMPOSE)
    order = {name: {dependency: (settings or {}).get("condition") for dependency, settings in
                    _depends_on(service).items()} for name, service in services.items()}
    healthy, done = "service_healthy", "service_completed_successfully"
    assert order == {
        "postgres": {},
        "minio": {},
        "minio-init": {"minio": healthy},
        "prefect-server": {"postgres": healthy},
        "mlflow": {"postgres": healthy, "minio-init": done},
        "worker": {"prefect-server": healthy, "mlflow": healthy, "minio-init": done},
        "deploy": {"worker": healthy},  # the worker creates the work pool the deployment goes to
    }


def _python_check(service: dict) -> str:
    """The code of a `python -c` healthcheck."""
    test = _healthcheck(service)
    assert isinstance(test, list) and test[:3] == ["CMD", "python", "-c"] and len(test) == 4, test
    return test[3]


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("prefect-server", "http://localhost:4200/api/health"),
        ("mlflow", "http://localhost:5000/health"),  # exempt from --allowed-hosts and basic-auth logins
        ("worker", "http://localhost:8080/health"),  # the worker's web server (--with-healthcheck)
    ],
)
def test_the_http_healthchecks_get_the_health_endpoints(name, url):
    code = _python_check(_services(COMPOSE)[name])
    compile(code, f"{name} healthcheck", "exec")
    assert f"urlopen('{url}'" in code and "timeout=" in code, code


def test_the_worker_is_a_process_worker_with_the_web_server_its_healthcheck_asks():
    # The same command docker/local-stack.sh runs natively (and `make test-stack` drives).
    worker = _services(COMPOSE)["worker"]
    args = [*worker["entrypoint"], *shlex.split(worker["command"])]
    assert args[:3] == ["prefect", "worker", "start"] and _option(args, "--type") == "process", args
    assert "--with-healthcheck" in args  # serves /health on localhost:8080 (PREFECT_WORKER_WEBSERVER_PORT)
    pool = "${PREFECT_WORK_POOL:-rlhf}"
    assert _option(args, "--pool") == pool
    assert _environment(_services(COMPOSE)["deploy"])["PREFECT_WORK_POOL"] == pool  # deploys to that pool


def test_postgres_is_healthy_only_over_tcp():
    # During initdb/ the image's temporary server listens on its Unix socket only: a socket check passes before
    # the prefect and mlflow databases exist.
    test = _healthcheck(_services(COMPOSE)["postgres"])
    assert "pg_isready" in str(test) and re.search(r"-h 127\.0\.0\.1\b", str(test)), test


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_a_python_healthcheck_fails_exactly_when_the_endpoint_does(status, exit_code):
    import http.server
    import sys
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's API)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = _python_check(_services(COMPOSE)["mlflow"]).replace(
            "localhost:5000", f"127.0.0.1:{server.server_address[1]}")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == exit_code, result.stderr


# --- the worker: where it tracks, and that it registers models ---------------------------------------------------

DISABLED_REGISTRATION = re.compile(r"register_models\s*[=:]\s*[\"']?(false|no|off|0)\b", re.IGNORECASE)


def test_the_deployment_tracks_to_the_mlflow_server_and_both_talk_to_the_prefect_server():
    services = _services(COMPOSE)
    deploy, worker = services["deploy"], services["worker"]
    assert deploy["image"] == worker["image"] == IMAGE
    assert deploy["command"][0] == "deploy"  # `rlhf deploy` (the image's entrypoint is rlhf)
    # the flow runs (in the worker) track to the server and write where the worker's runs volume is mounted
    assert "tracking.uri=http://mlflow:5000" in deploy["command"] and "campaign.root=/work/runs" in deploy["command"]
    assert "runs:/work/runs" in worker["volumes"][0]
    for service in (deploy, worker):
        assert _environment(service)["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_nothing_in_docker_turns_model_registration_off():
    # Models reach the registry through the MLflow server's artifact store (docker/README.md, "Models").
    for path in [*COMPOSE_FILES, ENV_EXAMPLE, DOCKERFILE]:
        assert not DISABLED_REGISTRATION.search(path.read_text()), path.name
    for path in COMPOSE_FILES:
        for where, _key, value in _strings(_services(path)):
            assert "register_models" not in value, (path.name, where, value)
    assert DISABLED_REGISTRATION.search("- tracking.register_models=false")


# --- the image: its stores' drivers, its user and the volumes' mount points ---------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """docker/Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue  # comment lines inside a continuation are dropped too
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        op, _, args = pending.strip().partition(" ")
        instructions.append((op.upper(), args.strip()))
        pending = ""
    return instructions


def _runtime_user() -> str:
    users = [args for op, args in _instructions() if op == "USER"]
    assert users, "the Dockerfile never leaves root"
    return users[-1].split(":")[0]


def _owned_by(user: str) -> tuple[set[str], set[str]]:
    """Directories the RUN instructions before the last USER create or chown for ``user``: (exact, recursive)."""
    instructions = _instructions()
    last_user = max(i for i, (op, _args) in enumerate(instructions) if op == "USER")
    exact, recursive = set(), set()
    for op, args in instructions[:last_user]:
        if op != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = shlex.split(command)
            if not words:
                continue
            if words[0] == "install" and "-d" in words:
                owner, paths, i = None, [], 1
                while i < len(words):
                    if words[i] in ("-o", "--owner", "-g", "--group", "-m", "--mode"):
                        owner = words[i + 1] if words[i] in ("-o", "--owner") else owner
                        i += 2
                        continue
                    if words[i].startswith("--owner="):
                        owner = words[i].split("=", 1)[1]
                    elif not words[i].startswith("-"):
                        paths.append(words[i])
                    i += 1
                if owner == user:
                    exact.update(paths)
            elif words[0] == "chown":
                options = [w for w in words[1:] if w.startswith("-")]
                spec, *paths = [w for w in words[1:] if not w.startswith("-")]
                if spec.split(":")[0] == user:
                    (recursive if {"-R", "--recursive"} & set(options) else exact).update(paths)
    return exact, recursive


def _our_volume_targets() -> set[str]:
    """Where compose mounts named volumes into our image (whose user must be able to write there)."""
    targets = set()
    for path in COMPOSE_FILES:
        merged = _services(COMPOSE) if path == AUTH else {}
        for name, service in _services(path).items():
            image = service.get("image") or merged.get(name, {}).get("image")
            if image != IMAGE:
                continue
            for volume in service.get("volumes") or []:
                if isinstance(volume, dict):
                    if volume.get("type") == "volume":
                        targets.add(volume["target"])
                    continue
                source, target = str(volume).split(":")[:2]
                if not source.startswith((".", "/", "~", "$")):  # a named volume, not a bind mount
                    targets.add(target)
    return targets


def test_the_image_has_the_mlflow_servers_postgres_and_s3_drivers():
    installs = " ".join(args for op, args in _instructions() if op == "RUN" and "pip install" in args)
    for package in ("psycopg2-binary", "boto3"):
        assert re.search(rf"(?<![\w-]){package}(?![\w-])", installs), f"docker/Dockerfile does not install {package}"


def test_the_image_runs_as_a_user_who_owns_every_volume_mount_point():
    user = _runtime_user()
    assert user not in ("root", "0"), user
    targets = _our_volume_targets()
    assert targets == {"/work/runs", "/home/rlhf/.cache/rlhf", "/work"}  # runs, models, mlflow-auth
    exact, recursive = _owned_by(user)
    home = f"/home/{user}"
    for target in sorted(targets):
        # Docker creates a missing parent of a mount point root-owned: those under the home must exist too.
        parents = [str(p) for p in Path(target).parents if str(p).startswith(home + "/")]
        for directory in [target, *parents]:
            owned = directory in exact or any(directory == r or directory.startswith(r + "/") for r in recursive)
            assert owned, f"{directory} (mount point {target}) is not created owned by {user} before USER {user}"


def test_the_ownership_parser_reads_install_and_chown(tmp_path, monkeypatch):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM x\nRUN useradd app \\\n # a comment\n && install -d -o app -g app -m 755 /a /b\n"
        "RUN mkdir -p /c/d && chown -R app:app /c && chown root /e\nUSER app\nRUN install -d -o app /late\n"
    )
    monkeypatch.setitem(globals(), "DOCKERFILE", dockerfile)
    assert _runtime_user() == "app"
    assert _owned_by("app") == ({"/a", "/b"}, {"/c"})


# --- the build context: .dockerignore ---------------------------------------------------------------------------


def _dockerignore() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _copied_sources() -> list[str]:
    """What the Dockerfile COPYs (or ADDs) from the build context."""
    sources = []
    for op, args in _instructions():
        if op in ("COPY", "ADD"):
            words = shlex.split(args)
            if any(word.startswith("--from") for word in words):
                continue
            sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def test_dockerignore_exists_and_keeps_the_venv_and_campaign_outputs_out():
    patterns = {pattern.strip("/") for pattern in _dockerignore()}
    for needed in (".venv", "runs", ".git", "mlflow.db", "**/__pycache__", ".pytest_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"


def test_dockerignore_excludes_what_it_should_and_nothing_the_dockerfile_copies():
    build = pytest.importorskip("docker.utils.build", reason="the docker SDK (the .dockerignore matcher) is missing")
    matcher = build.PatternMatcher(_dockerignore())
    for excluded in (".venv/bin/python", "runs/demo/iter-1/policy/model.safetensors", "mlflow.db", ".git/HEAD",
                     "rlhf/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/cache/lastfailed", "docker/.env",
                     "mlartifacts/1/a/b", ".prefect/prefect.db", "benchmarks/results/sft.json", "model.gguf"):
        assert matcher.matches(excluded), f".dockerignore lets {excluded} into the build context"
    sources = _copied_sources()
    assert sources and all((REPO / source).exists() for source in sources), sources
    files = list(sources)
    git = shutil.which("git")
    listed = subprocess.run([git, "ls-files", "--", *sources], cwd=REPO, capture_output=True, text=True,
                            timeout=60) if git and (REPO / ".git").exists() else None
    if listed is not None and listed.returncode == 0:  # every tracked file the COPYs take
        files += listed.stdout.split()
    kept_out = [path for path in files if matcher.matches(path)]
    assert kept_out == [], f".dockerignore excludes files the Dockerfile COPYs: {kept_out[:10]}"


# --- docker compose config (parses, validates and interpolates; needs no daemon) ---------------------------------

COMPOSE_VERSION = re.compile(r"version v?(\d+)\.\d+", re.IGNORECASE)


def _compose_cli() -> list[str]:
    """The command of Compose v2: the docker CLI's plugin, else a `docker-compose` v2 binary on PATH. Compose v1
    (the Python `docker-compose` 1.x) renders and words its errors differently: skipped."""
    reasons = []
    for name, prefix in (("docker", ["compose"]), ("docker-compose", [])):
        binary = shutil.which(name)
        if binary is None:
            reasons.append(f"no {name} on PATH")
            continue
        command = [binary, *prefix]
        try:
            version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            reasons.append(f"`{name} {' '.join(prefix)} version` did not run: {error}")
            continue
        said = " ".join((version.stdout or version.stderr).split())
        found = COMPOSE_VERSION.search(said)
        if version.returncode == 0 and found and int(found.group(1)) >= 2:
            return command
        reasons.append(f"`{' '.join([name, *prefix, 'version'])}`: {said[:120]!r}")
    pytest.skip("no Compose v2 on this machine: " + "; ".join(reasons))


def _compose_config(cli: list[str], files: list[Path], env_file: Path, **env: str) -> subprocess.CompletedProcess:
    referenced = {name for path in COMPOSE_FILES for name, _op, _rest in REFERENCE.findall(path.read_text())}
    clean = {k: v for k, v in os.environ.items() if k not in referenced and not k.startswith("COMPOSE_")}
    args = list(cli)
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
    cli = _compose_cli()
    result = _compose_config(cli, files, ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert _host_ips(rendered) == {"minio": {"127.0.0.1"}, "prefect-server": {"127.0.0.1"}, "mlflow": {"127.0.0.1"}}
    assert rendered["services"]["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "change-me-minio-password"
    command = rendered["services"]["mlflow"]["command"]
    assert "postgresql+psycopg2://rlhf:change-me-postgres-password@postgres:5432/mlflow" in command
    # Compose writes every depends_on out with its condition (the list syntax becomes service_started).
    services = rendered["services"]
    assert _depends_problems(services) == []
    assert [name for name in services if name not in _one_shots(services) and not _healthcheck(services[name])] == []
    assert not any(DISABLED_REGISTRATION.search(part) for part in services["worker"]["command"])

    opted_in = _compose_config(cli, files, ENV_EXAMPLE, RLHF_BIND="0.0.0.0")
    assert opted_in.returncode == 0, opted_in.stderr
    assert set().union(*_host_ips(yaml.safe_load(opted_in.stdout)).values()) == {"0.0.0.0"}


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, AUTH]], ids=["compose", "compose+auth"])
def test_docker_compose_config_without_credentials_fails_naming_the_variable(files, tmp_path):
    cli = _compose_cli()
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(cli, files, empty)
    assert result.returncode != 0, result.stdout
    required = set().union(*(_required_in(path.read_text()) for path in files))
    named = re.search(r"required variable (\w+) is missing a value", result.stderr)
    assert named and named.group(1) in required, result.stderr
    assert "docker/.env" in result.stderr
