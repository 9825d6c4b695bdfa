"""Training steps on several processes (``rlhf.core.launch``): SFT and a reward model on 2 CPU processes
(DDP over gloo, started by ``accelerate launch``) end with the weights of the same training in one process,
within a tolerance measured here; a rank that fails fails the step with its own traceback and leaves no
process running, and so does a parent that is told to stop; a crash resumes from the checkpoints.

Each 2-process run costs ~15 s on 2 cores (two interpreters importing torch and transformers), so the
runs are shared by the tests through module-scoped fixtures."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from model_files import max_abs_diff, tiny_weights, weights  # beside this file

from rlhf.core.errors import ConfigError
from rlhf.core.launch import LaunchConfig, LaunchError, check_launch
from rlhf.core.models import ModelConfig
from rlhf.core.reward.train import RewardConfig, RMDataConfig
from rlhf.core.sft import SFTConfig
from rlhf.core.steps.common import launch_dir_for, work_dir_for
from rlhf.core.steps.reward import rm_train_step
from rlhf.core.steps.sft import DataConfig, sft_step
from rlhf.core.training import InjectedFault

pytestmark = [pytest.mark.slow, pytest.mark.processes]

MODEL = ModelConfig(name_or_path="tiny", precision="fp32")  # fp32: bf16 rounding would swamp the comparison
DDP = LaunchConfig(name="ddp", num_processes=2, timeout_seconds=60)
FSDP = LaunchConfig(name="fsdp", num_processes=2, timeout_seconds=60)
ISOLATED = LaunchConfig(isolate=True, timeout_seconds=60)  # one process, a child of this one
# 6 training conversations in batches of 4, micro-batches of 2: each epoch's second batch has 2 examples,
# one micro-batch, so rank 1 has none and must still join the all-reduce (it would hang otherwise).
SFT = SFTConfig(epochs=2, batch_size=4, micro_batch_size=2, max_length=64, lr=1e-3, warmup_ratio=0.0,
                checkpoint_every=0)
RM = RewardConfig(epochs=1, batch_size=8, micro_batch_size=2, max_length=64, lr=1e-3, min_warmup_steps=0,
                  n_test=2, checkpoint_every=0)
RM_DATA = RMDataConfig(n_synthetic=26)  # 24 train pairs: 3 steps of 8
# Measured on this machine (torch 2.13 CPU, gloo; AdamW at lr 1e-3): the largest absolute difference of
# any weight between 1 and 2 processes was exactly 0 for SFT (4 steps of 2 micro-batches: each rank's
# gradient is one micro-batch's, and the all-reduce adds the same two fp32 terms the single process
# accumulates) and 8.2e-08 for the RM (3 steps of 4 micro-batches: (g0 + g2) + (g1 + g3) across ranks
# rounds differently from ((g0 + g1) + g2) + g3 in one process). The bound is ~12x the RM's, far below
# what one step changes (> 1e-3, asserted below), so a rank's share lost or counted twice fails it.
TOLERANCE = 1e-6


def processes_naming(text: str) -> list[int]:
    """Pids of the running processes whose command line contains ``text`` (zombies are not running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Count to {n}"},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]}
            for n in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(chats) -> DataConfig:
    return DataConfig(path=str(chats), eval_size=2)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, data) -> dict[str, dict]:
    """The same SFT in this process, in one child process, in 2 (DDP) and in 2 sharded (FSDP):
    {"one"|"isolated"|"two"|"fsdp": manifest (with its
    out_dir, wall seconds and the rlhf log's lines)}."""
    root = tmp_path_factory.mktemp("sft")
    runs = {}
    for name, launch in (("one", None), ("isolated", ISOLATED), ("two", DDP), ("fsdp", FSDP)):
        lines, logger = Lines(), logging.getLogger("rlhf")
        level = logger.level
        logger.addHandler(lines)
        logger.setLevel(logging.INFO)
        started = time.perf_counter()
        reported = []
        try:
            manifest = sft_step(MODEL, data, SFT, root / name,
                                on_metrics=lambda m, step, rows=reported: rows.append((step, m)), launch=launch)
        finally:
            logger.removeHandler(lines)
            logger.setLevel(level)
        runs[name] = {**manifest, "out_dir": root / name, "seconds": time.perf_counter() - started,
                      "log": lines.lines, "reported": reported}
    return runs


class Lines(logging.Handler):
    """The ``rlhf`` log's lines of one run (caplog is per test; the runs are shared)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_sft_on_two_processes_gives_the_weights_of_one(sft_runs):
    one, two = sft_runs["one"], sft_runs["two"]
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["config"]["launch"] == {"name": "ddp", "world_size": 2} and "launch" not in one["config"]
    assert one["metrics"]["steps"] == two["metrics"]["steps"] == 4
    start = tiny_weights()
    trained = weights(one["out_dir"])
    assert max_abs_diff(trained, start) > 1e-3  # it trained
    diff = max_abs_diff(trained, weights(two["out_dir"]))
    print(f"SFT 1 vs 2 processes: max abs weight difference {diff:.3g}; 2-process step {two['seconds']:.1f} s")
    assert diff <= TOLERANCE
    losses = [[row["loss"] for row in map(json.loads, (run["out_dir"] / "metrics.jsonl").read_text().splitlines())]
              for run in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # every rank's share of the loss was counted
    tokens = [[row["tokens"] for row in map(json.loads, (run["out_dir"] / "metrics.jsonl").read_text().splitlines())]
              for run in (one, two)]
    assert tokens[0] == tokens[1] and min(tokens[0]) > 0  # each step's tokens counted once, not once per process
    assert two["metrics"]["eval_loss_after"] == pytest.approx(one["metrics"]["eval_loss_after"], rel=1e-5)
    out = two["out_dir"]
    assert not work_dir_for(out).exists() and not launch_dir_for(out).exists()  # nothing left beside it
    assert reported_rows(two) == reported_rows(one) == written_rows(out)  # each step's metrics once, in order


def reported_rows(run: dict) -> list[tuple[int, float]]:
    return [(step, metrics["loss"]) for step, metrics in run["reported"]]


def written_rows(out: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_fsdp_on_two_cpu_processes_shards_the_weights_and_trains_as_ddp_does(sft_runs):
    """launch=fsdp: FSDP2 over gloo (accelerate would fall back to DDP on CPU ranks; training.make_accelerator
    keeps it sharded). Each process holds half of the weights; the gathered result is the DDP run's.
    Measured here: max abs weight difference 7.5e-09 from DDP (the shards' reduce-scatter adds in another
    order than DDP's all-reduce)."""
    ddp, fsdp = sft_runs["two"], sft_runs["fsdp"]
    assert fsdp["world_size"] == 2 and fsdp["config"]["launch"] == {"name": "fsdp", "world_size": 2}
    held = [line for line in fsdp["log"] if "weights sharded over 2 processes (FSDP)" in line]
    assert len(held) == 2, fsdp["log"]  # both ranks say so
    for line in held:
        mine, total = (int(n) for n in line.split("holds ")[1].split(" parameters")[0].split(" of "))
        assert 0.4 * total <= mine <= 0.6 * total, line
    assert not any("sharded" in line for line in ddp["log"])
    diff = max_abs_diff(weights(fsdp["out_dir"]), weights(ddp["out_dir"]))
    print(f"SFT FSDP vs DDP on 2 processes: max abs weight difference {diff:.3g}")
    assert diff <= TOLERANCE
    assert fsdp["metrics"]["eval_loss_after"] == pytest.approx(ddp["metrics"]["eval_loss_after"], rel=1e-5)


def test_an_rm_trained_sharded_equals_the_ddp_one(tmp_path):
    ddp = rm_train_step(MODEL, RM_DATA, RM, tmp_path / "ddp", launch=DDP)
    fsdp = rm_train_step(MODEL, RM_DATA, RM, tmp_path / "fsdp", launch=FSDP)
    assert fsdp["world_size"] == 2 and fsdp["metrics"]["steps"] == ddp["metrics"]["steps"] == 3
    # measured: 1.0e-07
    assert max_abs_diff(weights(tmp_path / "fsdp"), weights(tmp_path / "ddp")) <= TOLERANCE
    assert json.loads((tmp_path / "fsdp" / "reward_config.json").read_text())["margin_table"]


def test_lora_on_two_processes_gives_the_weights_of_one(tmp_path, data):
    """LoRA adapters under DDP (frozen weights are not in its gradient buckets): the merged result of 2
    processes is the single process's. Measured: max abs difference 0."""
    from rlhf.core.lora import LoRAConfig

    lora = replace(SFT, lora=LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    one = sft_step(MODEL, data, lora, tmp_path / "one")
    two = sft_step(MODEL, data, lora, tmp_path / "two", launch=DDP)
    assert two["world_size"] == 2 and two["config"]["sft"]["lora"]["r"] == 4
    trained = weights(tmp_path / "one")
    assert max_abs_diff(trained, tiny_weights()) > 1e-4  # the adapters trained and were merged
    assert max_abs_diff(trained, weights(tmp_path / "two")) <= TOLERANCE
    assert one["metrics"]["steps"] == two["metrics"]["steps"] == 4


def test_an_isolated_step_computes_in_its_child_exactly_what_it_computes_here(sft_runs):
    one, isolated = sft_runs["one"], sft_runs["isolated"]
    text = "\n".join(isolated["log"])
    assert "in a child process of its own" in text and "[rank 0] sft: start" in text  # it ran in the child
    assert "in a child process" not in "\n".join(one["log"])
    assert isolated["key"] == one["key"] and isolated["world_size"] == 1  # interchangeable in the cache
    assert max_abs_diff(weights(isolated["out_dir"]), tiny_weights()) > 1e-3  # it trained
    assert max_abs_diff(weights(isolated["out_dir"]), weights(one["out_dir"])) == 0  # bitwise the same
    assert isolated["metrics"]["eval_loss_after"] == one["metrics"]["eval_loss_after"]
    assert 0 < isolated["metrics"]["peak_rss_mb"]  # the child's own high-water mark
    out = isolated["out_dir"]
    assert not work_dir_for(out).exists() and not launch_dir_for(out).exists()
    assert reported_rows(isolated) == written_rows(out) and len(written_rows(out)) == 4


def test_an_isolated_step_reports_its_metrics_while_it_trains(tmp_path, data):
    """The parent forwards each optimizer step's metrics as the child reports them (an MLflow run shows the
    curve live): here the third row of a 2000-step run arrives while the child is still training (rows sent
    only at the end would find it gone), and the callback's error then stops the step, with no process left."""
    out, seen, child_running = tmp_path / "sft", [], []

    class Enough(Exception):
        pass

    def on_metrics(metrics: dict, step: int) -> None:
        seen.append((step, metrics["loss"]))
        if len(seen) == 3:
            child_running.append(_running(int((launch_dir_for(out) / "rank-0.pid").read_text())))
            raise Enough

    with pytest.raises(Enough):
        sft_step(MODEL, data, replace(SFT, epochs=1000), out, on_metrics=on_metrics, launch=ISOLATED)
    assert child_running == [True] and [step for step, _ in seen] == [1, 2, 3]
    assert written_rows(work_dir_for(out))[:3] == seen  # what the child logged itself
    assert processes_naming(str(launch_dir_for(out) / "spec.json")) == []


def test_an_isolated_step_that_fails_leaves_no_process_and_resumes_to_the_same_weights(tmp_path, data, sft_runs):
    out = tmp_path / "sft"
    resumable = replace(SFT, checkpoint_every=1)
    with pytest.raises(LaunchError) as err:
        sft_step(MODEL, data, replace(resumable, fail_after_steps=2), out, launch=ISOLATED)
    message = str(err.value)
    assert "rank 0 of the launched processes failed: InjectedFault" in message and "raise InjectedFault" in message
    launch_dir = launch_dir_for(out)
    assert processes_naming(str(launch_dir / "spec.json")) == []
    pids = [int(p.read_text()) for p in launch_dir.glob("rank-*.pid")]
    assert len(pids) == 1 and pids[0] != os.getpid() and not _running(pids[0])
    assert not out.exists()  # nothing half-written
    manifest = sft_step(MODEL, data, resumable, out, launch=ISOLATED)
    assert manifest["metrics"]["resumed_from_step"] == 2 and manifest["metrics"]["steps"] == 4
    assert max_abs_diff(weights(out), weights(sft_runs["one"]["out_dir"])) == 0


def test_a_launched_step_is_cached_without_starting_processes(sft_runs, data, caplog):
    caplog.set_level(logging.INFO, logger="rlhf")
    again = sft_step(MODEL, data, SFT, sft_runs["two"]["out_dir"], launch=DDP)
    assert again["key"] == sft_runs["two"]["key"] and again["created"] == sft_runs["two"]["created"]
    assert "cached" in caplog.text and "launching" not in caplog.text


def test_the_ranks_output_reaches_the_log_with_their_rank(sft_runs):
    text = "\n".join(sft_runs["two"]["log"])
    assert "[rank 0] sft: start" in text  # the frame's lines: the main rank only
    assert "[rank 1] sft: 6 conversations" in text and "[rank 1] sft: start" not in text


def test_rlhf_sft_runs_on_the_processes_the_launch_group_names(tmp_path, chats):
    from rlhf.cli import main

    assert main(["sft", "model=tiny", f"data.path={chats}", "data.eval_size=2", f"campaign.root={tmp_path}",
                 "campaign.name=t", "sft.max_steps=2", "sft.batch_size=4", "sft.micro_batch_size=2", "launch=ddp",
                 "launch.num_processes=2"]) == 0
    manifest = json.loads((tmp_path / "t" / "iter-0" / "sft" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["metrics"]["steps"] == 2


def test_a_reward_model_on_two_processes_gives_the_weights_of_one(tmp_path):
    one = rm_train_step(MODEL, RM_DATA, RM, tmp_path / "one")
    two = rm_train_step(MODEL, RM_DATA, RM, tmp_path / "two", launch=DDP)
    assert one["metrics"]["steps"] == two["metrics"]["steps"] == 3 and two["world_size"] == 2
    diff = max_abs_diff(weights(tmp_path / "one"), weights(tmp_path / "two"))
    print(f"RM 1 vs 2 processes: max abs weight difference {diff:.3g}")
    assert diff <= TOLERANCE
    assert two["metrics"]["test_synthetic/accuracy"] == pytest.approx(one["metrics"]["test_synthetic/accuracy"])
    assert (tmp_path / "two" / "eval.csv").is_file()  # the main rank evaluated and wrote it


def test_a_rank_that_fails_fails_the_step_with_its_traceback_and_leaves_no_process(tmp_path, data, monkeypatch):
    monkeypatch.setenv("RLHF_FAIL_RANK", "1:1")  # rank 1 only, after its first optimizer step
    out = tmp_path / "sft"
    launch = replace(DDP, timeout_seconds=30)
    started = time.perf_counter()
    with pytest.raises(LaunchError) as err:
        sft_step(MODEL, data, SFT, out, launch=launch)
    elapsed = time.perf_counter() - started
    message = str(err.value)
    print(f"failed in {elapsed:.1f} s with:\n{message}")
    assert "rank 1 of the launched processes failed: InjectedFault: injected fault after step 1" in message
    assert "raise InjectedFault" in message  # the tail of rank 1's own traceback
    assert elapsed < launch.timeout_seconds + 30  # startup (~15 s) + the failure, not a hang
    launch_dir = launch_dir_for(out)
    assert processes_naming(str(launch_dir / "spec.json")) == []  # neither the launcher nor a rank
    pids = [int(p.read_text()) for p in launch_dir.glob("rank-*.pid")]
    assert len(pids) == 2 and not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in pids)
    assert not out.exists()  # nothing half-written; the ranks' logs stay for reading
    assert "InjectedFault" in (launch_dir / "rank-1.log").read_text()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("mode", ["two", "fsdp"])
def test_a_crash_on_every_rank_resumes_to_the_uninterrupted_weights(tmp_path, data, sft_runs, mode):
    """Both ranks stop after step 2 (its checkpoint written); the rerun resumes there and ends where the
    uninterrupted 2-process run ended. Under FSDP the checkpoint holds the gathered weights and the sharded
    optimizer state (accelerate's FULL_STATE_DICT). Measured: identical weights (0) in both modes."""
    launch = {"two": DDP, "fsdp": FSDP}[mode]
    out = tmp_path / "sft"
    resumable = replace(SFT, checkpoint_every=1)
    with pytest.raises(LaunchError, match="InjectedFault"):
        sft_step(MODEL, data, replace(resumable, fail_after_steps=2), out, launch=launch)
    manifest = sft_step(MODEL, data, resumable, out, launch=launch)
    assert manifest["metrics"]["resumed_from_step"] == 2 and manifest["metrics"]["steps"] == 4
    diff = max_abs_diff(weights(out), weights(sft_runs[mode]["out_dir"]))
    print(f"SFT resumed vs uninterrupted ({launch.name}): max abs weight difference {diff:.3g}")
    assert diff <= TOLERANCE


def test_stopping_the_parent_stops_every_rank(tmp_path, chats):
    """SIGTERM to the process that launched the ranks (a Prefect worker, the CLI) ends them all."""
    out = tmp_path / "sft"
    script = textwrap.dedent(f"""
        from rlhf.core.launch import LaunchConfig
        from rlhf.core.models import ModelConfig
        from rlhf.core.sft import SFTConfig
        from rlhf.core.steps.sft import DataConfig, sft_step
        sft_step(ModelConfig(name_or_path="tiny", precision="fp32"), DataConfig(path={str(chats)!r}),
                 SFTConfig(epochs=100000, batch_size=4, micro_batch_size=2, max_length=64, checkpoint_every=0),
                 {str(out)!r}, launch=LaunchConfig(name="ddp", num_processes=2))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    launch_dir = launch_dir_for(out)
    try:
        deadline = time.monotonic() + 120
        while len(list(launch_dir.glob("rank-*.pid"))) < 2 or not (launch_dir / "rank-1.log").stat().st_size:
            assert time.monotonic() < deadline and parent.poll() is None, parent.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        time.sleep(3)  # the ranks are training
        assert len(processes_naming(str(launch_dir / "spec.json"))) >= 3  # the launcher and two ranks
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
        assert parent.returncode != 0
        assert processes_naming(str(launch_dir / "spec.json")) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in processes_naming(str(launch_dir / "spec.json")):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("launch, batches, key", [
    (LaunchConfig(name="ddp", num_processes=4), {"sft": SFTConfig(batch_size=8, micro_batch_size=4)}, "sft.batch_size"),
    (LaunchConfig(name="single", num_processes=2), {}, "launch.num_processes"),
    (LaunchConfig(name="deepspeed", num_processes=2), {}, "launch.name"),
    (LaunchConfig(name="ddp", num_processes=2, backend="mpi"), {}, "launch.backend"),
    (LaunchConfig(name="ddp", num_processes=2, config_file="/no/such.yaml"), {}, "launch.config_file"),
    (LaunchConfig(name="ddp", num_processes=4, num_machines=2), {}, "launch.main_process_ip"),
    (LaunchConfig(name="ddp", num_processes=3, num_machines=2, main_process_ip="10.0.0.1"), {},
     "launch.num_processes"),
    (LaunchConfig(name="ddp", num_processes=2, timeout_seconds=0), {}, "launch.timeout_seconds"),
])
def test_a_launch_that_cannot_work_is_a_clear_error(launch, batches, key):
    with pytest.raises(ConfigError) as err:
        check_launch(launch, batches)
    assert str(err.value).startswith(f"config '{key}': ")


@pytest.mark.parametrize("step", ["ppo", "gatt"])
def test_the_steps_that_sample_from_what_they_train_refuse_sharding(step):
    with pytest.raises(ConfigError, match=f"launch.steps.{step}.name=ddp") as err:
        check_launch(FSDP, step=step)
    assert err.value.key == "launch.name"


def test_a_bad_launch_starts_nothing(tmp_path, data):
    with pytest.raises(ConfigError, match="sft.batch_size"):
        sft_step(MODEL, data, replace(SFT, batch_size=2), tmp_path / "sft", launch=DDP)
    assert not tmp_path.joinpath(".sft.launch").exists() and not (tmp_path / "sft").exists()


def test_an_injected_fault_in_one_process_still_raises_in_process(tmp_path, data):
    """The fault switch of one process is unchanged by the launch: launch=single runs here."""
    with pytest.raises(InjectedFault):
        sft_step(MODEL, data, replace(SFT, fail_after_steps=1), tmp_path / "sft", launch=LaunchConfig())
