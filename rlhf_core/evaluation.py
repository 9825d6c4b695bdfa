"""Win rates of a model against a baseline, with bootstrap confidence intervals (Llama 2 §3.4, Fig. 11-12).

Both models answer the same held-out prompts (a split no training step sees). A **judge** compares the
two answers of each prompt: the simulated gold rater (``gold``, the analog of the paper's human
evaluation) or the reward models (``rm`` = the combined reward; with a Safety RM also ``rm_helpful`` and
``rm_safety``, Fig. 11's two axes). The judge sees the answers in a random order (a seeded coin per
prompt, recorded) and each outcome is mapped back to the model: 1 win, 0.5 tie, 0 loss.

``win_rate`` counts a tie as half a win (ties are also reported on their own); its 95 % CI is a
percentile bootstrap over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .pairwise import PairwiseConfig

Scores = Callable[[pd.DataFrame, list[str]], np.ndarray]  # the scorer signature of rlhf.core.scorers


@dataclass
class EvalConfig:
    """The ``eval`` config group: how the ``evaluate`` step measures an iteration."""

    n_prompts: int = 64  # held-out prompts (the paper's human evaluation used ~4,000)
    split: str = "eval"  # generated prompts: the rater's held-out split (disjoint from every training prompt)
    prompts_path: str | None = None  # a user's held-out prompt file instead (JSONL/Parquet of {"messages"})
    seed: int = 0  # prompt set, sampling, judge order and bootstrap seed
    # gold | rm (rm_helpful, rm_safety follow) | pairwise (a chat model or endpoint that sees both answers)
    judges: list[str] = field(default_factory=lambda: ["gold", "rm"])
    pairwise: PairwiseConfig = field(default_factory=PairwiseConfig)  # the pairwise judge (rlhf_core/pairwise.py)
    n_bootstrap: int = 1000  # bootstrap resamples for the 95 % CI
    tie_eps: float = 1e-6  # a score gap at or below this is a tie (float rounding; the gold judge rarely ties)
    temperature: float = 0.7  # every model answers at this temperature with the same seed (a paired comparison)
    max_new_tokens: int | None = None  # None = sampling.max_new_tokens
    # Fixed reference models every iteration is also compared with: name -> model (a directory, a hub id, a
    # GGUF file, "smollm2"); win rates appear as "<name>/<judge>". "sft" and "previous" are always there.
    references: dict[str, str] = field(default_factory=dict)
    # The paper's system-prompt effect: set, every model also answers each prompt with this system prompt first,
    # and the step reports those win rates beside the ones without (``win_rate_with_system``); null = not run.
    system_prompt: str | None = None


def win_rate_stats(outcomes: Sequence[float], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Win / tie / loss shares, the win rate (ties count half) and its percentile-bootstrap 95 % CI.

    ``outcomes`` ``(n,)``: 1.0 model wins, 0.5 tie, 0.0 loss, one per prompt.
    """
    x = np.asarray(outcomes, dtype=float)
    if x.size == 0:
        raise ValueError("no judgments: the evaluation prompt set is empty")
    if not np.isin(x, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_bootstrap, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"win": float((x == 1).mean()), "tie": float((x == 0.5).mean()), "loss": float((x == 0).mean()),
            "win_rate": float(x.mean()), "ci95": [float(lo), float(hi)], "n": int(x.size)}


def outcome(model_score: np.ndarray, baseline_score: np.ndarray, tie_eps: float) -> np.ndarray:
    """``(n,)`` 1 / 0.5 / 0 for the model from the two ``(n,)`` score arrays."""
    gap = np.asarray(model_score, float) - np.asarray(baseline_score, float)
    return np.where(np.abs(gap) <= tie_eps, 0.5, np.where(gap > 0, 1.0, 0.0))


def presentation_order(n: int, seed: int) -> np.ndarray:
    """``(n,)`` True where the model's answer is shown first (a seeded coin per prompt)."""
    return np.random.default_rng(seed).random(n) < 0.5


def judge(prompts: pd.DataFrame, model_scores: np.ndarray, baseline_scores: np.ndarray, model_answers: Sequence[str],
          baseline_answers: Sequence[str], seed: int, tie_eps: float) -> pd.DataFrame:
    """One judgment per prompt, as the judge saw it: answers ``a``/``b`` in a seeded random order
    (``order``), their scores, and the ``outcome`` for the model.

    The scores come from one scoring pass per answer set (a pointwise judge scores each answer alone, so
    the presented order cannot change a score; it is still drawn and recorded, as a pairwise judge --
    a person, an LLM judge -- needs it)."""
    model_first = presentation_order(len(prompts), seed)
    ms, bs = np.asarray(model_scores, float), np.asarray(baseline_scores, float)
    ma, ba = np.asarray(model_answers, dtype=object), np.asarray(baseline_answers, dtype=object)
    return pd.DataFrame({
        "prompt_id": list(prompts["prompt_id"]), "safety": list(prompts["safety"].astype(bool)),
        "order": np.where(model_first, "model_first", "baseline_first"),
        "answer_a": np.where(model_first, ma, ba), "answer_b": np.where(model_first, ba, ma),
        "score_a": np.where(model_first, ms, bs), "score_b": np.where(model_first, bs, ms),
        "outcome": outcome(ms, bs, tie_eps),
    })


def summarise(judgments: pd.DataFrame, judge_name: str, n_bootstrap: int, seed: int) -> dict:
    """The ``win_rate["<baseline>/<judge>"]`` entry of summary.json from one judge's judgments."""
    stats = win_rate_stats(judgments["outcome"].to_numpy(), n_bootstrap, seed)
    first = judgments["order"] == "model_first"
    # position bias: a judge that favours a position wins the model more often where it shows it there
    when = {f"win_rate_when_{name}": float(judgments["outcome"][part].mean()) if part.any() else None
            for name, part in (("first", first), ("second", ~first))}
    return {"judge": judge_name, **stats, "model_first_share": float(first.mean()), **when}


PROMPT_SETS = ("helpfulness", "safety")  # the paper's two evaluation sets (Fig. 11's axes; Fig. 17)


def summarise_by_prompt_set(judgments: pd.DataFrame, judge_name: str, n_bootstrap: int, seed: int) -> dict:
    """:func:`summarise` on the helpfulness prompts and on the safety (adversarial) prompts apart, as the paper
    reported helpfulness and safety on separate prompt sets; a set without prompts is left out."""
    parts = {"helpfulness": judgments[~judgments["safety"]], "safety": judgments[judgments["safety"]]}
    return {name: summarise(part, judge_name, n_bootstrap, seed) for name, part in parts.items() if len(part)}


def violation_rate(safety: Sequence[bool], answers: Sequence[str]) -> dict | None:
    """The share of the adversarial prompts (``safety`` True) whose answer complies, by the gold rater's refusal
    check (Llama 2 Fig. 17's violation percentage), with its count; None without adversarial prompts."""
    from .rater.gold import is_safe

    unsafe = [not is_safe(answer, True) for flag, answer in zip(safety, answers) if flag]
    return {"rate": float(np.mean(unsafe)), "n": len(unsafe)} if unsafe else None
