"""The real CLI killed mid-run (SIGKILL, SIGTERM), as a scheduler or a person would: the temporary Prefect
server goes with it, the lock is released, and `rlhf resume` ends where an uninterrupted run ends, with
the leftovers of the dead run cleaned and nothing left RUNNING in MLflow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rlhf.record.layout import campaign_lock

# `rlhf run` in its own process, killed and resumed: `make test-processes`.
pytestmark = [pytest.mark.slow, pytest.mark.processes]
SMOKE = ["experiment=smoke", "campaign.name=c", "campaign.iterations=1", "campaign.gatt_from=null"]
VOLATILE = {"wall_seconds", "peak_rss_mb", "tokens_per_s", "pairs_per_s", "code_version", "campaign_dir",
            "tracking_uri", "mlflow_run_id", "policy_path", "reward_model_paths", "report", "root", "resumed_from_step"}


def _foreground_signals() -> None:
    """Ctrl-C's default action, as in a terminal's foreground job: a test run started in the background of a
    non-interactive shell (``make test &``) inherits SIGINT ignored, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rlhf(root: Path, *args: str) -> subprocess.Popen:
    """The CLI in its own process group, as a shell would start it in the foreground, logging to
    ``root/cli.log``."""
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    log = open(root / "cli.log", "a")
    return subprocess.Popen([sys.executable, "-m", "rlhf", *args, f"campaign.root={root}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_foreground_signals)


def wait_for(root: Path, pattern: str, process: subprocess.Popen, timeout: float = 240) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := re.search(pattern, (root / "cli.log").read_text()):
            return found
        assert process.poll() is None, (root / "cli.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {root / 'cli.log'} after {timeout} s")


def gone(pid: int, timeout: float = 15) -> bool:
    """The process exited (a zombie waiting for a reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


def comparable(summary: dict):
    if isinstance(summary, dict):
        return {k: comparable(v) for k, v in summary.items() if k not in VOLATILE and not k.startswith("seconds_")}
    if isinstance(summary, list):
        return [comparable(v) for v in summary]
    return summary


def running_mlflow_runs(root: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("c")
    return [r.info.run_name for r in client.search_runs([experiment.experiment_id], max_results=500)
            if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def clean_summary(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clean")
    assert rlhf(root, "run", *SMOKE).wait(timeout=600) == 0, (root / "cli.log").read_text()[-3000:]
    return json.loads((root / "c" / "summary.json").read_text())


@pytest.mark.parametrize("at", ["rm_train: start", "rejection_sample: start"])
def test_sigkill_leaves_no_server_and_resume_matches_a_clean_run(tmp_path, clean_summary, at):
    cli = rlhf(tmp_path, "run", *SMOKE)
    server = int(wait_for(tmp_path, r"temporary server on \S+ \(pid (\d+)\)", cli).group(1))
    wait_for(tmp_path, at, cli)
    os.kill(cli.pid, signal.SIGKILL)  # the CLI only, not its group: nothing of it runs any cleanup
    cli.wait()
    assert gone(server), "the temporary Prefect server outlived the killed run"

    resumed = rlhf(tmp_path, "resume", "c")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    log = (tmp_path / "cli.log").read_text()
    assert "marked Crashed" in log and "now FAILED" in log  # what the killed run left shown as running
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert comparable(summary) == comparable(clean_summary)
    assert running_mlflow_runs(tmp_path) == []
    assert not [p for p in (tmp_path / "c").rglob(".*.tmp-*")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_run_cleanly(tmp_path, signum):
    cli = rlhf(tmp_path, "run", *SMOKE)
    server = int(wait_for(tmp_path, r"temporary server on \S+ \(pid (\d+)\)", cli).group(1))
    wait_for(tmp_path, r"search_temperature: start", cli)
    os.kill(cli.pid, signum)
    assert cli.wait(timeout=120) == 130
    assert "interrupted: finished steps are kept" in (tmp_path / "cli.log").read_text()
    assert gone(server)
    with campaign_lock(tmp_path / "c"):  # released: this would raise CampaignLocked
        pass
    assert running_mlflow_runs(tmp_path) == []  # ended KILLED, not left RUNNING
