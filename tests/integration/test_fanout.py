"""The smoke campaign (both iterations) with its sampling steps as shards on a real local Ray runtime
(2 CPUs) and a local Dask cluster, against the default runner: the same pairs, labels, candidates, pool
and win rates; a failed shard reruns alone; a task runner's address that does not answer, or resources no
machine has, are clear errors before any step."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from rlhf.cli import main
from rlhf.core.artifacts import read_manifest
from rlhf.core.training import InjectedFault
from rlhf.flows.campaign import run_campaign
from rlhf.flows.config import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")
SHARDED = ("collect_pairs", "annotate", "search_temperature", "rejection_sample", "evaluate")
OUTPUTS = ["collect_pairs/pairs.parquet", "annotate/pairs.parquet", "search_temperature/samples.parquet",
           "rejection_sample/candidates.parquet", "rejection_sample/pool.parquet", "evaluate/answers.parquet",
           "evaluate/judgments.parquet"]


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


def smoke(root: Path, *extra: str):
    return compose_config(["experiment=smoke", f"campaign.root={root}", "campaign.name=c",
                           "tracking.register_models=false", *extra])


def ray_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def no_ray_processes(within: float = 60) -> list[str]:
    """The Ray processes still alive after ``within`` seconds (a runtime's processes take a while to exit)."""
    deadline = time.monotonic() + within
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray_processes()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The smoke campaign (SFT, RLHF-V1 with PPO, V2 with GAtt) with the default runner (one shard,
    in-process), on one thread
    like the shards' workers (Ray gives a task as many as its num_cpus, Dask one): torch's results depend on
    its thread count in the last bits, and this module-scoped fixture runs before the function-scoped
    ``one_thread``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("default")
    try:
        run_campaign(smoke(root))
    finally:
        torch.set_num_threads(threads)
    return root / "c"


def same_outputs(default: Path, here: Path) -> None:
    """Every iteration's sampling outputs and win rates, bit for bit (V2's pool re-scores V1's candidates)."""
    for iteration in (1, 2):
        for name in OUTPUTS:
            pd.testing.assert_frame_equal(pd.read_parquet(default / f"iter-{iteration}" / name),
                                          pd.read_parquet(here / f"iter-{iteration}" / name), check_exact=True)
        evaluated = [read_manifest(home / f"iter-{iteration}" / "evaluate")["metrics"]["win_rate"]
                     for home in (default, here)]
        assert evaluated[0] == evaluated[1]


@pytest.mark.processes  # a Ray runtime's processes: with the other multi-process tests (make test-processes)
def test_ray_shards_give_the_default_runners_outputs_and_a_failed_shard_reruns_alone(tmp_path, default_run):
    assert not no_ray_processes(), "a Ray runtime is already running on this machine"
    on_ray = ["orchestration.task_runner=ray", "orchestration.shards=2", "orchestration.ray.local_cpus=2"]
    # 1. One shard of rejection sampling fails: the other shards, and every step before, finish and stay.
    with pytest.raises(InjectedFault):
        run_campaign(smoke(tmp_path / "ray", *on_ray, "debug.fail_at=rejection_sample-shard-1-of-2"), upto=1)
    here = tmp_path / "ray" / "c" / "iter-1"
    first = read_manifest(here / "rejection_sample-shard-0-of-2")
    assert first is not None and read_manifest(here / "rejection_sample-shard-1-of-2") is None
    assert not (here / "rejection_sample").exists()
    # 2. The rerun computes the failed shard only (the finished one is the same output, not a new one).
    summary = run_campaign(smoke(tmp_path / "ray", *on_ray))
    assert read_manifest(here / "rejection_sample-shard-0-of-2") == first
    assert read_manifest(here / "rejection_sample-shard-1-of-2")["metrics"]["n_rows"] > 0
    for step in SHARDED:
        for index in (0, 1):
            rows = pd.read_parquet(here / f"{step}-shard-{index}-of-2" / "rows.parquet")
            assert len(rows) > 0, f"{step} shard {index} had no work: the comparison below would prove nothing"
    # 3. Merged, the shards are the default runner's outputs, bit for bit, in both iterations.
    same_outputs(default_run, tmp_path / "ray" / "c")
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    # 4. The runtime started for the run is gone with it.
    assert not no_ray_processes()


@pytest.mark.processes  # a Dask cluster's worker processes
def test_dask_shards_give_the_default_runners_outputs(tmp_path, default_run):
    """The same shards on a local Dask cluster of 2 worker processes (prefect-dask)."""
    run_campaign(smoke(tmp_path, "orchestration.task_runner=dask", "orchestration.shards=2",
                       "orchestration.dask.n_workers=2"))
    here = tmp_path / "c"
    assert all(read_manifest(here / "iter-2" / f"{step}-shard-1-of-2")["metrics"]["n_rows"] > 0 for step in SHARDED)
    same_outputs(default_run, here)


@pytest.mark.parametrize("args, key, says", [
    (["orchestration.task_runner=ray", "orchestration.ray.address=ray://127.0.0.1:1"], "orchestration.ray.address",
     "nothing answers at ray://127.0.0.1:1"),
    (["orchestration.task_runner=ray", "orchestration.ray.address=auto"], "orchestration.ray.address", "ray start"),
    (["orchestration.task_runner=ray", "orchestration.ray.address=head:10001"], "orchestration.ray.address",
     "is not a Ray address"),
    (["orchestration.task_runner=ray", "orchestration.ray.num_gpus=1"], "orchestration.ray.num_gpus", "GPU"),
    (["orchestration.task_runner=ray", "orchestration.ray.num_cpus=64"], "orchestration.ray.num_cpus", "CPUs"),
    (["orchestration.task_runner=spark"], "orchestration.task_runner", "one of thread, ray, dask"),
    (["orchestration.shards=0"], "orchestration.shards", "at least 1"),
    (["orchestration.task_runner=dask", "orchestration.dask.address=tcp://127.0.0.1:1"],
     "orchestration.dask.address", "nothing answers"),
])
def test_a_task_runner_that_cannot_run_the_shards_is_a_clear_error_before_any_step(tmp_path, capsys, args, key,
                                                                                  says):
    assert main(["run", "experiment=smoke", f"campaign.root={tmp_path}", "orchestration.shards=2", *args]) == 2
    err = capsys.readouterr().err
    assert key in err and says in err
    assert not (tmp_path / "default").exists()  # nothing ran


def test_a_cluster_needs_a_prefect_server_its_workers_can_reach(tmp_path, capsys, monkeypatch):
    """A Ray cluster that answers, but the run has only its temporary Prefect server on 127.0.0.1."""
    import socket

    with socket.socket() as listener:  # something that answers where the cluster's head would be
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        assert main(["run", "experiment=smoke", f"campaign.root={tmp_path}", "orchestration.shards=2",
                     "orchestration.task_runner=ray", f"orchestration.ray.address=ray://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "orchestration.ray.address" in err and "PREFECT_API_URL" in err
