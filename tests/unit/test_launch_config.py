"""The ``launch`` group's per-step overrides (``launch.steps.<step>``), its checks naming the key that is
wrong, and the spec encoding of nested config dataclasses a launched runner receives."""

from __future__ import annotations

import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.launch import LaunchConfig, StepLaunch, StepLaunches, decode_args, encode_args, keyed_launch, launches
from rlhf.core.ppo import PPOConfig
from rlhf.core.sft import SFTConfig
from rlhf.flows.config import compose_config


def test_a_step_takes_the_group_unless_it_names_its_own():
    own = StepLaunches(train_reward_models=StepLaunch(num_processes=1), ppo=StepLaunch(num_processes=4))
    group = LaunchConfig(name="ddp", num_processes=8, steps=own)
    sft, rms, ppo = (group.for_step(s) for s in ("sft", "train_reward_models", "ppo"))
    assert (sft.name, sft.num_processes) == ("ddp", 8)
    assert (rms.name, rms.num_processes) == ("single", 1)  # one process: in the calling one
    assert (ppo.name, ppo.num_processes) == ("ddp", 4)
    assert sft.steps == StepLaunches() and ppo.timeout_seconds == group.timeout_seconds


def test_isolate_starts_one_child_and_leaves_the_cache_key_alone():
    """``launch.isolate``: one process, started as a child (tests/integration/test_launch.py runs it); it
    computes what the caller would, so a step's key is the same either way. The demo turns it on."""
    isolated = LaunchConfig(isolate=True)
    assert launches(isolated) and not launches(LaunchConfig()) and not launches(None)
    assert keyed_launch(isolated) == keyed_launch(LaunchConfig()) == {}
    assert all(isolated.for_step(step).isolate for step in ("sft", "train_reward_models", "ppo", "gatt"))
    assert compose_config(["experiment=demo"]).launch.isolate
    assert not compose_config([]).launch.isolate and not compose_config(["experiment=smoke"]).launch.isolate


def test_per_step_overrides_compose_from_the_command_line():
    cfg = compose_config(["launch=ddp", "launch.num_processes=2", "launch.steps.train_reward_models.num_processes=1",
                          "sft.batch_size=8", "sft.micro_batch_size=4", "train_policy.batch_size=8",
                          "train_policy.micro_batch_size=4", "gatt.train.batch_size=16"])
    assert cfg.launch.steps.train_reward_models.num_processes == 1
    assert cfg.launch.for_step("train_reward_models").num_processes == 1
    assert cfg.launch.for_step("sft").num_processes == 2


def test_a_step_given_processes_under_launch_single_runs_data_parallel():
    group = compose_config(["launch.steps.sft.num_processes=2", "sft.batch_size=8", "sft.micro_batch_size=2"]).launch
    assert group.name == "single" and group.for_step("ppo").num_processes == 1
    assert (group.for_step("sft").name, group.for_step("sft").num_processes) == ("ddp", 2)
    with pytest.raises(ValueError, match="not a training step"):
        group.for_step("evaluate")


@pytest.mark.parametrize("overrides, key", [
    # the step's own processes make too few micro-batches for its batch: the error names the step's key
    (["launch.steps.train_policy.num_processes=4", "train_policy.batch_size=8", "train_policy.micro_batch_size=4"],
     "train_policy.batch_size"),
    (["launch.steps.gatt.name=fsdp", "launch.steps.gatt.num_processes=2", "gatt.train.batch_size=16",
      "gatt.train.micro_batch_size=8"], "launch.steps.gatt.name"),
    (["launch.steps.sft.num_processes=0"], "launch.steps.sft.num_processes"),
    (["launch.steps.sft.config_file=/no/such.yaml", "launch.steps.sft.num_processes=2", "sft.batch_size=4",
      "sft.micro_batch_size=2"], "launch.steps.sft.config_file"),
    (["launch=ddp", "launch.num_processes=4", "sft.batch_size=16", "sft.micro_batch_size=4",
      "reward.train.batch_size=16", "reward.train.micro_batch_size=4", "train_policy.batch_size=16",
      "train_policy.micro_batch_size=4", "gatt.train.batch_size=16", "gatt.train.micro_batch_size=4",
      "ppo.mini_batch_size=8", "ppo.micro_batch_size=4"], "ppo.mini_batch_size"),
])
def test_a_launch_that_cannot_work_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert err.value.key == key, err.value


def test_an_unknown_step_in_launch_steps_is_a_clear_error():
    with pytest.raises(ConfigError, match="launch.steps.rm"):
        compose_config(["launch.steps.rm.num_processes=1"])


def test_the_spec_carries_nested_config_dataclasses_and_lists():
    args = {"launch": LaunchConfig(name="ddp", num_processes=2), "cfg": PPOConfig(steps=3),
            "sft": SFTConfig(max_steps=2), "paths": ["a", "b"], "n": None}
    back = decode_args(encode_args(args))
    assert back == args
    assert isinstance(back["launch"].steps, StepLaunches) and isinstance(back["launch"].steps.sft,
                                                                          type(args["launch"].steps.sft))
