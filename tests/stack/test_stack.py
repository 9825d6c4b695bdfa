"""The team stack of docker/compose.yaml, run for real without Docker: docker/local-stack.sh starts PostgreSQL,
the S3 server (moto), the Prefect server on Postgres, the MLflow server (Postgres store, artifacts in S3) and a
Prefect process worker, natively on loopback. Through them, as a team would:

1. `rlhf deploy` registers the smoke campaign's next iteration on the work pool; `prefect deployment run`
   triggers it twice in a row: one flow run completes (SFT + RLHF-V1), the other is refused by the campaign lock
   and ends Failed. Checked in the servers' own databases (flow_run.state_type; MLflow's runs, metrics and
   registry) and in the S3 bucket (artifacts, and the files of every registered model version).
2. The worker is killed (SIGKILL, its flow run with it) while RLHF-V2's Ghost Attention step is training; after
   `worker-start` the next trigger completes V2: the finished steps Cached, the killed step resumed from its
   checkpoint.
3. `down` leaves no process of the stack alive and none of its ports listening.

The tests run in order and share the stack (one module-scoped fixture; `down` always runs at the end).
The campaign lives on the stack's S3 server (`s3://rlhf/campaigns/<random>`; RLHF_STACK_CAMPAIGN_ROOT=<folder>
puts it in a local folder instead), so its step outputs, summary and lock are on the bucket too. Step manifests
are read through fsspec, and the kill waits for GAtt's checkpoints in the campaign's working copy on this
machine. The killed run never releases its lock on the bucket: the campaign's lease is 15 s here
(campaign.lock_lease_seconds; 120 s by default), and the trigger after the restart comes once it has run out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "local-stack.sh"
VENV_BIN = REPO / ".venv" / "bin"
CAMPAIGN = "team"
DEPLOYMENT = f"rlhf-next-iteration/{CAMPAIGN}-next-iteration"
# GAtt's fine-tune lengthened (16 epochs of its 6 examples, a checkpoint every step): a window of ~15 s to kill
# the worker in mid-training, with checkpoints to resume from.
SLOWER_GATT = "gatt.train.epochs=16"
LEASE = 15  # seconds the lock of a killed run holds the campaign (campaign.lock_lease_seconds)
TRAINING_STEPS = {"sft", "train_reward_models", "train_policy", "ppo", "gatt"}


class Stack:
    """The running stack as its stack.env and stack.json describe it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env = {name: value for name, value in re.findall(r"^export (\w+)=(\S*)$",
                                                              (directory / "stack.env").read_text(), re.M)}
        self.record = json.loads((directory / "stack.json").read_text())

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args, str(self.dir)], capture_output=True, text=True, timeout=timeout)

    def client_env(self) -> dict[str, str]:
        """This process's environment with the stack's client settings (what `source stack.env` gives a shell)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "AWS_", "PG"))}
        return env | self.env

    def run(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(list(argv), env=self.client_env(), capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def sql(self, database: str, query: str, *params) -> list[tuple]:
        """Rows straight from a server's database (not through its API)."""
        with psycopg2.connect(host="127.0.0.1", port=int(self.env["PGPORT"]), user=self.env["PGUSER"],
                              password=self.env["PGPASSWORD"], dbname=database) as connection:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()

    def api(self, path: str, body: dict | None = None):
        """The Prefect server's REST API."""
        request = urllib.request.Request(self.env["PREFECT_API_URL"] + path, method="POST" if body else "GET",
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def worker_log(self) -> str:
        return Path(self.record["services"]["worker"]["log"]).read_text(errors="replace")[-4000:]

    def s3_keys(self, bucket: str) -> set[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.env["MLFLOW_S3_ENDPOINT_URL"],
                          aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    # Prefect
    def trigger(self) -> str:
        """`prefect deployment run`, as a person would; the flow run's id."""
        out = self.run(str(VENV_BIN / "prefect"), "deployment", "run", DEPLOYMENT)
        return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    def flow_state(self, flow_run_id: str) -> tuple[str, str]:
        """(state type, message) from the server's database."""
        rows = self.sql("prefect", "SELECT f.state_type, s.message FROM flow_run f LEFT JOIN flow_run_state s ON "
                                   "s.id = f.state_id WHERE f.id = %s", flow_run_id)
        return (rows[0][0], rows[0][1] or "") if rows else ("", "")

    def wait_final(self, flow_run_id: str, timeout: float = 420) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api(f"/flow_runs/{flow_run_id}")["state"]["type"]
            if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return state
            time.sleep(2)
        raise AssertionError(f"flow run {flow_run_id} not finished after {timeout} s; the worker's log:\n"
                             f"{self.worker_log()}")

    def task_states(self, flow_run_id: str) -> dict[str, list[str]]:
        """Step name -> state names of the task runs in a flow run and its subflows, from the server's database.
        Task runs are written from events, a moment after the flow run ends: read until two reads agree."""
        query = """
            WITH RECURSIVE tree(id) AS (
                SELECT id FROM flow_run WHERE id = %s
                UNION SELECT f.id FROM flow_run f JOIN task_run t ON f.parent_task_run_id = t.id
                                                   JOIN tree ON t.flow_run_id = tree.id)
            SELECT t.name, t.state_name FROM task_run t WHERE t.flow_run_id IN (SELECT id FROM tree)
            ORDER BY t.expected_start_time"""
        before = None
        for _ in range(20):
            states: dict[str, list[str]] = {}
            for name, state in self.sql("prefect", query, flow_run_id):
                states.setdefault(name, []).append(state)
            if states == before:
                return states
            before = states
            time.sleep(1.5)
        return states

    def flow_runs(self, name_like: str) -> dict[str, str]:
        return dict(self.sql("prefect", "SELECT id::text, state_type FROM flow_run WHERE name LIKE %s", name_like))


@pytest.fixture(scope="module")
def stack():
    # DIR under /tmp, searchable by others: as root, PostgreSQL runs as nobody, who must reach DIR/postgres.
    directory = Path(tempfile.mkdtemp(prefix="rlhf-stack-"))
    directory.chmod(0o755)
    up = subprocess.run([str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, f"local-stack.sh up failed:\n{up.stdout}\n{up.stderr}"
        running = Stack(directory)
        again = running.script("up")  # a second `up` sees the running stack and leaves it alone
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        yield running
    finally:
        down = subprocess.run([str(SCRIPT), "down", str(directory)], capture_output=True, text=True, timeout=300)
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, f"local-stack.sh down failed:\n{down.stdout}\n{down.stderr}"


def local_root(root: str) -> Path:
    """The campaign root's folder on this machine: the root itself, or for a root on object storage its working
    copy, which the worker's flow runs and this process find alike as long as RLHF_CACHE_DIR is the same."""
    try:
        from rlhf.record.layout import local_root as working_folder  # with campaign outputs on object storage
    except ImportError:
        return Path(root)
    return Path(working_folder(root))


@pytest.fixture(scope="module")
def campaign_root(tmp_path_factory):
    given = os.environ.get("RLHF_STACK_CAMPAIGN_ROOT", "s3://rlhf/campaigns")
    if "://" not in given:
        yield str(tmp_path_factory.mktemp("campaigns"))
        return
    # A new prefix each time: the stack's S3 server starts empty, this machine's working copy of a root does not.
    root = f"{given.rstrip('/')}/{uuid.uuid4().hex[:8]}"
    yield root
    shutil.rmtree(local_root(root), ignore_errors=True)


def checkpoint_steps(root: str) -> list[int]:
    """The steps of GAtt's fine-tune checkpoints in RLHF-V2 (``.gatt.work``, beside the step's output in the
    campaign's folder on this machine)."""
    work = local_root(root) / CAMPAIGN / "iter-2" / ".gatt.work" / "sft" / "checkpoints"
    return sorted(int(p.name.removeprefix("step-")) for p in work.glob("step-*") if p.name[5:].isdigit())


def campaign_files(stack: Stack, root: str):
    """(filesystem, path) of the campaign directory: a local folder, or e.g. s3://rlhf/... on the stack's S3."""
    import fsspec

    options = {"client_kwargs": {"endpoint_url": stack.env["MLFLOW_S3_ENDPOINT_URL"]},
               "key": stack.env["AWS_ACCESS_KEY_ID"], "secret": stack.env["AWS_SECRET_ACCESS_KEY"]}
    fs, path = fsspec.core.url_to_fs(root, **(options if root.startswith("s3://") else {}))
    return fs, f"{path.rstrip('/')}/{CAMPAIGN}"


def manifest(stack: Stack, root: str, iteration: int, step: str) -> dict:
    fs, home = campaign_files(stack, root)
    return json.loads(fs.cat_file(f"{home}/iter-{iteration}/{step}/manifest.json"))


def test_deploy_then_one_run_completes_and_a_second_trigger_is_refused(stack, campaign_root):
    out = stack.run(str(VENV_BIN / "rlhf"), "deploy", "experiment=smoke", f"campaign.name={CAMPAIGN}",
                    f"campaign.root={campaign_root}", "tracking=server",
                    f"tracking.uri={stack.env['MLFLOW_TRACKING_URI']}", SLOWER_GATT,
                    f"campaign.lock_lease_seconds={LEASE}")
    assert f"deployment {DEPLOYMENT}" in out and f"work pool {stack.env['PREFECT_WORK_POOL']}" in out, out
    [(entrypoint, parameters, pool)] = stack.sql(
        "prefect", "SELECT d.entrypoint, d.parameters, w.name FROM deployment d JOIN work_queue q ON "
                   "q.id = d.work_queue_id JOIN work_pool w ON w.id = q.work_pool_id WHERE d.name = %s",
        f"{CAMPAIGN}-next-iteration")
    assert entrypoint == "rlhf.flows.campaign.next_iteration_flow" and pool == stack.env["PREFECT_WORK_POOL"]
    assert f"campaign.root={campaign_root}" in parameters["overrides"]

    # Two triggers in a row: both flow runs start, one takes the campaign's lock, the other is refused.
    first, second = stack.trigger(), stack.trigger()
    finals = {run: stack.wait_final(run) for run in (first, second)}
    assert sorted(finals.values()) == ["COMPLETED", "FAILED"], (finals, stack.worker_log())
    done = next(run for run, state in finals.items() if state == "COMPLETED")
    refused = next(run for run, state in finals.items() if state == "FAILED")
    # ... as recorded in the Prefect server's database, with the lock's message
    assert stack.flow_state(done)[0] == "COMPLETED"
    state, message = stack.flow_state(refused)
    assert state == "FAILED" and f"campaign {CAMPAIGN}" in message and "is being run by pid" in message, message
    # the completed run did SFT and RLHF-V1: every step ran once, nothing cached on an empty campaign
    steps = stack.task_states(done)
    assert steps["sft"] == ["Completed"] and steps["evaluate"] == ["Completed"], steps
    assert manifest(stack, campaign_root, 1, "evaluate")["key"]
    fs, home = campaign_files(stack, campaign_root)
    assert not fs.exists(f"{home}/iter-2")

    # MLflow: runs and metrics in Postgres, none left RUNNING
    [(experiment, location)] = stack.sql("mlflow", "SELECT experiment_id, artifact_location FROM experiments "
                                                   "WHERE name = %s", CAMPAIGN)
    assert location == f"mlflow-artifacts:/{experiment}"  # the server's proxy, which stores in s3://mlflow
    runs = dict(stack.sql("mlflow", "SELECT name, status FROM runs WHERE experiment_id = %s AND lifecycle_stage = "
                                    "'active'", experiment))
    assert {"campaign", "SFT", "RLHF-V1", "sft", "ppo", "evaluate"} <= set(runs), runs
    assert set(runs.values()) == {"FINISHED"}, runs
    metrics = dict(stack.sql("mlflow", "SELECT key, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                                       "WHERE r.experiment_id = %s GROUP BY key", experiment))
    assert len(metrics) > 20 and any(key.startswith("win_rate") for key in metrics), metrics

    # Artifacts in S3, under the runs' artifact URIs
    keys = stack.s3_keys("mlflow")
    uris = dict(stack.sql("mlflow", "SELECT name, artifact_uri FROM runs WHERE experiment_id = %s", experiment))
    evaluate = uris["evaluate"].removeprefix("mlflow-artifacts:/")
    assert any(key.startswith(f"{evaluate}/") and key.endswith("manifest.json") for key in keys), sorted(keys)[:20]

    # The registry: each version's source is a run artifact whose files are in the bucket
    versions = stack.sql("mlflow", "SELECT v.name, v.version, v.source, r.artifact_uri FROM model_versions v "
                                   "JOIN runs r ON r.run_uuid = v.run_id")
    assert {name for name, *_ in versions} == {f"{CAMPAIGN}-policy", f"{CAMPAIGN}-rm-helpful",
                                               f"{CAMPAIGN}-rm-safety"}, versions
    for name, version, source, artifact_uri in versions:
        run_id, path = re.fullmatch(r"runs:/(\w+)/(.+)", source).groups()
        prefix = f"{artifact_uri.removeprefix('mlflow-artifacts:/')}/{path}/"
        assert {prefix + "model.safetensors", prefix + "manifest.json"} <= keys, (name, version, source)


def test_a_worker_killed_mid_step_resumes_after_a_restart(stack, campaign_root):
    killed = stack.trigger()  # RLHF-V2 (V1 finished)
    deadline = time.monotonic() + 420
    while not (stack.api("/task_runs/filter", {"task_runs": {"name": {"any_": ["gatt"]}, "state": {
            "type": {"any_": ["RUNNING"]}}}, "limit": 5}) and len(checkpoint_steps(campaign_root)) >= 1
            and max(checkpoint_steps(campaign_root)) >= 2):
        assert time.monotonic() < deadline, f"gatt never ran with checkpoints; the worker's log:\n{stack.worker_log()}"
        assert stack.flow_state(killed)[0] in {"SCHEDULED", "PENDING", "RUNNING"}, stack.worker_log()
        time.sleep(0.3)
    flow_pid = stack.sql("prefect", "SELECT infrastructure_pid FROM flow_run WHERE id = %s", killed)[0][0]
    stopped = stack.script("worker-stop", "--kill")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    seen = max(checkpoint_steps(campaign_root))
    # the worker and the flow run it ran are gone (the flow run was in a session of its own)
    pid = int(str(flow_pid).rsplit(":", 1)[-1])
    assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    assert stack.flow_state(killed)[0] == "RUNNING"  # nobody told the server: its process died

    started = stack.script("worker-start")
    assert started.returncode == 0, started.stdout + started.stderr
    if "://" in campaign_root:  # the killed run's lock on the bucket: until its lease runs out, a run is refused
        time.sleep(LEASE + 2)
    resumed = stack.trigger()
    assert stack.wait_final(resumed) == "COMPLETED", stack.worker_log()
    assert stack.flow_state(resumed)[0] == "COMPLETED"

    steps = stack.task_states(resumed)
    # SFT, RLHF-V1 and V2's steps before GAtt: Cached; GAtt computed again from its last checkpoint
    cached = {name for name, states in steps.items() if states and all(s == "Cached" for s in states)}
    assert {"sft", "seed_pairs", "collect_pairs", "annotate", "train_reward_models", "eval_reward_models",
            "search_temperature", "rejection_sample", "train_policy", "ppo"} <= cached, steps
    assert steps["gatt"][-1] == "Completed" and steps["evaluate"][-1] == "Completed", steps
    gatt = manifest(stack, campaign_root, 2, "gatt")["metrics"]
    assert gatt["resumed_from_step"] >= min(seen, 2) and gatt["resumed_from_step"] > 0, gatt
    # the next run marked what the killed one left running: its campaign and iteration subflows Crashed in
    # Prefect, its MLflow runs FAILED
    assert set(stack.flow_runs(f"{CAMPAIGN}-RLHF-V2").values()) == {"CRASHED", "COMPLETED"}
    # ... and the deployment's own run, named after the campaign: the refused one FAILED, the killed one CRASHED
    assert sorted(stack.flow_runs(f"{CAMPAIGN}-next-iteration").values()) == ["COMPLETED", "COMPLETED", "CRASHED",
                                                                             "FAILED"]
    assert stack.sql("mlflow", "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(0,)]
    assert manifest(stack, campaign_root, 2, "evaluate")["key"]


def test_down_leaves_no_process_and_no_port(stack):
    record = json.loads((stack.dir / "stack.json").read_text())
    ports = [entry["port"] for entry in record["services"].values()]
    pids = [entry["pid"] for entry in record["services"].values()]
    down = stack.script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listens"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text(), pid
    tag = f"RLHF_STACK={record['id']}:".encode()
    left = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and tag in Path(f"/proc/{entry}/environ").read_bytes():
                left.append(entry)
        except OSError:
            continue
    assert left == [], f"processes of the stack still alive: {left}"
    assert stack.script("status").returncode == 1
