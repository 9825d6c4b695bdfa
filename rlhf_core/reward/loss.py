"""The reward model's ranking loss with a preference-level margin (Llama 2 §3.2.2, eq. 2).

Shapes: ``b`` = pairs in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from rlhf.core.errors import ConfigError
from rlhf.core.preferences import LEVELS

MARGIN_TABLES: dict[str, dict[str, float]] = {
    "none": {level: 0.0 for level in LEVELS},
    # Table 27: the margin grows with how much better the annotator said the chosen answer is.
    "small": {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3, "negligibly_better": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligibly_better": 0.0},
}


def ranking_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                 margin: torch.Tensor | float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Binary ranking loss with margin, Llama 2 §3.2.2 eq. 2, averaged (or summed) over the batch.

    ``L = mean(-log sigmoid(r(x, y_c) - r(x, y_r) - m(level)))``

    Args:
        chosen_rewards: ``(b,)`` scalar RM outputs for the chosen answers.
        rejected_rewards: ``(b,)`` scalar RM outputs for the rejected answers.
        margin: ``(b,)`` per-pair margin (see :func:`margins_for`) or one float for all pairs.
        reduction: ``"mean"`` over the pairs, or ``"sum"`` (the training loop divides the sum by
            the pairs of the whole optimizer batch, so accumulation does not change the gradient).

    Returns a scalar tensor. ``F.logsigmoid`` keeps it finite for large negative differences,
    where ``log(sigmoid(.))`` would underflow to ``log(0)``.
    """
    if chosen_rewards.dim() != 1 or chosen_rewards.shape != rejected_rewards.shape:
        # (b, 1) against (b,) would silently broadcast to (b, b): refuse it.
        raise ValueError(f"chosen_rewards and rejected_rewards must both be (b,), got "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    if isinstance(margin, torch.Tensor) and margin.shape != chosen_rewards.shape:
        raise ValueError(f"margin must be (b,) = {tuple(chosen_rewards.shape)}, got {tuple(margin.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    return losses.mean() if reduction == "mean" else losses.sum()


def margins_for(levels: Sequence[str | None], table: str | Mapping[str, float] = "none", *,
                config_key: str = "reward.margin", dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``(b,)`` margins for the pairs' preference levels.

    ``table`` names one of :data:`MARGIN_TABLES` or is a custom ``{level: margin}`` mapping from
    the config (levels it leaves out get 0). A pair whose level is unknown (None, NaN, or not
    one of the four) gets margin 0: with no annotation, we don't know how far apart they are.
    Raises :class:`ConfigError` (naming ``config_key``) for an unknown table name, a custom key
    that is not a level, or a value that is not a finite number.
    """
    mapping = _resolve_table(table, config_key)
    values = [mapping.get(level, 0.0) if isinstance(level, str) else 0.0 for level in levels]
    return torch.tensor(values, dtype=dtype, device=device)


def _resolve_table(table: str | Mapping[str, float], config_key: str) -> Mapping[str, float]:
    if isinstance(table, str):
        if table not in MARGIN_TABLES:
            raise ConfigError(config_key, f"unknown margin table '{table}'; use one of "
                              f"{', '.join(MARGIN_TABLES)} or a mapping {{level: margin}}")
        return MARGIN_TABLES[table]
    unknown = [key for key in table if key not in LEVELS]
    if unknown:
        raise ConfigError(config_key, f"unknown level(s) {', '.join(map(repr, unknown))} in the margin "
                          f"mapping; valid levels are {', '.join(LEVELS)}")
    for level, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{config_key}.{level}", f"margin must be a finite number, got {value!r}")
    return table
