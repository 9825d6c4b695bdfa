"""PPO's memory modes, measured: the bytes the PPO step holds (models, gradients, optimizer state;
``memory/*`` in its manifest) against the per-parameter arithmetic of docs/design.md, per mode:

- the default: policy and a separate value model trained (12 bytes per parameter each between steps: fp32
  weights and two AdamW moments; a gradient, 4 more, lives only within a step, one model's at a time),
  reference and two RMs in fp32 (4 each); the best weights so far are on disk, not in memory;
- ``ppo.frozen_precision=bf16``: reference and RMs at 2 bytes per parameter;
- ``ppo.value_init=shared``: a head on the policy's trunk instead of a second transformer;
- ``ppo.lora``: adapters train (their 12 bytes per parameter), the base is frozen (4), the reference is
  the policy without them (0).

Every figure is counted from the tensors themselves (each storage once), so a mode that kept a copy it
should not (a reference model under LoRA, a second trunk) fails its line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from model_files import tiny_rms  # beside this file
from safetensors.torch import load_file

from rlhf.core.lora import LoRAConfig
from rlhf.core.models import ModelConfig, load_model
from rlhf.core.ppo import PPOConfig
from rlhf.core.prompt_sets import PromptsConfig
from rlhf.core.reward.model import load_reward_model
from rlhf.core.sampling import SamplingConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.steps.ppo import ppo_step

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ModelConfig(name_or_path="tiny", precision="fp32")
PPO = PPOConfig(steps=1, batch_size=4, mini_batch_size=4, micro_batch_size=4, lr=1e-3, value_lr=1e-3, max_new_tokens=4,
                n_prompts=4, eval_prompts=2, eval_every=1, patience=0, checkpoint_every=0, value_init="reward",
                frozen_precision="fp32")
SAMPLING = SamplingConfig(max_new_tokens=4, batch_prompts=4)
LORA = LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def rms(tmp_path_factory) -> ScorerConfig:
    return tiny_rms(tmp_path_factory.mktemp("rms"), MODEL)


def counts(rms: ScorerConfig) -> dict[str, int]:
    """Parameters of the policy (P), of one RM (R: its backbone and head), of the RM's head (h), and of
    the LoRA adapters LORA puts on the policy (A: r x (d_in + d_out) per adapted matrix)."""
    policy, _ = load_model(MODEL)
    rm, _ = load_reward_model(rms.helpful)
    adapted = [m for name, m in policy.named_modules() if name.rpartition(".")[2] in LORA.target_modules]
    return {"P": sum(p.numel() for p in policy.parameters()), "R": sum(p.numel() for p in rm.parameters()),
            "h": sum(p.numel() for p in rm.head.parameters()), "hidden": policy.config.hidden_size,
            "A": sum(LORA.r * (m.in_features + m.out_features) for m in adapted)}


@pytest.mark.parametrize("mode", ["default", "frozen_bf16", "shared", "lora"])
def test_ppo_holds_the_bytes_its_memory_mode_promises(mode, rms, tmp_path):
    c = counts(rms)
    P, R, A = c["P"], c["R"], c["A"]
    head = c["hidden"] + 1  # a fresh value head on the policy's trunk
    cfg = {"default": PPO, "frozen_bf16": replace(PPO, frozen_precision="bf16"),
           "shared": replace(PPO, frozen_precision="bf16", value_init="shared"),
           "lora": replace(PPO, frozen_precision="bf16", value_init="shared", lora=LORA)}[mode]
    # The arithmetic, part by part (bytes), as the step ends: a trained parameter holds its weight and two
    # AdamW moments (12 bytes); gradients live only within a mini-batch's step (update drops them), so none
    # is left over.
    expected = {
        "default": {"policy": 4 * P, "value": 4 * R, "reference": 4 * P, "reward_models": 8 * R,
                    "optimizers": 8 * (P + R)},
        "frozen_bf16": {"policy": 4 * P, "value": 4 * R, "reference": 2 * P, "reward_models": 4 * R,
                        "optimizers": 8 * (P + R)},
        "shared": {"policy": 4 * P, "value": 4 * head, "reference": 2 * P, "reward_models": 4 * R,
                   "optimizers": 8 * (P + head)},
        "lora": {"policy": 4 * P + 4 * A, "value": 4 * head, "reference": 0, "reward_models": 4 * R,
                 "optimizers": 8 * (A + head)},
    }[mode]
    out = tmp_path / mode
    metrics = ppo_step(MODEL, rms, PromptsConfig(n=4), PromptsConfig(n=2, offset=4), SAMPLING, cfg, out)["metrics"]
    held = {k.removeprefix("memory/").removesuffix("_bytes"): v for k, v in metrics.items()
            if k.startswith("memory/") and k.endswith("_bytes")}
    assert set(held) == set(expected)
    for part, value in expected.items():  # buffers (rotary frequencies) add a few hundred bytes
        assert abs(held[part] - value) <= 1024 + 0.002 * value, (part, held[part], value)
    assert metrics["memory/bytes_per_parameter"] == pytest.approx(sum(held.values()) / P)
    # the output is a plain model directory in every mode (LoRA: adapters merged), with the policy's names
    names = set(load_file(out / "model.safetensors"))
    assert names <= set(load_model(MODEL)[0].state_dict()) and not any("lora" in n for n in names)
    if mode == "lora":
        # The step returns the best-evaluated policy; here the held-out reward did not beat the start's, so
        # the best adapters are the initial ones (B = 0) and the merged weights are exactly the start's: the
        # best adapters (on disk) were restored before the merge. (The merge of trained adapters is checked
        # in test_ppo_learning.py.)
        assert metrics["best_step"] == 0
        start = load_model(MODEL)[0].state_dict()
        saved = load_file(out / "model.safetensors")
        assert all(torch.equal(saved[k], start[k]) for k in saved)
