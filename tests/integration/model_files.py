"""Helpers for the tests that compare trained models (a module beside them; pytest puts this folder on the
path): the weights of a step's output directory, their largest difference, the tiny model's starting
weights, and a pair of quickly trained tiny reward models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhf.core.models import ModelConfig, build_tiny_model
from rlhf.core.reward.train import RewardConfig, RMDataConfig
from rlhf.core.scorers import ScorerConfig
from rlhf.core.steps.reward import rm_train_step


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``out_dir``, as ``"<file>:<name>"``."""
    tensors = {}
    for path in sorted(Path(out_dir).glob("*.safetensors")):
        tensors |= {f"{path.name}:{name}": value for name, value in load_file(path).items()}
    return tensors


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def tiny_weights(seed: int = 0, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """The untrained tiny model's weights, named as :func:`weights` names a saved one."""
    model, _ = build_tiny_model(seed=seed)
    return {f"{file}:{k}": v.detach().clone() for k, v in model.state_dict().items()}


def tiny_rms(root: Path, model: ModelConfig) -> ScorerConfig:
    """A Helpfulness and a Safety RM of ``model`` (one quick training each on 8 synthetic pairs) in ``root``."""
    train = RewardConfig(epochs=1, batch_size=8, micro_batch_size=8, max_length=64, lr=1e-3, min_warmup_steps=0,
                         n_test=2, checkpoint_every=0)
    for name in ("helpful", "safety"):
        rm_train_step(model, RMDataConfig(n_synthetic=10), train, root / name, name=name)
    return ScorerConfig(kind="rm", helpful=str(root / "helpful"), safety=str(root / "safety"), batch_size=8)
