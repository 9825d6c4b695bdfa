"""Frozen models parked on disk between their passes (rlhf_core/parking.py, ``ppo.park_frozen``): the same
bytes come back, nothing stays in memory outside a pass, and PPO computes bit for bit what it computes with
the models kept in memory while its update holds none of them."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

import rlhf.core.parking as parking_module
import rlhf.core.ppo_loop as ppo_loop
from rlhf.core.models import ModelConfig, build_tiny_model
from rlhf.core.parking import Parking
from rlhf.core.ppo import PPOConfig, ValueModel
from rlhf.core.ppo_loop import run_ppo
from rlhf.core.reward.model import reward_model_from_policy, score
from rlhf.core.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_a_parked_model_holds_nothing_and_comes_back_with_the_same_bytes(tmp_path):
    model, _ = build_tiny_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7, 8]])
    logits = model(input_ids=ids).logits
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    full = parameter_bytes(model)

    parking = Parking(tmp_path / "parked", {"reference": [model]})
    assert parameter_bytes(model) == 0 and full > 0 and parking.names == ["reference"]
    assert (tmp_path / "parked" / "reference.safetensors").is_file()
    with pytest.raises(RuntimeError, match="parked on disk"):  # a pass outside `resident` says why it cannot run
        model(input_ids=ids)
    with parking.resident("reference"):
        assert torch.equal(model(input_ids=ids).logits, logits)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert parameter_bytes(model) == 0
    with pytest.raises(RuntimeError, match="inside"), parking.resident("reference"):
        raise RuntimeError("inside")  # a failing pass still drops the weights
    assert parameter_bytes(model) == 0

    parking.restore()
    assert not (tmp_path / "parked").exists()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(model(input_ids=ids).logits, logits)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied


def test_a_failed_write_gives_back_the_models_parked_before_it(tmp_path, monkeypatch):
    first, _ = build_tiny_model(seed=0)
    second, _ = build_tiny_model(seed=1)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    real_save = parking_module.save_file

    def save_then_fail_on_the_second(tensors, path):  # the disk fills up while writing the second file
        if "second" in str(path):
            raise OSError(28, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(parking_module, "save_file", save_then_fail_on_the_second)
    with pytest.raises(OSError, match="No space left"):
        Parking(tmp_path / "parked", {"first": [first], "second": [second]})
    assert all(torch.equal(first.state_dict()[k], v) for k, v in before.items())
    assert parameter_bytes(second) > 0 and not (tmp_path / "parked").exists()
    first(input_ids=torch.tensor([[5, 6]]))  # no guard left behind


def prompts(n: int, offset: int = 0) -> pd.DataFrame:
    messages = [[{"role": "user", "content": f"question {i}"}] for i in range(offset, offset + n)]
    return pd.DataFrame({"messages": messages, "safety": False})


CFG = PPOConfig(steps=2, batch_size=4, mini_batch_size=4, micro_batch_size=2, lr=1e-3, value_lr=1e-3, beta=0.05,
                max_new_tokens=6, n_prompts=8, eval_prompts=2, eval_every=1, patience=0, checkpoint_every=0,
                value_init="reward", frozen_precision="fp32")


def models():
    """The tiny policy, its frozen reference, a tiny RM and the value model started from it."""
    policy, tokenizer = build_tiny_model(seed=0)
    rm, rm_tokenizer = reward_model_from_policy(ModelConfig(name_or_path="tiny", precision="fp32"))
    return policy, tokenizer, copy.deepcopy(policy), ValueModel.from_reward_model(rm), rm, rm_tokenizer


def ppo_run(tmp_path, park: bool, parts: tuple):
    """Two PPO iterations of the tiny policy against the tiny RM; the result and every iteration's metrics
    but its timings."""
    policy, tokenizer, reference, value, rm, rm_tokenizer = parts

    def reward(messages, answers, tags):
        return score(rm, rm_tokenizer, messages, answers, batch_size=4, precision="fp32")

    history = []
    result = run_ppo(policy, tokenizer, reference, value, reward, prompts(8), prompts(2, offset=100),
                     PPOConfig(**{**CFG.__dict__, "park_frozen": park}), SamplingConfig(max_new_tokens=6),
                     tmp_path, precision="fp32", on_metrics=lambda m, s: history.append(m), frozen=[rm])
    return result, [{k: v for k, v in m.items() if not k.startswith("time/")} for m in history]


def test_ppo_with_parked_frozen_models_is_bitwise_the_run_that_kept_them(tmp_path, monkeypatch):
    kept_models = models()
    kept, kept_history = ppo_run(tmp_path / "kept", False, kept_models)
    parked_models = models()
    policy, _, reference, value, rm, _ = parked_models
    during_update = []
    real_update = ppo_loop.update

    def update_watching_the_frozen_models(*args, **kwargs):  # what the reference and the RM hold in the update
        during_update.append((parameter_bytes(reference), parameter_bytes(rm)))
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ppo_loop, "update", update_watching_the_frozen_models)
    parked, history = ppo_run(tmp_path / "parked", True, parked_models)
    assert during_update == [(0, 0), (0, 0)]
    # the same numbers: every metric of every iteration, the held-out rewards, the trained weights
    assert len(history) == 2 and history == kept_history and parked.history == kept.history
    for before, after in ((kept_models[0], policy), (kept_models[3], value)):
        assert all(torch.equal(x, y) for x, y in zip(before.state_dict().values(), after.state_dict().values()))
    # the run gives the frozen models back, whole, and counts what they hold while resident
    assert parameter_bytes(reference) == parameter_bytes(kept_models[2]) > 0
    assert parameter_bytes(rm) == parameter_bytes(kept_models[4]) > 0
    assert parked.memory == kept.memory
    assert not (tmp_path / "parked" / "parked-rank0").exists()
