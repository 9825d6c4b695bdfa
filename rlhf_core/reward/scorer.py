"""What rejection sampling and PPO call: one or two trained RMs behind a single scoring function.

With the Helpfulness and the Safety RM, the reward is Llama 2's combination (Llama 2 §3.2.3;
docs/recipe.md#combined-reward):
the Safety RM's score where the prompt is tagged unsafe or the Safety RM is unsure the answer is safe
(``sigmoid(Rs) < 0.15``), the Helpfulness RM's elsewhere. With one RM configured, the combination is
that RM's score. See ``combine.py`` for why no LOGIT is applied. The scores are raw: whitening depends
on the batch, so PPO whitens its own rollout batch (``ppo_loop.py``) and best-of-K compares raw scores.

Example::

    scorer = RewardScorer.load("runs/c/iter-1/rm-helpful", "runs/c/iter-1/rm-safety")
    out = scorer(prompts, answers, unsafe_tags)   # prompts: lists of chat messages
    out["combined"]                               # (n,)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..chat import Message
from .combine import SAFETY_THRESHOLD, combined_reward
from .model import RewardModel, load_reward_model, score


class RewardScorer:
    """Scores answers with a Helpfulness RM and, optionally, a Safety RM (each with its tokenizer)."""

    def __init__(self, helpful: tuple[RewardModel, object], safety: tuple[RewardModel, object] | None = None,
                 batch_size: int = 16, precision: str = "auto", threshold: float = SAFETY_THRESHOLD):
        self.helpful, self.safety = helpful, safety
        self.batch_size, self.precision, self.threshold = batch_size, precision, threshold

    @classmethod
    def load(cls, helpful_dir: str | Path, safety_dir: str | Path | None = None, **kwargs) -> "RewardScorer":
        """From RM directories written by ``rlhf rm train`` (``safety_dir`` None: one RM)."""
        return cls(load_reward_model(helpful_dir), load_reward_model(safety_dir) if safety_dir else None, **kwargs)

    def _score(self, rm_and_tokenizer, prompts, answers) -> torch.Tensor:
        rm, tokenizer = rm_and_tokenizer
        return score(rm, tokenizer, prompts, answers, self.batch_size, self.precision)

    def __call__(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str],
                 unsafe_tags: Sequence[bool | None] | torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """``helpful`` ``(n,)``, ``safety`` ``(n,)`` or None, and ``combined`` ``(n,)`` (Rc, raw)."""
        helpful = self._score(self.helpful, prompts, answers)
        safety = self._score(self.safety, prompts, answers) if self.safety is not None else None
        return {"helpful": helpful, "safety": safety,
                "combined": combined_reward(helpful, safety, unsafe_tags, self.threshold)}
