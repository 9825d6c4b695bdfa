"""LoRA adapters (peft) for the fine-tunes: SFT, the rejection-sampling fine-tune, Ghost Attention's and
the reward models (``sft.lora``, ``train_policy.lora``, ``gatt.train.lora``, ``reward.train.lora``).

With ``<key>.lora.r > 0`` the model's weights are frozen and each targeted linear layer ``W`` (d_out x d_in)
gets a trainable low-rank update ``B @ A * (alpha / r)`` (``A``: r x d_in, random; ``B``: d_out x r, zero,
so training starts from the unchanged model). Only ``A`` and ``B`` are trained (and, for an RM, its scalar
head, which lies outside the adapted backbone). After training the update is added into ``W``
(peft ``merge_and_unload``) and the adapter layers are removed, so a step's output is a plain
``save_pretrained`` model directory that every later step loads as before; the adapters themselves are
not kept (they are recoverable only as the difference of two model directories). docs/design.md#lora-adapters
has the memory arithmetic.

Why not ``peft.get_peft_model``: it returns a ``PeftModel`` wrapper whose ``base_model`` is peft's tuner
and whose forward differs from the transformers model's, while the objectives here call the caller's
model directly (``model.base_model(...).last_hidden_state`` for SFT, ``backbone(...)`` for an RM) and the
step runners save and evaluate that same object afterwards. So the adapters are injected *in place* into
the caller's model (what ``peft.inject_adapter_in_model`` does: build a ``LoraModel`` on it and keep the
model), and the ``LoraModel`` is kept to merge them back; the caller's object stays the one that trains,
and after :func:`merge_adapters` it is again a plain transformers model.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger("rlhf")

# The attention and MLP projections of Llama-style models (Llama, Mistral, Qwen2, SmolLM2, ...).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"  # peft's adapter name; one adapter per training run


@dataclass
class LoRAConfig:
    r: int = 0  # rank of the adapters; 0 = off (every weight is trained)
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input (training only)
    # Linear layers to adapt, by name (the last part of a module's name, or a dotted suffix of it).
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))

    def validate(self, key: str) -> None:
        """A :class:`ConfigError` naming ``<key>.lora.<field>`` for a value that cannot work; ``key`` is the
        training section (``sft``, ``train_policy``, ``gatt.train``, ``reward.train``)."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ConfigError(f"{key}.lora.r", f"must be 0 (LoRA off) or a positive rank, got {self.r!r}; "
                                               f"e.g. {key}.lora.r=8")
        if self.r == 0:
            return
        if not self.alpha > 0:
            raise ConfigError(f"{key}.lora.alpha", f"must be positive (the update is scaled by alpha / r), got "
                                                   f"{self.alpha!r}; e.g. {key}.lora.alpha=16")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.lora.dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(f"{key}.lora.target_modules", f"must list at least one layer name, got "
                                                            f"{self.target_modules!r}; e.g. "
                                                            f"{key}.lora.target_modules=[q_proj,v_proj]")


@dataclass
class Adapters:
    """LoRA adapters injected into ``model``: ``tuner`` is peft's ``LoraModel`` that put them there, and
    ``requires_grad`` the model's flags from before (peft freezes the base), restored when they go."""

    model: nn.Module
    tuner: nn.Module
    requires_grad: dict[str, bool]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of names


def check_targets(model: nn.Module, cfg: LoRAConfig, key: str) -> None:
    """Every name in ``cfg.target_modules`` must name a linear layer of ``model``: peft silently skips a
    name that matches nothing as long as another one matches, and a typo would then train fewer layers."""
    linear = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in cfg.target_modules if not any(_matches(name, t) for name in linear)]
    if missing:
        names = sorted({name.rpartition(".")[2] for name in linear})
        raise ConfigError(f"{key}.lora.target_modules",
                          f"{', '.join(missing)}: no linear layer of this {type(model).__name__} is named so; its "
                          f"linear layers are {', '.join(names)}. List some of those, e.g. "
                          f"{key}.lora.target_modules=[{','.join(names[:2])}]")
    # A tied weight (SmolLM2's lm_head is its input embedding matrix): merging the update into it would
    # change the embeddings too, which training never saw.
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    tied = [name for name, module in linear.items() if any(_matches(name, t) for t in cfg.target_modules)
            and owners.get(id(module.weight), 0) > 1]
    if tied:
        raise ConfigError(f"{key}.lora.target_modules",
                          f"{', '.join(tied)} shares its weight with another layer (tied embeddings): merging an "
                          "adapter into it would change both. Leave it out of the list")


def add_adapters(model: nn.Module, cfg: LoRAConfig, key: str, seed: int = 0) -> Adapters:
    """Inject LoRA adapters into ``model`` in place and freeze everything else in it.

    ``A`` is initialised from ``seed`` (so a rerun, or a resumed run before its checkpoint loads, builds
    the same adapters), ``B`` to zero. ``key`` names the config section in errors.
    """
    from peft import LoraConfig, LoraModel

    cfg.validate(key)
    if cfg.r == 0:
        raise ValueError("add_adapters with lora.r = 0: LoRA is off")
    check_targets(model, cfg, key)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner = LoraModel(model, peft_cfg, ADAPTER)
    return Adapters(model, tuner, flags)


def _unload(adapters: Adapters, merge: bool) -> nn.Module:
    model = adapters.tuner.merge_and_unload() if merge else adapters.tuner.unload()
    for name, p in model.named_parameters():
        p.requires_grad_(adapters.requires_grad.get(name, True))
    return model


def merge_adapters(adapters: Adapters) -> nn.Module:
    """Add each adapter's ``B @ A * alpha / r`` into its base weight and remove the adapter layers; returns
    the model (the same object), a plain transformers model again with its ``requires_grad`` flags restored."""
    return _unload(adapters, merge=True)


def remove_adapters(adapters: Adapters) -> nn.Module:
    """Remove the adapter layers without merging: the model is back to its weights before training."""
    return _unload(adapters, merge=False)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``module``."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe(cfg: LoRAConfig, trained: nn.Module) -> str:
    """The log line's text: the adapters and how many of ``trained``'s parameters train."""
    trainable, total = count_parameters(trained)
    return (f"LoRA r={cfg.r} alpha={cfg.alpha:g} on {','.join(cfg.target_modules)}: {trainable:,} of {total:,} "
            f"parameters trainable ({100 * trainable / max(1, total):.2f} %)")


@contextmanager
def lora_training(model: nn.Module, cfg: LoRAConfig, key: str, seed: int = 0, desc: str = "train",
                  trained: nn.Module | None = None) -> Iterator[Adapters | None]:
    """Train the body of the ``with`` block on LoRA adapters of ``model`` when ``cfg.r > 0`` (yields the
    :class:`Adapters`; None when LoRA is off and the block trains every weight).

    When the block returns, the adapters are merged into ``model``'s weights; when it raises (a crash, an
    injected fault), they are removed unmerged, leaving ``model`` as it was given (its resumable state is
    in the training loop's checkpoints). ``trained`` is the whole module the block trains (an RM: backbone
    and head), counted for the log line; ``model`` by default.
    """
    cfg.validate(key)
    if cfg.r == 0:
        yield None
        return
    adapters = add_adapters(model, cfg, key, seed)
    log.info("%s: %s", desc, describe(cfg, trained if trained is not None else model))
    try:
        yield adapters
    except BaseException:
        remove_adapters(adapters)
        raise
    merge_adapters(adapters)


class WithoutAdapters(nn.Module):
    """The model its adapters were added to, as it was before them: ``forward`` runs that model with the
    adapter layers switched off. PPO's reference policy under LoRA: the frozen base is the pre-PPO policy,
    so no second copy of it is needed. Holds no parameters of its own (the model is not a submodule)."""

    def __init__(self, adapters: Adapters):
        super().__init__()
        self._adapters = (adapters,)  # a tuple: not registered, so .eval() / requires_grad_ leave the policy be

    def forward(self, *args, **kwargs):
        adapters = self._adapters[0]
        adapters.tuner.disable_adapter_layers()
        try:
            return adapters.model(*args, **kwargs)
        finally:
            adapters.tuner.enable_adapter_layers()
