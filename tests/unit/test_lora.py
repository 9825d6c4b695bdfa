"""LoRA adapters on the tiny Llama: only the adapters (and an RM's head) train, the merge is W + B @ A * alpha / r,
the merged model reloads with the plain loader, SFT and RM training learn, resume is exact, and bad
config names its key."""

import random

import pandas as pd
import pytest
import torch

from rlhf.core import lora
from rlhf.core.errors import ConfigError
from rlhf.core.lora import LoRAConfig
from rlhf.core.models import ModelConfig, build_tiny_model, load_model, save_model
from rlhf.core.preferences import LEVELS
from rlhf.core.reward.model import reward_model_from_policy
from rlhf.core.reward.train import RewardConfig, evaluate_reward_model, train_reward_model
from rlhf.core.sft import SFTConfig, mean_target_loss, run_sft
from rlhf.core.training import InjectedFault, latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["apple", "kiwi", "plum", "fig", "pear", "lime", "date", "melon"]
TINY = ModelConfig(name_or_path="tiny", precision="fp32")


def convs(n=8):
    return [{"messages": [{"role": "user", "content": f"Say {w}"},
                          {"role": "assistant", "content": f"{w} " * (1 + i % 3) + "!"}]}
            for i, w in enumerate(WORDS[:n])]


def cfg(lora_cfg=None, **overrides):
    base = dict(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8, checkpoint_every=0, warmup_ratio=0.0,
                weight_decay=0.0)
    return SFTConfig(**{**base, **overrides}, lora=lora_cfg or LoRAConfig(r=4, alpha=8))


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def probe_ids(tok):
    return torch.tensor([tok.encode("<|user|>\nSay kiwi<|end|>\n<|assistant|>\nkiwi !")])


@pytest.fixture
def before_merge(monkeypatch):
    """What the model held just before the adapters were merged: its parameters (base and adapter
    weights by their wrapped names), which of them trained, and its logits on a probe input."""
    seen = {}
    merge = lora.merge_adapters

    def spy(adapters):
        model = adapters.model
        seen["weights"] = weights(model)
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        if "probe" in seen:
            with torch.no_grad():
                seen["logits"] = model.eval()(seen["probe"]).logits
        return merge(adapters)

    monkeypatch.setattr(lora, "merge_adapters", spy)
    return seen


def test_only_adapters_train_and_the_merge_adds_scaled_B_A(tiny, tmp_path, before_merge):
    model, tok = tiny
    start = weights(model)
    run_sft(model, tok, convs(), cfg(max_steps=3), tmp_path, precision="fp32")
    wrapped = before_merge["weights"]

    # While training: every base weight is bit-identical to the start; only A and B of the 7 projections
    # of the 2 layers were trainable, and B (zero at the start) is no longer zero.
    assert before_merge["trainable"] == {n for n in wrapped if ".lora_" in n}
    assert len(before_merge["trainable"]) == 2 * 7 * 2
    base = {n.replace(".base_layer", ""): p for n, p in wrapped.items() if ".lora_" not in n}
    assert base.keys() == start.keys()
    assert all(torch.equal(base[n], start[n]) for n in start)
    assert all(p.abs().max() > 0 for n, p in wrapped.items() if ".lora_B." in n)

    # After the merge: a plain model again (no adapter layers, every weight trainable as before); the
    # projections moved by exactly B @ A * alpha / r, everything else is untouched.
    assert weights(model).keys() == start.keys()
    assert all(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "peft_config")
    layer = "model.layers.1.mlp.down_proj"
    update = wrapped[f"{layer}.lora_B.default.weight"] @ wrapped[f"{layer}.lora_A.default.weight"] * (8 / 4)
    torch.testing.assert_close(model.get_parameter(f"{layer}.weight"), start[f"{layer}.weight"] + update)
    for name, p in model.named_parameters():
        projection = any(f".{t}." in name for t in lora.LLAMA_PROJECTIONS)
        assert torch.equal(p, start[name]) != projection, name


def test_the_merged_model_reloads_with_the_plain_loader_and_gives_the_trained_logits(tiny, tmp_path, before_merge):
    model, tok = tiny
    before_merge["probe"] = probe_ids(tok)
    run_sft(model, tok, convs(), cfg(max_steps=3), tmp_path / "work", precision="fp32")
    save_model(model, tok, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    reloaded, _ = load_model(ModelConfig(name_or_path=str(tmp_path / "out")))
    with torch.no_grad():
        merged = model.eval()(probe_ids(tok)).logits
        loaded = reloaded.eval()(probe_ids(tok)).logits
        untrained = build_tiny_model(seed=0)[0].eval()(probe_ids(tok)).logits
    torch.testing.assert_close(loaded, merged, rtol=0, atol=0)  # the saved weights are the merged ones
    torch.testing.assert_close(merged, before_merge["logits"], rtol=1e-5, atol=1e-5)  # = the adapters' output
    assert (merged - untrained).abs().max() > 1e-2  # and training changed it


def test_lora_sft_lowers_the_training_loss(tmp_path):
    data = convs(4)
    settings = dict(epochs=60, batch_size=4, micro_batch_size=4, min_lr_ratio=1.0)
    model, tok = build_tiny_model(seed=0)
    before = mean_target_loss(model, tok, data)
    result, _ = run_sft(model, tok, data, cfg(LoRAConfig(r=8), **settings), tmp_path / "proj", precision="fp32")
    after = mean_target_loss(model, tok, data)
    # With only the projections adapted the frozen random LM head caps the logits (RMSNorm fixes the size
    # of its input), so the loss floor is ~4.3 nats, not 0; the adapters get there from ~5.6.
    assert before > 5.0 and after < before - 1.0, f"loss {before:.2f} -> {after:.2f}"
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 1.0
    # Adapting the (untied) LM head as well lifts the cap: the handful of conversations is learnt. (60
    # epochs reached 0.33 on one machine's fp32 kernels and < 0.2 on another; 100 reach ~0.02 on both.)
    model, tok = build_tiny_model(seed=0)
    with_head = LoRAConfig(r=8, target_modules=[*lora.LLAMA_PROJECTIONS, "lm_head"])
    run_sft(model, tok, data, cfg(with_head, **{**settings, "epochs": 100}), tmp_path / "head", precision="fp32")
    assert mean_target_loss(model, tok, data) < 0.2


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    # 4 steps per epoch, 12 in all; adapter dropout, so the resumed RNG state matters too.
    settings = dict(epochs=3, batch_size=2, micro_batch_size=1, lr=3e-3)
    adapters = LoRAConfig(r=4, alpha=8, dropout=0.1)
    straight, tok = build_tiny_model(seed=0)
    run_sft(straight, tok, convs(), cfg(adapters, **settings), tmp_path / "straight", precision="fp32")

    crashed, tok = build_tiny_model(seed=0)
    with pytest.raises(InjectedFault):  # crash after step 6; checkpoint at step 5
        run_sft(crashed, tok, convs(), cfg(adapters, **settings, checkpoint_every=5, fail_after_steps=6),
                tmp_path / "resumed", precision="fp32")
    assert latest_checkpoint(tmp_path / "resumed").name == "step-5"
    # The crash removed the adapters unmerged: the model is the one it was given.
    fresh, left = weights(build_tiny_model(seed=0)[0]), weights(crashed)
    assert left.keys() == fresh.keys() and all(torch.equal(p, fresh[n]) for n, p in left.items())

    resumed, tok = build_tiny_model(seed=1)  # other weights: base and adapters must come from the checkpoint
    result, _ = run_sft(resumed, tok, convs(), cfg(adapters, **settings, checkpoint_every=5), tmp_path / "resumed",
                        precision="fp32")
    assert result.resumed_from == 5 and result.steps == 12
    expected = weights(straight)
    for name, p in weights(resumed).items():
        torch.testing.assert_close(p, expected[name], rtol=0, atol=1e-6)


def test_gradient_checkpointing_trains_the_adapters_the_same(tmp_path):
    results = []
    for checkpointing in (False, True):
        model, tok = build_tiny_model(seed=0)
        run_sft(model, tok, convs(), cfg(max_steps=2, gradient_checkpointing=checkpointing),
                tmp_path / str(checkpointing), precision="fp32")
        # the checkpointed path ran (lean_layers.checkpoint_layers wraps each decoder layer's forward)
        assert hasattr(model.model.layers[0], "_checkpointed_original_forward") == checkpointing
        results.append(weights(model))
    start = weights(build_tiny_model(seed=0)[0])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(results[1][name], start[name])  # the adapters got gradients through the checkpoints
    for name, p in results[1].items():
        torch.testing.assert_close(p, results[0][name], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# reward models


def conditional_pairs(n: int, seed: int) -> pd.DataFrame:
    """Answers of 12 ``x``/``o``; the prompt says which letter wins. A frozen backbone cannot tell the two
    prompts apart at the answer's end well enough for a head alone: the adapters have to learn it."""
    rng = random.Random(seed)

    def answer(n_x: int) -> str:
        chars = list("x" * n_x + "o" * (12 - n_x))
        rng.shuffle(chars)
        return "".join(chars)

    rows = []
    for i in range(n):
        low, want = rng.randint(0, 8), "xo"[i % 2]
        more_x, fewer_x = answer(low + 4), answer(low)
        chosen, rejected = (more_x, fewer_x) if want == "x" else (fewer_x, more_x)
        rows.append({"prompt": [{"role": "user", "content": f"Most {want} wins."}], "chosen": chosen,
                     "rejected": rejected, "level": LEVELS[i % 4], "source": "test", "iteration": 0, "safety": False})
    return pd.DataFrame(rows)


def rm_cfg(r: int, **overrides) -> RewardConfig:
    base = dict(lr=3e-3, epochs=10, batch_size=16, micro_batch_size=16, max_length=64, n_test=0, checkpoint_every=0,
                margin="none", min_warmup_steps=0, warmup_ratio=0.0)
    return RewardConfig(**{**base, **overrides}, lora=LoRAConfig(r=r))


def test_rm_with_lora_trains_its_head_and_adapters_and_learns_the_pairs(tmp_path, before_merge):
    pairs = conditional_pairs(128, seed=0)
    rm, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    start = weights(rm)
    accuracy_before = evaluate_reward_model(rm, tok, pairs, precision="fp32")[0]["accuracy"]
    train_reward_model(rm, tok, pairs, rm_cfg(r=8), tmp_path / "lora", precision="fp32")
    accuracy_after = evaluate_reward_model(rm, tok, pairs, precision="fp32")[0]["accuracy"]
    assert before_merge["trainable"] == {n for n in before_merge["weights"] if ".lora_" in n}  # the backbone's share
    assert not torch.equal(rm.head.weight, start["head.weight"])  # the head trained
    assert torch.equal(rm.backbone.embed_tokens.weight, start["backbone.embed_tokens.weight"])  # not adapted
    assert not torch.equal(rm.backbone.layers[0].mlp.up_proj.weight, start["backbone.layers.0.mlp.up_proj.weight"])
    assert accuracy_before <= 0.6 and accuracy_after >= 0.9, (accuracy_before, accuracy_after)

    # The head alone on the frozen backbone does not get there: the adapters did the work.
    head_only, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    head_only.backbone.requires_grad_(False)
    train_reward_model(head_only, tok, pairs, rm_cfg(r=0), tmp_path / "head", precision="fp32")
    assert evaluate_reward_model(head_only, tok, pairs, precision="fp32")[0]["accuracy"] < 0.7


def test_rm_with_lora_resumes_exactly(tmp_path):
    pairs = conditional_pairs(32, seed=1)
    settings = dict(epochs=2, batch_size=8, micro_batch_size=4, checkpoint_every=3)  # 8 steps
    straight, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    train_reward_model(straight, tok, pairs, rm_cfg(r=4, **settings), tmp_path / "straight", precision="fp32")
    crashed, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    with pytest.raises(InjectedFault):
        train_reward_model(crashed, tok, pairs, rm_cfg(r=4, **settings, fail_after_steps=5), tmp_path / "resumed",
                           precision="fp32")
    resumed, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    result, _ = train_reward_model(resumed, tok, pairs, rm_cfg(r=4, **settings), tmp_path / "resumed",
                                   precision="fp32")
    assert result.resumed_from == 3 and result.steps == 8
    expected = weights(straight)
    for name, p in weights(resumed).items():
        torch.testing.assert_close(p, expected[name], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# bad config


@pytest.mark.parametrize("lora_cfg, field", [
    (LoRAConfig(r=-1), "r"),
    (LoRAConfig(r=4, alpha=0), "alpha"),
    (LoRAConfig(r=4, dropout=1.0), "dropout"),
    (LoRAConfig(r=4, target_modules=[]), "target_modules"),
])
def test_a_bad_value_names_its_key(tiny, tmp_path, lora_cfg, field):
    model, tok = tiny
    with pytest.raises(ConfigError) as err:
        run_sft(model, tok, convs(), cfg(lora_cfg), tmp_path)
    assert err.value.key == f"sft.lora.{field}"
    with pytest.raises(ConfigError) as err:  # Ghost Attention's fine-tune names its own section
        run_sft(model, tok, convs(), cfg(lora_cfg), tmp_path, desc="gatt")
    assert err.value.key == f"gatt.train.lora.{field}"


def test_a_target_module_the_model_lacks_names_the_key_and_the_layers_it_has(tiny, tmp_path):
    model, tok = tiny
    start = weights(model)
    with pytest.raises(ConfigError) as err:
        run_sft(model, tok, convs(), cfg(LoRAConfig(r=4, target_modules=["q_proj", "query"])), tmp_path)
    assert err.value.key == "sft.lora.target_modules"
    assert "query" in str(err.value) and "q_proj" in str(err.value) and "down_proj" in str(err.value)
    assert weights(model).keys() == start.keys()  # nothing was injected

    rm, tok = reward_model_from_policy(TINY, seed=0, max_length=64)
    with pytest.raises(ConfigError) as err:  # the RM's backbone has no LM head to adapt
        train_reward_model(rm, tok, conditional_pairs(8, seed=0),
                           RewardConfig(n_test=0, lora=LoRAConfig(r=4, target_modules=["lm_head"])), tmp_path / "rm")
    assert err.value.key == "reward.train.lora.target_modules"
