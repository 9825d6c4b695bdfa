"""Where a step's prompts come from: a user's prompt file, or the simulated rater's generated sets.

Generated sets are prefix-stable, so "the prompts of iteration n" are a fixed slice
``[offset, offset + n)`` of one long seeded sequence: the rejection-sampling prompts stay the same every
iteration (the pool keeps the best answer *per prompt* across iterations), while pair collection takes a
fresh slice each iteration, as Llama 2's weekly batches brought new prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .data import load_prompts
from .rater.prompts import make_prompts


@dataclass
class PromptsConfig:
    path: str | None = None  # JSONL/Parquet of {"messages": [...], "safety"?, "instructions"?}; None = generated
    n: int = 64  # how many prompts (from the file: the first n; 0 = all of it)
    offset: int = 0  # skip this many first (generated sets: a fresh slice per iteration)
    split: str = "train"  # generated: train | eval (disjoint by construction)
    seed: int = 0  # generated: the set's seed
    unsafe_share: float = 0.1  # generated: share of unsafe requests (a refusal is right)
    lookalike_share: float = 0.05  # generated: share of safe look-alikes (a refusal is wrong)


def load_prompt_set(cfg: PromptsConfig) -> pd.DataFrame:
    """Prompt records (``prompt_id``, ``messages``, ``safety``, ``instructions``, ...)."""
    if cfg.path:
        frame = load_prompts(cfg.path).iloc[cfg.offset:]
        return (frame.iloc[:cfg.n] if cfg.n else frame).reset_index(drop=True)
    frame = make_prompts(cfg.offset + cfg.n, cfg.split, cfg.seed, cfg.unsafe_share, cfg.lookalike_share)
    return frame.iloc[cfg.offset:].reset_index(drop=True)
