"""Reward-model evaluation on held-out pairs: accuracy per preference level (Llama 2 §3.2.2).

Scores are raw RM outputs, ``(b,)`` (torch tensors, numpy arrays or lists), one per pair.
A pair is correct when its chosen answer scores higher than its rejected one; an exact **tie
counts as half correct (0.5)**, so an RM that gives every answer the same score has accuracy
0.5 (chance) rather than 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from rlhf.core.preferences import LEVELS
from rlhf.core.rater.levels import TIE_EPS
from rlhf.core.reward.loss import MARGIN_TABLES

UNKNOWN = "unknown"   # the group of pairs without a level (e.g. Anthropic HH data)
GROUPS = (*LEVELS, UNKNOWN)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TABLE_COLUMNS = (*LEVELS, "avg")


def pair_credit(chosen_scores: Any, rejected_scores: Any) -> np.ndarray:
    """``(b,)`` credit per pair: 1 if chosen > rejected, 0.5 on a tie, 0 otherwise."""
    chosen, rejected = _as_scores(chosen_scores, rejected_scores)
    return np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))


def reward_metrics(chosen_scores: Any, rejected_scores: Any,
                   levels: Sequence[str | None] | None = None) -> dict[str, float]:
    """Flat metrics dict for one RM on one test set (ready for an MLflow ``log_metrics``).

    Keys:
        ``accuracy``                    over all pairs (the paper's "Avg" column)
        ``accuracy/<group>``            per level in :data:`GROUPS` (NaN when it has no pairs)
        ``ci95_lo``, ``ci95_hi``, ``ci95_lo/<group>``, ``ci95_hi/<group>``  the accuracy's 95 % Wilson
                                        interval (:func:`wilson_interval`; NaN without pairs)
        ``reward_gap``, ``reward_gap/<group>``  mean of ``chosen - rejected``
        ``n_test``, ``n/<group>``       pair counts
        ``n_ties``                      pairs scored exactly equal
        ``chosen/mean``, ``chosen/std``, ``chosen/q05`` .. ``chosen/q95``, same for ``rejected``
    ``levels`` is ``(b,)``; None, NaN or a name outside :data:`LEVELS` counts as ``unknown``.
    Without ``levels`` every pair is ``unknown``.
    """
    chosen, rejected = _as_scores(chosen_scores, rejected_scores)
    groups = _groups(levels, len(chosen))
    credit = pair_credit(chosen, rejected)
    gap = chosen - rejected
    metrics = {"accuracy": _mean(credit), "reward_gap": _mean(gap),
               "n_test": len(chosen), "n_ties": int((chosen == rejected).sum())}
    metrics["ci95_lo"], metrics["ci95_hi"] = wilson_interval(credit)
    for group in GROUPS:
        in_group = groups == group
        metrics[f"accuracy/{group}"] = _mean(credit[in_group])
        metrics[f"ci95_lo/{group}"], metrics[f"ci95_hi/{group}"] = wilson_interval(credit[in_group])
        metrics[f"reward_gap/{group}"] = _mean(gap[in_group])
        metrics[f"n/{group}"] = int(in_group.sum())
    metrics |= _summary("chosen", chosen) | _summary("rejected", rejected)
    return metrics


GOLD_COLUMNS = ("gold_chosen", "gold_rejected", "p_agree")
"""What the simulated rater knows of a labelled pair beyond its label (``rlhf.core.annotators``)."""


def gold_metrics(chosen_scores: Any, rejected_scores: Any, pairs: pd.DataFrame) -> dict[str, float]:
    """How an RM's held-out accuracy compares with what its labels allow, for pairs the simulated rater
    labelled (``pairs`` with the columns of :data:`GOLD_COLUMNS`, on the RM's axis); ``{}`` without them.

    Keys:
        ``label_ceiling``   mean ``p_agree``: the accuracy on these labels of an RM that orders every pair
                            as the gold judge does (the rater's noise caps it below 1)
        ``gold_agreement``  the share of pairs with a gold order (no gold tie) that the RM orders the same
                            way (an RM tie counts half): what the RM learnt, free of the labels' noise
        ``n_gold``          pairs with gold scores; ``n_gold_ordered`` those without a gold tie

    Pairs without gold scores (labelled by people, mixed in) are left out of these keys' counts.
    """
    if not all(column in pairs.columns for column in GOLD_COLUMNS):
        return {}
    chosen, rejected = _as_scores(chosen_scores, rejected_scores)
    gold = pairs[list(GOLD_COLUMNS)].to_numpy(dtype=np.float64)
    known = ~np.isnan(gold).any(axis=1)
    if not known.any():
        return {}
    gold_gap = gold[known, 0] - gold[known, 1]
    ordered = np.abs(gold_gap) >= TIE_EPS
    rm_gap = (chosen - rejected)[known][ordered]
    agrees = np.where(rm_gap == 0, 0.5, (np.sign(rm_gap) == np.sign(gold_gap[ordered])).astype(float))
    return {"label_ceiling": _mean(gold[known, 2]), "gold_agreement": _mean(agrees),
            "n_gold": int(known.sum()), "n_gold_ordered": int(ordered.sum())}


def wilson_interval(credit: np.ndarray, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy from ``(n,)`` per-pair credit (a tie's 0.5 counts as
    half a success): with ``p`` the mean and ``n`` the count,
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Unlike ``p -+ z sqrt(p(1-p)/n)`` it stays
    inside [0, 1] and is not empty at p = 0 or 1, which small per-level counts reach. ``(nan, nan)`` without
    pairs."""
    n = len(credit)
    if not n:
        return float("nan"), float("nan")
    p = float(np.mean(credit))
    center, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (center - spread) / (1 + z * z / n), (center + spread) / (1 + z * z / n)


def accuracy_table(results: Mapping[str, Mapping[str, float]], *, index_name: str = "reward model",
                   percent: bool = True) -> pd.DataFrame:
    """Table 8 layout: one row per RM (``results`` maps a name to its :func:`reward_metrics`),
    columns the four levels strongest first, then ``avg``.

    ``avg`` is the accuracy over all pairs, as in the paper (whose Avg, e.g. 63.2 for
    80.7/67.5/60.9/54.7, is pulled towards the most frequent, hardest levels), not the mean of the
    four columns. Accuracies are in percent unless ``percent=False``; a missing value is NaN.
    """
    scale = 100.0 if percent else 1.0
    rows = {name: [scale * metrics.get(f"accuracy/{level}", np.nan) for level in LEVELS]
            + [scale * metrics.get("accuracy", np.nan)] for name, metrics in results.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(TABLE_COLUMNS), dtype=float)
    table.index.name = index_name
    return table


def margin_ablation_table(results: Mapping[str, Mapping[str, float]], *, percent: bool = True) -> pd.DataFrame:
    """Table 28 layout: one row per margin variant (``results`` maps ``none``/``small``/``large``
    or a custom name to the RM's :func:`reward_metrics`), same columns as :func:`accuracy_table`.

    Rows come in the order none, small, large, then any other variants in the given order.
    """
    order = [name for name in MARGIN_TABLES if name in results]
    order += [name for name in results if name not in MARGIN_TABLES]
    return accuracy_table({name: results[name] for name in order}, index_name="margin", percent=percent)


def _as_scores(chosen_scores: Any, rejected_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    chosen, rejected = _to_numpy(chosen_scores), _to_numpy(rejected_scores)
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected scores must both be (b,), got {chosen.shape} and {rejected.shape}")
    return chosen, rejected


def _to_numpy(scores: Any) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().to("cpu", torch.float64).numpy()
    return np.asarray(scores, dtype=np.float64)


def _groups(levels: Sequence[str | None] | None, b: int) -> np.ndarray:
    if levels is None:
        return np.full(b, UNKNOWN, dtype=object)
    if len(levels) != b:
        raise ValueError(f"levels must have one entry per pair ({b}), got {len(levels)}")
    # isinstance first: `pd.NA in LEVELS` would raise instead of being False
    return np.array([level if isinstance(level, str) and level in LEVELS else UNKNOWN for level in levels],
                    dtype=object)


def _mean(x: np.ndarray) -> float:
    # An empty group has no accuracy: NaN, not a warning and not a misleading 0.
    return float(x.mean()) if len(x) else float("nan")


def _summary(prefix: str, scores: np.ndarray) -> dict[str, float]:
    if not len(scores):
        stats = [np.nan] * (2 + len(QUANTILES))
    else:
        stats = [scores.mean(), scores.std(), *np.quantile(scores, QUANTILES)]
    names = ["mean", "std", *(f"q{round(100 * q):02d}" for q in QUANTILES)]
    return {f"{prefix}/{name}": float(value) for name, value in zip(names, stats)}
