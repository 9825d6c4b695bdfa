"""Rejection sampling (Llama 2 §3.2.3): temperature search, best-of-K, the all-iterations pool.

- **Temperature search** (Fig. 8): the best temperature moves as RLHF proceeds, so every iteration samples
  K answers per probe prompt at each temperature of a grid and keeps the one with the highest mean
  max-of-K reward.
- **Best-of-K**: K answers per prompt at that temperature, scored by the reward scorer; the best is the
  new fine-tuning target.
- **The pool**: from V3 on the paper picks the best answer among the samples of *all* iterations so far
  ("keeping only the latest samples caused regressions"). Every iteration's candidates are kept, and the
  pool is rebuilt each iteration by **re-scoring every candidate, old and new, with the current reward
  scorer**: the RM changes between iterations, and a score from last week's RM is not comparable to one
  from this week's.
- **Best-of-K gain** (Fig. 7): expected max-of-k minus the median, for k = 1..K, from samples already drawn.

A *scorer* is ``scorer(prompts: DataFrame, answers: list[str]) -> np.ndarray`` with one row of
``prompts`` per answer (columns ``messages``, ``safety`` and, for the gold rater, ``instructions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import comb
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError
from .progress import progress
from .sampling import SamplingBackend, SamplingConfig, n_batches
from .shards import WHOLE, Shard

Scorer = Callable[[pd.DataFrame, list], np.ndarray]


@dataclass
class RejectionConfig:
    k: int = 4  # samples per prompt (the paper's curves go to 100)
    temperatures: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4])  # search grid
    probe_prompts: int = 16  # prompts used by the temperature search
    probe_k: int | None = None  # samples per probe prompt; None = k
    n_prompts: int = 64  # prompts sampled for the pool each iteration (the same prompts every iteration)
    # From this iteration on the pool keeps the best answer among the candidates of *all* iterations so far;
    # before it, among the latest iteration's only (Llama 2 §3.2.3: the latest round's only up to RLHF-V2,
    # all rounds from RLHF-V3). 1: all iterations from V1.
    pool_from: int = 1
    # Distillation: a (smaller) model also fine-tuned on every iteration's pool, from its previous iteration's
    # weights, and judged against the SFT model and the teacher; the policy stays the teacher. In `rlhf rs`
    # (one step, no campaign) the student is fine-tuned instead of the model.
    student: str | None = None


def sample_and_score(backend: SamplingBackend, prompts: pd.DataFrame, k: int, cfg: SamplingConfig,
                     scorer: Scorer, batches: Sequence[int] | None = None) -> pd.DataFrame:
    """K samples per prompt with their scores; one row per sample, with the prompt's columns joined. With
    ``batches``, only those batches of the call (``rlhf.core.shards``)."""
    samples = backend.sample(list(prompts.messages), k, cfg, batches=batches)
    joined = prompts.reset_index(drop=True).iloc[samples.prompt_index.astype(int)].reset_index(drop=True)
    samples = pd.concat([joined, samples.reset_index(drop=True)], axis=1)
    samples["temperature"] = cfg.temperature
    samples["score"] = score_by_batch(samples, scorer)
    return samples


def score_by_batch(rows: pd.DataFrame, scorer: Scorer) -> np.ndarray:
    """Scores of ``rows``, each sampling batch's rows (column ``batch``) scored as one group: a row's score
    then does not depend on which other batches share the call, so a sharded step scores exactly as the
    whole one (the RM pads each of its batches to its longest answer, and padding moves the last bits)."""
    scores = np.zeros(len(rows), dtype=float)
    for index in rows.groupby("batch", sort=True).indices.values():
        part = rows.iloc[index]
        scores[index] = np.asarray(scorer(part, list(part.text)), dtype=float)
    return scores


def in_order(rows: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Rows computed in pieces (batches, shards) as the one frame the whole computation gives: concatenated
    and sorted by ``keys``."""
    rows = [frame for frame in rows if len(frame)]
    if not rows:
        raise ValueError("no rows: every shard came back empty")
    return pd.concat(rows, ignore_index=True).sort_values(keys, kind="stable").reset_index(drop=True)


def max_of_k_stats(samples: pd.DataFrame) -> dict:
    """Mean over prompts of the max and of the median of each prompt's sample scores."""
    per_prompt = samples.groupby("prompt_index").score
    return {"mean_max": float(per_prompt.max().mean()), "mean_median": float(per_prompt.median().mean())}


def search_samples(backend: SamplingBackend, prompts: pd.DataFrame, temperatures: Sequence[float], k: int,
                   cfg: SamplingConfig, scorer: Scorer, shard: Shard = WHOLE) -> pd.DataFrame:
    """The temperature search's scored samples: K per prompt at each temperature, or this shard's share (its
    units are the (temperature, batch) pairs)."""
    if not temperatures:
        raise ConfigError("rejection.temperatures", "give at least one temperature")
    grid = sorted(set(temperatures))
    mine = shard.take([(t, b) for t in grid for b in range(n_batches(len(prompts), cfg))])
    drawn = []
    size = {b: min(cfg.batch_prompts, len(prompts) - b * cfg.batch_prompts) for _, b in mine}  # prompts per batch
    # One bar over the shard's prompts x temperatures; each temperature's sampling and scoring bars show
    # below it meanwhile.
    with progress(sum(size[b] for _, b in mine), "temperature search", "prompt") as bar:
        for temperature in grid:
            batches = [b for t, b in mine if t == temperature]
            if batches:
                drawn.append(sample_and_score(backend, prompts, k, _with(cfg, temperature=temperature), scorer,
                                              batches))
                bar.set_postfix(T=temperature, refresh=False)
                bar.update(sum(size[b] for b in batches))
    return in_order(drawn, SEARCH_ORDER) if drawn else pd.DataFrame()


SEARCH_ORDER = ["temperature", "prompt_index", "sample_index"]
CANDIDATE_ORDER = ["prompt_index", "sample_index"]


def temperature_curve(samples: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """``(best_temperature, curve)`` from the search's samples. ``curve`` has one row per temperature:
    ``temperature``, ``mean_max`` (mean max-of-K reward, the criterion), ``mean_median``. Ties go to the
    lower temperature (less diversity for the same reward)."""
    curve = pd.DataFrame([{"temperature": float(t), **max_of_k_stats(group)}
                          for t, group in samples.groupby("temperature", sort=True)])
    return float(curve.temperature[curve.mean_max.idxmax()]), curve


def search_temperature(backend: SamplingBackend, prompts: pd.DataFrame, temperatures: Sequence[float], k: int,
                       cfg: SamplingConfig, scorer: Scorer) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """Sample at each temperature; returns ``(best_temperature, curve, samples)`` (:func:`temperature_curve`)."""
    samples = search_samples(backend, prompts, temperatures, k, cfg, scorer)
    return (*temperature_curve(samples), samples)


def _with(cfg: SamplingConfig, **changes) -> SamplingConfig:
    return replace(cfg, **changes)


def best_of_k(samples: pd.DataFrame, key: str = "prompt_id") -> pd.DataFrame:
    """The highest-scoring sample of each prompt (first one on ties), one row per prompt."""
    order = samples.sort_values([key, "score"], ascending=[True, False], kind="stable")
    return order.drop_duplicates(key, keep="first").reset_index(drop=True)


def build_pool(candidates: pd.DataFrame, scorer: Scorer, scored_iteration: int | None = None) -> pd.DataFrame:
    """Re-score every candidate of every iteration with the current scorer; keep the best per prompt.

    ``candidates`` holds all samples so far with their ``iteration``; the returned pool has one row per
    ``prompt_id`` with ``text``, ``score`` (current scorer) and the ``iteration`` that produced it. Rows of
    ``scored_iteration`` were just scored by this same scorer and keep their scores (no second pass).
    """
    rescored = candidates.reset_index(drop=True).copy()
    stale = (rescored.iteration != scored_iteration).to_numpy() if scored_iteration is not None \
        else np.ones(len(rescored), dtype=bool)
    if stale.any():
        old = rescored[stale]
        with progress(len(old), "re-score pool", "answer") as bar:  # a label for the RM's scoring bar below it
            rescored.loc[stale, "score"] = np.asarray(scorer(old, list(old.text)), dtype=float)
            bar.update(len(old))
    return best_of_k(rescored)


def expected_max_of_k(scores: Sequence[float], k: int) -> float:
    """E[max of k samples drawn without replacement from ``scores``], exactly, by order statistics:
    the i-th smallest of n is the max of a k-subset in C(i-1, k-1) of the C(n, k) subsets."""
    values = np.sort(np.asarray(scores, dtype=float))
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of samples {n}")
    weights = np.array([comb(i, k - 1) for i in range(n)], dtype=float) / comb(n, k)
    return float(weights @ values)


def best_of_k_gain(samples: pd.DataFrame, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """The paper's Fig. 7: mean over prompts of E[max of k] and of the median, and their gap, per k."""
    groups = [g.score.to_numpy() for _, g in samples.groupby("prompt_index")]
    n = min(len(g) for g in groups)
    ks = ks or [k for k in (1, 2, 4, 8, 16, 32, 64, 100) if k <= n]
    rows = []
    for k in ks:
        max_k = np.mean([expected_max_of_k(g, k) for g in groups])
        median = np.mean([np.median(g) for g in groups])
        rows.append({"k": k, "mean_max": float(max_k), "mean_median": float(median),
                     "gain": float(max_k - median)})
    return pd.DataFrame(rows)


def pool_conversations(pool: pd.DataFrame) -> tuple[list[dict], int]:
    """The pool as SFT conversations: the prompt's messages + the best answer (Llama 2: "fine-tune on
    the best answers exactly like SFT"). Returns ``(conversations, n_empty)``: a prompt whose best answer
    is empty has nothing to teach and is left out, and counted for the step's log."""
    conversations = [{"messages": list(row.messages) + [{"role": "assistant", "content": row.text}]}
                     for row in pool.itertuples() if row.text.strip()]
    return conversations, len(pool) - len(conversations)


def pair_answers(backend: SamplingBackend, prompts: pd.DataFrame, temperatures: tuple[float, float],
                 cfg: SamplingConfig, shard: Shard = WHOLE,
                 second_backend: SamplingBackend | None = None) -> pd.DataFrame:
    """The answers of :func:`collect_pairs`, or this shard's share (its units are the (side, batch) pairs):
    rows ``side`` (0: answer a, 1: answer b), ``prompt_index``, ``text``."""
    mine = shard.take([(side, b) for side in (0, 1) for b in range(n_batches(len(prompts), cfg))])
    sides = ((backend, _with(cfg, temperature=temperatures[0])),
             (second_backend or backend, _with(cfg, temperature=temperatures[1], seed=cfg.seed + 1)))
    drawn = []
    for side, (model, side_cfg) in enumerate(sides):
        batches = [b for s, b in mine if s == side]
        if batches:
            rows = model.sample(list(prompts.messages), 1, side_cfg, batches=batches)
            drawn.append(rows[["prompt_index", "text"]].assign(side=side))
    return in_order(drawn, ["side", "prompt_index"]) if drawn else pd.DataFrame(columns=["prompt_index", "text",
                                                                                          "side"])


VARIANTS = ("policy", "policy")  # collect.variants' default: both answers from the current policy


def pair_frame(prompts: pd.DataFrame, answers: pd.DataFrame, temperatures: tuple[float, float], iteration: int,
               source: str = "policy", variants: Sequence[str] = VARIANTS) -> pd.DataFrame:
    """The pairs to annotate, from every prompt's two answers (:func:`pair_answers`, merged). ``variants``
    name the model each side was sampled from (``variant_a``, ``variant_b``: ``collect.variants``)."""
    frame = prompts.reset_index(drop=True)
    text = {side: dict(zip(rows.prompt_index.astype(int), rows.text)) for side, rows in answers.groupby("side")}
    missing = [i for i in range(len(frame)) if any(i not in text.get(side, {}) for side in (0, 1))]
    if missing:
        raise ValueError(f"collect_pairs: no answer for prompts {missing[:5]} (a shard's rows are missing)")
    return pd.DataFrame({
        "pair_id": [f"it{iteration}-{pid}" for pid in frame.prompt_id],
        "prompt_id": frame.prompt_id, "prompt": frame.messages,
        "response_a": [text[0][i] for i in range(len(frame))], "response_b": [text[1][i] for i in range(len(frame))],
        "instructions": frame.instructions if "instructions" in frame else "[]",
        "safety": frame.safety.astype(bool) if "safety" in frame else False,
        "source": source, "iteration": iteration,
        "temperature_a": temperatures[0], "temperature_b": temperatures[1],
        "variant_a": variants[0], "variant_b": variants[1],
    })


def collect_pairs(backend: SamplingBackend, prompts: pd.DataFrame, temperatures: tuple[float, float],
                  cfg: SamplingConfig, iteration: int, source: str = "policy",
                  second_backend: SamplingBackend | None = None, variants: Sequence[str] = VARIANTS) -> pd.DataFrame:
    """Two answers per prompt for annotation, drawn at two temperatures (and, when ``second_backend``
    is given, from a second model variant, as the paper does) so the pair differs enough to compare;
    ``variants`` name the two sides' models in the pairs."""
    answers = pair_answers(backend, prompts, temperatures, cfg, WHOLE, second_backend)
    return pair_frame(prompts, answers, temperatures, iteration, source, variants)
