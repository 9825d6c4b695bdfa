"""The tasks' cache keys: what makes a rerun a cache hit and what makes it rerun."""

from types import SimpleNamespace

from rlhf_core.sft import SFTConfig
from tasks.steps import Fault, cache_key, io_only
from tasks.tracking import Tracking

CTX = SimpleNamespace(task=SimpleNamespace(name="train_policy"))
REF = {"step": "rejection_sample", "path": "/c/iter-1/rejection_sample", "key": "k1", "metrics": {"wall_seconds": 3.0},
       "run_id": "r1"}


def key(**changes):
    params = {"policy": REF, "config": SFTConfig(), "out_dir": "/c/iter-1/train_policy",
              "tracking": Tracking("sqlite:///x.db", "1", "c", "run-a", 1), "fault": None}
    return cache_key(CTX, params | changes)


def test_same_inputs_same_key_whatever_the_run_that_observes_them():
    assert key() == key(tracking=Tracking("sqlite:///y.db", "2", "c", "run-b", 1))
    assert key() == key(fault=Fault("train_policy", 1))  # a fault changes when a run stops, not its output
    assert key() == key(policy=REF | {"metrics": {"wall_seconds": 9.0}, "run_id": "r2"})


def test_config_upstream_output_and_task_change_the_key():
    assert key() != key(config=SFTConfig(lr=1e-4))
    assert key() != key(policy=REF | {"key": "k2"})  # the upstream step produced something else
    assert key() != key(out_dir="/c/iter-2/train_policy")
    other = SimpleNamespace(task=SimpleNamespace(name="sft"))
    assert cache_key(other, {"config": SFTConfig()}) != cache_key(CTX, {"config": SFTConfig()})


def test_fault_spec_parsing():
    assert Fault.parse(None) is None and Fault.parse("") is None
    assert Fault.parse("annotate") == Fault("annotate", None)
    assert Fault.parse("train_policy:3") == Fault("train_policy", 3)


def test_only_io_errors_are_retried():
    state = lambda error: SimpleNamespace(result=lambda raise_on_failure: error)  # noqa: E731
    assert io_only(None, None, state(OSError("disk full")))
    assert not io_only(None, None, state(ValueError("bad data")))
