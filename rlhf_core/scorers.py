"""Scorers for rejection sampling and evaluation: ``scorer(prompts: DataFrame, answers) -> np.ndarray``.

``prompts`` has one row per answer with at least ``messages`` and ``safety`` (and ``instructions`` for the
gold rater). Two kinds:

- ``rm``: the trained reward models through :class:`~rlhf.core.reward.scorer.RewardScorer`; the score is
  the combined reward Rc (raw, not whitened: whitening depends on the batch, and best-of-K compares
  answers of one prompt, which Rc already orders);
- ``gold``: the simulated rater's gold score, the "true" reward of the demo world. Rejection sampling
  normally uses the RMs; the gold scorer measures how far the RMs are from the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError
from .rater.gold import gold_score, last_user_message


@dataclass
class ScorerConfig:
    kind: str = "rm"  # rm (the trained reward models) | gold (the simulated rater's rubric)
    helpful: str | None = None  # rm: the helpfulness RM directory
    safety: str | None = None  # rm: the safety RM directory (None: helpfulness only)
    batch_size: int = 16  # rm: answers per scoring forward pass


def gold_scorer(prompts: pd.DataFrame, answers: list[str]) -> np.ndarray:
    """Each answer's gold score against its prompt row (the last user message is the question)."""
    instructions = prompts["instructions"] if "instructions" in prompts else ["[]"] * len(answers)
    return np.array([gold_score(answer, ins, bool(safe), last_user_message(messages))
                     for answer, ins, safe, messages in zip(answers, instructions, prompts["safety"],
                                                             prompts["messages"])], dtype=float)


def rm_scorer(reward_scorer):
    """Adapt a ``RewardScorer`` (one or two RMs) to the scorer signature."""

    def score(prompts: pd.DataFrame, answers: list[str]) -> np.ndarray:
        out = reward_scorer(list(prompts["messages"]), list(answers), list(prompts["safety"]))
        return out["combined"].float().cpu().numpy()

    return score


def make_scorer(cfg: ScorerConfig, precision: str = "auto"):
    if cfg.kind == "gold":
        return gold_scorer
    if cfg.kind == "rm":
        if not cfg.helpful:
            raise ConfigError("scorer.helpful", "the rm scorer needs a helpfulness RM directory "
                                                "(from `rlhf rm train`), or use scorer.kind=gold")
        from .reward.scorer import RewardScorer

        return rm_scorer(RewardScorer.load(cfg.helpful, cfg.safety, batch_size=cfg.batch_size, precision=precision))
    raise ConfigError("scorer.kind", f"unknown scorer {cfg.kind!r}; use rm or gold")
