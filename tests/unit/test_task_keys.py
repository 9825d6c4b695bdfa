"""The tasks' cache keys (what makes a rerun a cache hit and what makes it rerun), the params a step's
MLflow run shows, and the tracking thread's ordering and error reporting."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf.core.reward.train import RewardSection
from rlhf.core.sampling import SamplingConfig
from rlhf.core.sft import SFTConfig
from rlhf.core.steps.outputs import REJECTION_SAMPLE, rm_eval_outputs
from rlhf.tasks.steps import CONTRACTS, Fault, _identity, cache_key, io_only, output_dirs, tracked_params
from rlhf.tracking import Recorder, Tracking, TrackingError

CTX = SimpleNamespace(task=SimpleNamespace(name="train_policy"))
REF = {"step": "rejection_sample", "path": "/c/iter-1/rejection_sample", "key": "k1", "metrics": {"wall_seconds": 3.0}}


def key(**changes):
    params = {"policy": REF, "config": SFTConfig(), "here": "/c/iter-1", "fault": None}
    return cache_key(CTX, params | changes)


def test_same_inputs_same_key_whatever_the_run_that_observed_them():
    assert key() == key(fault=Fault("train_policy", 1))  # a fault changes when a run stops, not its output
    assert key() == key(policy=REF | {"metrics": {"wall_seconds": 9.0}})


def test_config_upstream_output_and_task_change_the_key():
    assert key() != key(config=SFTConfig(lr=1e-4))
    assert key() != key(policy=REF | {"key": "k2"})  # the upstream step produced something else
    assert key() != key(here="/c/iter-2")
    other = SimpleNamespace(task=SimpleNamespace(name="sft"))
    assert cache_key(other, {"config": SFTConfig()}) != cache_key(CTX, {"config": SFTConfig()})


def test_each_task_writes_where_its_contract_says():
    """The flow checks these directories before it trusts a cached result: they must be the ones the
    task's runner writes."""
    assert output_dirs("rejection_sample", {"here": "/c/iter-2"}) == [Path("/c/iter-2/rejection_sample")]
    files = REJECTION_SAMPLE.paths("/c/iter-2/rejection_sample")
    assert files["pool_sft"] == "/c/iter-2/rejection_sample/pool_sft.jsonl"
    rms = output_dirs("train_reward_models", {"here": "/c/iter-1", "reward": RewardSection(train_safety=False)})
    assert rms == [Path("/c/iter-1/rm-helpful")]
    evals = output_dirs("eval_reward_models", {"here": "/c/iter-1", "rms": {"helpful": REF, "safety": REF}})
    assert evals == [rm_eval_outputs("helpful").dir("/c/iter-1"), Path("/c/iter-1/rm-safety-eval")]
    assert set(CONTRACTS) | {"train_reward_models", "eval_reward_models"} == {
        "sft", "seed_pairs", "collect_pairs", "annotate", "train_reward_models", "eval_reward_models",
        "ablate_reward_models", "search_temperature", "rejection_sample", "train_policy", "distill", "ppo", "gatt",
        "gatt_dialogues", "gatt_adherence", "evaluate", "evaluate_student"}
    assert output_dirs("evaluate_student", {"here": "/c/iter-1"}) == [Path("/c/iter-1/evaluate-student")]
    assert output_dirs("gatt_dialogues", {"here": "/c/iter-3"}) == [Path("/c/iter-3/gatt_dialogues")]


def test_fault_spec_parsing():
    assert Fault.parse(None) is None and Fault.parse("") is None
    assert Fault.parse("annotate") == Fault("annotate", None)
    assert Fault.parse("train_policy:3") == Fault("train_policy", 3)


def test_only_io_errors_are_retried():
    state = lambda error: SimpleNamespace(result=lambda raise_on_failure: error)  # noqa: E731
    assert io_only(None, None, state(OSError("disk full")))
    assert not io_only(None, None, state(ValueError("bad data")))


def test_tracked_params_are_the_config_without_references():
    params = {"policy": REF, "rms": {"helpful": REF, "safety": REF}, "previous": [], "history": [REF],
              "config": SFTConfig(lr=3e-5), "sampling": SamplingConfig(), "temperatures": [0.7, 1.0],
              "iteration": 2, "here": "/c/iter-2", "fault": Fault("x")}
    tracked = tracked_params("train_policy", params)
    assert set(tracked) == {"train_policy", "sampling", "temperatures", "iteration"}
    assert tracked["train_policy"]["lr"] == 3e-5 and tracked["sampling"]["top_p"] == 1.0


def test_recorder_runs_writes_in_order_and_reports_failures_at_flush():
    recorder, done = Recorder(), []
    for i in range(50):
        recorder.submit(done.append, i)
    recorder.flush()
    assert done == list(range(50))

    def broken(path):
        raise OSError(f"{path} is read-only")

    recorder.submit(broken, "/store")
    recorder.submit(done.append, "after")  # later writes still happen
    with pytest.raises(TrackingError, match="broken.*OSError: /store is read-only.*rerun the campaign"):
        recorder.flush()
    assert done[-1] == "after"
    recorder.flush()  # the error was reported once


def test_a_run_created_on_the_tracking_thread_is_the_parent_of_later_writes():
    recorder = Recorder()
    run = recorder.submit(lambda: "run-7")
    t = Tracking("sqlite:///x.db", "0", "camp", run, 1)
    seen = recorder.submit(lambda: t.parent_run_id)  # what a step's record reads, after the run was made
    assert seen.result(timeout=10) == "run-7" and t.parent_run_id == "run-7"

    def unreachable():
        raise ConnectionError("tracking server down")

    failed = Tracking("http://mlflow:5000", "0", "camp", recorder.submit(unreachable), 2)
    with pytest.raises(TrackingError, match="iteration 2 could not be created.*tracking server down"):
        _ = failed.parent_run_id
    with pytest.raises(TrackingError, match="unreachable"):
        recorder.flush()


def test_an_input_file_edited_in_place_changes_the_key(tmp_path, monkeypatch):
    from rlhf.core.steps.sft import DataConfig

    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": []}\n')
    before = key(data=DataConfig(path=str(data)))
    assert key(data=DataConfig(path=str(data))) == before
    data.write_text('{"messages": [1]}\n')  # same path, new content
    assert key(data=DataConfig(path=str(data))) != before
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()  # a bare word that happens to name a folder here is not an input
    assert _identity("train", "split") == "train"
    assert _identity("chats.jsonl", "path")["digest"] == _identity(str(data), "path")["digest"]
