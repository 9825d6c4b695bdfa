"""PPO with a KL penalty to the reference policy (Llama 2 §3.2.3; docs/recipe.md#ppo): the algorithm.

The objective is ``R(g|p) = R~c(g|p) - beta * KL(pi_theta(g|p) || pi_0(g|p))``, ``pi_0`` the frozen
pre-PPO policy. Here it is the standard token-level form (the paper gives no value/GAE details, so these
are the usual choices of the InstructGPT line, written down in :class:`PPOConfig`):

- per-token reward ``r_t = -beta * (log pi(a_t|s_t) - log pi_0(a_t|s_t))``, plus the whitened sequence
  reward ``R~c`` on the answer's last token (the stop token, or the last one when it ran out of length);
- values ``V(s_t)`` from a value model (a transformer with a scalar head read at every position);
- GAE(gamma, lambda) advantages, whitened over the batch's answer tokens; returns = advantages + values
  (before whitening);
- the clipped surrogate ``max(-A r, -A clip(r, 1-eps, 1+eps))`` and the clipped value loss
  ``0.5 max((V - G)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - G)^2)``, both token means over the
  mini-batch;
- one gradient step per mini-batch (paper: batch 512, mini-batch 64), AdamW (0.9, 0.95, eps 1e-5),
  weight decay 0.1, gradient clipping 1.0, constant learning rate 1e-6.

This module holds the math and one update over a rollout batch; where rollouts, rewards and held-out
evaluations come from is :mod:`rlhf.core.ppo_loop`'s business.

Shapes: ``b`` answers in the batch, ``L`` the longest answer (tokens), ``P`` the longest prompt. A batch
is laid out ``[left-padded prompt | right-padded answer]``, so answer token j of every row sits at column
``P + j`` and every per-token tensor here is ``(b, L)`` with a ``mask`` of the answer's real tokens.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .chat import pad_batch
from .errors import ConfigError
from .launch import rank, sum_across, world_size
from .lora import LoRAConfig
from .models import autocast


@dataclass
class PPOConfig:
    steps: int = 200  # PPO iterations (paper: 200-400), each one rollout batch and its updates
    batch_size: int = 512  # rollouts (prompts, one answer each) per PPO iteration (paper: 512)
    mini_batch_size: int = 64  # answers per gradient step; one step per mini-batch (paper: 64)
    micro_batch_size: int = 8  # answers per forward pass inside a mini-batch (memory, not maths)
    epochs: int = 1  # passes over each rollout batch (paper: one gradient step per mini-batch -> 1)
    lr: float = 1.0e-6  # constant (paper)
    value_lr: float = 1.0e-5  # the value model's (paper silent): its head must track returns quickly
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-5
    grad_clip: float = 1.0
    beta: float = 0.01  # KL penalty (paper: 0.01 for 7B/13B, 0.005 for 34B/70B)
    clip: float = 0.2  # policy ratio clip (paper)
    value_clip: float = 0.2  # value clip around the rollout-time values (paper silent; the usual 0.2)
    gamma: float = 1.0  # no discount inside one answer (the reward arrives at its end)
    lam: float = 0.95  # GAE lambda: the usual bias/variance middle ground
    whiten_advantages: bool = True
    # reward: a copy of the Helpfulness RM (already scores answers) | policy: a copy of the policy's transformer
    # with a fresh head | shared: a fresh head on the policy's own transformer (no second one; the value loss
    # then trains the policy's weights too, at the policy's lr)
    value_init: str = "reward"
    # the frozen models (reference policy, reward models) stored in: auto = bf16 where model.precision
    # resolves to bf16 (their matmuls run in bf16 under autocast anyway), else fp32 | bf16 | fp32
    frozen_precision: str = "auto"
    # the frozen models wait in a file in the step's work dir between their passes (scoring, the experience
    # pass) and are read back for each (rlhf_core/parking.py): the update, where memory peaks, holds only the
    # trained models. The same results bit for bit; costs one read per model and pass
    park_frozen: bool = True
    # LoRA adapters instead of every weight (r > 0): the policy trains adapters, the reference is the policy
    # with them switched off (no copy), a value model of its own (value_init reward | policy) gets adapters too
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lean_activations: bool = True  # trained models: Llama norms and MLPs keep fewer activations (lean_layers.py)
    lean_attention: bool = False  # trained models: the attention's gradient from the fp32 kernel (training.TrainConfig)
    # trained models: each decoder layer keeps only its input and recomputes its forward in backward (one more
    # forward pass of the layers per update pass; the same gradients; lean_layers.checkpoint_layers)
    gradient_checkpointing: bool = False
    temperature: float = 1.0  # rollouts sample the policy's own distribution
    max_new_tokens: int | None = None  # None = sampling.max_new_tokens
    n_prompts: int = 256  # training prompts (cycled in seeded order)
    eval_prompts: int = 64  # held-out prompts for early stopping (the rater's eval split)
    eval_every: int = 10  # PPO iterations between held-out evaluations (0 = only at start and end)
    eval_temperature: float = 0.7  # held-out answers: same seed every time, so evaluations are paired
    patience: int = 3  # evaluations without a new best before stopping (0 = never stop early)
    checkpoint_every: int = 10  # PPO iterations between resumable checkpoints (0 = never)
    seed: int = 0

    def validate(self) -> "PPOConfig":
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise ConfigError("ppo.batch_size", f"batch_size {self.batch_size} must be a multiple of mini_batch_size "
                                                f"{self.mini_batch_size}, and that of micro_batch_size "
                                                f"{self.micro_batch_size}")
        if self.value_init not in ("reward", "policy", "shared"):
            raise ConfigError("ppo.value_init", f"unknown {self.value_init!r}; use reward, policy or shared")
        if self.frozen_precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("ppo.frozen_precision", f"unknown {self.frozen_precision!r}; use auto, bf16 or fp32")
        self.lora.validate("ppo")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError("ppo.gamma", "gamma and lam must be in [0, 1]")
        if self.beta < 0 or self.clip <= 0:
            raise ConfigError("ppo.beta", "beta must be >= 0 and clip > 0")
        return self


# --------------------------------------------------------------------------------------------------
# the maths (hand-checked in tests/unit/test_ppo.py)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise the masked entries of ``x`` (population variance); masked-out entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``(b,)`` index of each row's last real token in a right-padded ``(b, L)`` mask."""
    return (mask.sum(-1) - 1).clamp(min=0).long()


def token_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards (b, L), kl (b, L))``: the KL penalty ``-beta (logp - ref_logp)`` on every answer token
    and the sequence ``score (b,)`` added on the last one."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    rewards[torch.arange(len(score)), last_index(mask)] += score
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded answers: ``(advantages, returns)``, ``(b, L)``.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` with ``V`` = 0 after the last token (the episode ends there);
    ``A_t = delta_t + gamma lam A_{t+1}``; ``returns = A + V``. With gamma = lam = 1, ``A_t`` is the
    reward-to-go minus ``V_t``."""
    b, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        following = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] * following if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * following
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate (token mean) and ``clip_frac``, ``approx_kl`` (``E[(r-1) - log r]``, >= 0)."""
    log_ratio = (logp - old_logp) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(ratio - 1 - log_ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``0.5 max((V - G)^2, (V_clipped - G)^2)`` (token mean) and ``value_clip_frac``."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    plain, limited = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(plain, limited), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((limited > plain).float(), mask)}
    return loss, stats


# --------------------------------------------------------------------------------------------------
# models


class ValueModel(nn.Module):
    """``forward(input_ids, attention_mask, position_ids) -> (b, t)`` values: a transformer backbone and
    a scalar head read at every position (fp32). ``shared``: the backbone is the policy's own, trained by
    the policy's optimizer; the value optimizer then holds the head only (:meth:`own`)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, shared: bool = False):
        super().__init__()
        self.backbone, self.head, self.shared = backbone, head, shared

    def own(self) -> nn.Module:
        """What the value optimizer trains and its gradient clipping sees: the head of a shared-trunk value
        model, the whole model otherwise."""
        return self.head if self.shared else self

    @classmethod
    def from_reward_model(cls, rm: nn.Module) -> "ValueModel":
        """A copy of a reward model (``backbone`` + ``head``): it already maps (prompt, answer) to the
        reward's scale, so its first values are close to the returns PPO sees and the value loss does not
        start by dragging the advantages around (the InstructGPT choice)."""
        return cls(copy.deepcopy(rm.backbone), copy.deepcopy(rm.head))

    @classmethod
    def from_policy(cls, policy: nn.Module) -> "ValueModel":
        """A copy of the policy's transformer with a zero-initialised head (every value starts at 0)."""
        head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(copy.deepcopy(policy.base_model), head)

    @classmethod
    def on_policy_trunk(cls, policy: nn.Module) -> "ValueModel":
        """A zero-initialised head on the policy's own transformer (no copy): a value model for the memory
        of a head. The value loss's gradient reaches the trunk too, so the policy learns from both losses
        (the usual shared-trunk actor-critic, value coefficient 1)."""
        head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(policy.base_model, head, shared=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


@dataclass
class Batch:
    """Rollouts laid out for teacher-forced passes (see the module docstring)."""

    input_ids: torch.Tensor  # (b, P + L)
    attention_mask: torch.Tensor  # (b, P + L)
    position_ids: torch.Tensor  # (b, P + L)
    mask: torch.Tensor  # (b, L) float: real answer tokens
    prompt_width: int  # P

    def rows(self, index: torch.Tensor) -> "Batch":
        return Batch(self.input_ids[index], self.attention_mask[index], self.position_ids[index], self.mask[index],
                     self.prompt_width)

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]


def make_batch(prompt_ids: Sequence[torch.Tensor], answer_ids: Sequence[torch.Tensor], pad_id: int) -> Batch:
    """Left-pad the prompts and right-pad the answers (each answer must hold at least one token)."""
    if any(len(a) == 0 for a in answer_ids):
        raise ValueError("an answer has no tokens; every rollout must generate at least one")
    prompts, prompt_attention = pad_batch(prompt_ids, pad_id, side="left")  # (b, P)
    answers, answer_attention = pad_batch(answer_ids, pad_id)  # (b, L)
    input_ids, attention = torch.cat([prompts, answers], -1), torch.cat([prompt_attention, answer_attention], -1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, positions, answer_attention.float(), prompts.shape[1])


def answer_logprobs(model: nn.Module, batch: Batch, precision: str,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``log pi(a_j | s_j)`` ``(b, L)`` of the answers (and the policy's entropy there)."""
    length = batch.mask.shape[1]
    with autocast(precision, batch.input_ids.device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False, logits_to_keep=length + 1).logits
    # the position before each answer token predicts it; the fp32 copy goes as soon as log_softmax has read it
    # (log_softmax keeps its own output for backward), so at most two (b, L, vocab) fp32 tensors are alive
    logp_all = F.log_softmax(logits[:, :length].float(), dim=-1)
    del logits
    logp = logp_all.gather(-1, batch.answer_ids.unsqueeze(-1)).squeeze(-1) * batch.mask
    entropy = None
    if with_entropy:  # a statistic: outside the graph, so its vocabulary-wide temporaries are not kept for backward
        with torch.no_grad():
            entropy = -logp_all.exp().mul_(logp_all).sum(-1) * batch.mask  # one temporary, multiplied in place
    return logp, entropy


def answer_values(value_model: ValueModel, batch: Batch, precision: str) -> torch.Tensor:
    """``V(s_j)`` ``(b, L)``: the value of the state before each answer token."""
    length = batch.mask.shape[1]
    with autocast(precision, batch.input_ids.device):
        values = value_model(batch.input_ids, batch.attention_mask, batch.position_ids)
    return values[:, batch.prompt_width - 1:batch.prompt_width - 1 + length] * batch.mask


@dataclass
class Experience:
    """One rollout batch with everything the update needs (all ``(b, L)`` but ``scores``)."""

    batch: Batch
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # (b,) the whitened sequence rewards that went in


@torch.no_grad()
def make_experience(policy: nn.Module, reference: nn.Module, value_model: ValueModel, batch: Batch,
                    scores: torch.Tensor, cfg: PPOConfig, precision: str) -> Experience:
    """Rollout-time log-probs (policy and reference), values, KL-penalised rewards and GAE, computed in
    micro-batches by the same teacher-forced pass the update uses (so the first ratio is exactly 1).

    On several processes each takes every ``world``-th micro-batch and the rows are summed across them
    (each row is computed by one process, zeros elsewhere): the same micro-batches, so the same numbers."""
    n, length = batch.mask.shape
    logp, ref_logp, values = (torch.zeros(n, length) for _ in range(3))
    for k, start in enumerate(range(0, n, cfg.micro_batch_size)):
        if k % world_size() != rank():
            continue
        index = torch.arange(start, min(start + cfg.micro_batch_size, n))
        rows = batch.rows(index)
        logp[index] = answer_logprobs(policy, rows, precision)[0]
        ref_logp[index] = answer_logprobs(reference, rows, precision)[0]
        values[index] = answer_values(value_model, rows, precision)
    sum_across([logp, ref_logp, values])
    rewards, kl = token_rewards(scores, logp, ref_logp, batch.mask, cfg.beta)
    advantages, returns = gae(rewards, values, batch.mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, batch.mask)
    return Experience(batch, logp, ref_logp, values, rewards, kl, advantages, returns, scores)


# the statistics each model's passes report (token means over the mini-batch)
POLICY_STATS = ("policy_loss", "entropy", "clip_frac", "approx_kl")
VALUE_STATS = ("value_loss", "value_clip_frac")


def update(policy: nn.Module, value_model: ValueModel, opt_policy: torch.optim.Optimizer,
           opt_value: torch.optim.Optimizer, exp: Experience, cfg: PPOConfig, precision: str,
           generator: torch.Generator) -> dict[str, float]:
    """``cfg.epochs`` passes over the experience in shuffled mini-batches, one gradient step each for the
    policy and for the value model; returns the means of the losses and statistics.

    A value model of its own is updated after the policy has stepped and dropped its gradients: the two
    share no weight, so this is the same update as running both backward passes first, with one model's
    gradients in memory at a time instead of both (4 bytes per parameter less at the peak). A value head
    on the policy's trunk sends its gradient into the policy, so there both passes come before either step.
    No gradient outlives its step (the next rollouts do not carry them).

    On several processes every one holds the whole experience and draws the same order; each runs every
    ``world``-th micro-batch of a mini-batch, and the gradients (token-weighted shares of the mini-batch's
    loss) are summed across them before clipping and the step: the update one process makes, up to the
    order of the floating-point sums."""
    # Both stay in eval mode (no dropout): the ratio must compare the same function at two weights.
    n = len(exp.scores)
    world, me = world_size(), rank()
    phases = [("policy", "value")] if value_model.shared else [("policy",), ("value",)]
    sums: dict[str, float] = {}
    count = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.mini_batch_size):
            mini = order[start:start + cfg.mini_batch_size]
            tokens = exp.batch.mask[mini].sum().clamp(min=1)
            step_stats: dict[str, float] = {}
            for phase in phases:
                step_stats |= _phase(phase, policy, value_model, opt_policy, opt_value, exp, mini, tokens, cfg,
                                     precision, world, me)
            for k, v in step_stats.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
    return {k: v / count for k, v in sums.items()}


def _phase(phase: tuple[str, ...], policy: nn.Module, value_model: ValueModel, opt_policy: torch.optim.Optimizer,
           opt_value: torch.optim.Optimizer, exp: Experience, mini: torch.Tensor, tokens: torch.Tensor,
           cfg: PPOConfig, precision: str, world: int, me: int) -> dict[str, float]:
    """One mini-batch's backward passes for the models ``phase`` names ("policy", "value"), then their
    gradient clipping and steps; returns their statistics (token means over the mini-batch) and grad norms."""
    parts = {"policy": (policy, opt_policy, POLICY_STATS), "value": (value_model, opt_value, VALUE_STATS)}
    models, optimizers = [parts[p][0] for p in phase], [parts[p][1] for p in phase]
    names = tuple(name for p in phase for name in parts[p][2])
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(len(names), dtype=torch.float64)
    for j, m in enumerate(range(0, len(mini), cfg.micro_batch_size)):
        if j % world != me:
            continue
        idx = mini[m:m + cfg.micro_batch_size]
        rows = exp.batch.rows(idx)
        share = rows.mask.sum() / tokens  # token means over the whole mini-batch
        found = {}
        if "policy" in phase:
            logp, entropy = answer_logprobs(policy, rows, precision, with_entropy=True)
            p_loss, p_stats = policy_loss(logp, exp.logp[idx], exp.advantages[idx], rows.mask, cfg.clip)
            (p_loss * share).backward()
            found |= {"policy_loss": p_loss, "entropy": masked_mean(entropy, rows.mask), **p_stats}
        if "value" in phase:
            values = answer_values(value_model, rows, precision)
            v_loss, v_stats = value_loss(values, exp.values[idx], exp.returns[idx], rows.mask, cfg.value_clip)
            (v_loss * share).backward()
            found |= {"value_loss": v_loss, **v_stats}
        stats += torch.tensor([float(found[name].detach()) for name in names], dtype=torch.float64) * float(share)
    if world > 1:
        trained = _unique_parameters(*models)
        for p in trained:  # a process without a micro-batch adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        sum_across([p.grad for p in trained] + [stats])
    out = dict(zip(names, stats.tolist()))
    if "policy" in phase:
        out["policy_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
    if "value" in phase:
        out["value_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(value_model.own().parameters(), cfg.grad_clip))
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite PPO statistics {out}")
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out


def _unique_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``modules``, each once (a value head on the policy's trunk shares it)."""
    seen, out = set(), []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
