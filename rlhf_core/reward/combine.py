"""Combining the Helpfulness and Safety RMs into PPO's reward (Llama 2 §3.2.3, "PPO").

The paper: ``Rc = Rs if is_safety(p) or Rs < 0.15 else Rh``, then ``R~c = WHITEN(LOGIT(Rc))``.

Its 0.15 is a threshold on the sigmoid-probability scale, but our RMs output raw logits, so the
rule reads ``sigmoid(Rs) < 0.15``. LOGIT is there to undo that sigmoid; our scores are already
logits (``logit(sigmoid(r)) = r``), so it is the identity here and is deliberately not applied:
applying it to logits would be a second, wrong transform. WHITEN depends on the batch, so the PPO loop
applies :func:`whiten` to each rollout batch's ``Rc`` itself.

Shapes: ``b`` = generations in the batch, one score per generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SAFETY_THRESHOLD = 0.15


def combined_reward(helpful: torch.Tensor, safety: torch.Tensor | None = None,
                    unsafe_tag: torch.Tensor | Sequence[bool | None] | None = None,
                    threshold: float = SAFETY_THRESHOLD) -> torch.Tensor:
    """``(b,)`` ``Rc``: the Safety RM's logit where the prompt is tagged unsafe or
    ``sigmoid(Rs) < threshold``, else the Helpfulness RM's logit.

    Args:
        helpful: ``(b,)`` Helpfulness RM logits ``Rh``.
        safety: ``(b,)`` Safety RM logits ``Rs``, or None when only one RM is configured; then the
            combination is ``helpful`` itself and ``unsafe_tag`` has nothing to switch to.
        unsafe_tag: ``(b,)`` True where the prompt is an unsafe request; None (or a None entry)
            means untagged.
        threshold: on the probability scale, in (0, 1). The test is strict: at exactly
            ``sigmoid(Rs) == threshold`` the helpfulness score is used.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is a probability and must be in (0, 1), got {threshold}")
    _check_1d("helpful", helpful, helpful)
    if safety is None:
        return helpful
    _check_1d("safety", safety, helpful)
    # sigmoid is increasing, so sigmoid(Rs) < t  <=>  Rs < logit(t); comparing logits keeps the
    # boundary exact (sigmoid of a float32 logit(0.15) may land either side of 0.15).
    low_safety = safety < math.log(threshold / (1.0 - threshold))
    use_safety = low_safety | _tags(unsafe_tag, helpful)
    return torch.where(use_safety, safety, helpful)


def whiten(x: torch.Tensor, eps: float = 1e-8, shift_mean: bool = True) -> torch.Tensor:
    """Standardise ``(b,)`` scores over the batch: ``(x - mean) / sqrt(var + eps)``.

    ``var`` is the population variance, so the result has std exactly 1 (up to ``eps``) and a
    batch of one maps to 0 instead of NaN. With ``shift_mean=False`` the mean is added back:
    the scale is normalised but the sign of the average reward is kept.
    """
    _check_1d("x", x, x)
    mean, var = x.mean(), x.var(unbiased=False)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def _tags(unsafe_tag: torch.Tensor | Sequence[bool | None] | None, like: torch.Tensor) -> torch.Tensor:
    """``(b,)`` bool tensor; None means nothing is tagged."""
    if unsafe_tag is None:
        return torch.zeros_like(like, dtype=torch.bool)
    if not isinstance(unsafe_tag, torch.Tensor):
        unsafe_tag = torch.tensor([_is_tagged(tag) for tag in unsafe_tag], dtype=torch.bool)
    _check_1d("unsafe_tag", unsafe_tag, like)
    return unsafe_tag.to(device=like.device, dtype=torch.bool)


def _is_tagged(tag: bool | float | None) -> bool:
    # A DataFrame's safety column holds None or NaN for untagged prompts; bool(nan) would be True.
    return tag is not None and not (isinstance(tag, float) and math.isnan(tag)) and bool(tag)


def _check_1d(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    if x.dim() != 1 or x.shape != like.shape:
        raise ValueError(f"{name} must be (b,) = {tuple(like.shape)}, got {tuple(x.shape)}")
