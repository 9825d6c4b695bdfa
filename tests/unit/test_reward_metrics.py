"""RM evaluation: accuracy per preference level (Table 8), ties, gap, summaries, table layouts."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf.core.reward.metrics import accuracy_table, gold_metrics, margin_ablation_table, pair_credit, reward_metrics

LEVELS = ["significantly_better", "better", "slightly_better", "negligibly_better"]


def test_pair_credit_counts_ties_as_half():
    assert pair_credit([2.0, 1.0, 0.0], [1.0, 1.0, 3.0]).tolist() == [1.0, 0.5, 0.0]


def test_accuracy_per_level_hand_made():
    levels = ["significantly_better", "significantly_better", "better", "better",
              "slightly_better", "negligibly_better", "negligibly_better", None]
    chosen = torch.tensor([3.0, 2.0, 1.0, 0.0, 1.0, 0.0, 1.0, 5.0])
    rejected = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    m = reward_metrics(chosen, rejected, levels)
    # credits: 1, 1 | 1, 0 | 0.5 (tie) | 0, 0 | 1
    assert m["accuracy/significantly_better"] == 1.0
    assert m["accuracy/better"] == 0.5
    assert m["accuracy/slightly_better"] == 0.5
    assert m["accuracy/negligibly_better"] == 0.0
    assert m["accuracy/unknown"] == 1.0
    assert m["accuracy"] == pytest.approx(4.5 / 8)
    assert (m["n_test"], m["n_ties"], m["n/better"], m["n/unknown"]) == (8, 1, 2, 1)
    # gaps: 3, 1, 1, -1, 0, -1, -1, 1
    assert m["reward_gap"] == pytest.approx(3 / 8)
    assert m["reward_gap/significantly_better"] == 2.0
    assert m["reward_gap/negligibly_better"] == -1.0


def test_empty_level_is_nan_and_no_levels_means_unknown():
    m = reward_metrics([1.0, 0.0], [0.0, 1.0])
    assert math.isnan(m["accuracy/better"]) and m["n/better"] == 0
    assert m["accuracy/unknown"] == 0.5 and m["accuracy"] == 0.5


def test_score_summary():
    m = reward_metrics(np.arange(1.0, 6.0), np.zeros(5))
    assert m["chosen/mean"] == 3.0
    assert m["chosen/std"] == pytest.approx(math.sqrt(2.0))
    assert (m["chosen/q25"], m["chosen/q50"], m["chosen/q75"]) == (2.0, 3.0, 4.0)
    assert m["chosen/q05"] == pytest.approx(1.2) and m["chosen/q95"] == pytest.approx(4.8)
    assert (m["rejected/mean"], m["rejected/std"]) == (0.0, 0.0)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="both be"):
        reward_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one entry per pair"):
        reward_metrics([1.0, 2.0], [0.0, 0.0], ["better"])


def metrics_with(accuracies, avg):
    return {"accuracy": avg, **{f"accuracy/{level}": a for level, a in zip(LEVELS, accuracies)}}


def test_accuracy_table_layout_table8():
    table = accuracy_table({
        "helpfulness": metrics_with([0.807, 0.675, 0.609, 0.547], 0.632),
        "safety": metrics_with([0.5, 0.5, 0.5, 0.5], 0.5),
    })
    assert list(table.columns) == [*LEVELS, "avg"]
    assert list(table.index) == ["helpfulness", "safety"] and table.index.name == "reward model"
    assert table.loc["helpfulness"].tolist() == pytest.approx([80.7, 67.5, 60.9, 54.7, 63.2])
    assert accuracy_table({"h": metrics_with([1, 1, 1, 1], 1)}, percent=False).loc["h", "avg"] == 1.0


def test_margin_ablation_table_layout_table28():
    results = {"large": metrics_with([0.807, 0.675, 0.605, 0.543], 0.629),
               "mine": metrics_with([0.1] * 4, 0.1),
               "none": metrics_with([0.791, 0.669, 0.598, 0.545], 0.625),
               "small": metrics_with([0.804, 0.673, 0.604, 0.550], 0.630)}
    table = margin_ablation_table(results)
    assert list(table.index) == ["none", "small", "large", "mine"] and table.index.name == "margin"
    assert list(table.columns) == [*LEVELS, "avg"]
    assert table.loc["small"].tolist() == pytest.approx([80.4, 67.3, 60.4, 55.0, 63.0])


def test_gold_metrics_by_hand():
    # gold gaps +0.3, -0.1 (the label went against the gold order), 0 (a gold tie), +0.5, and a pair labelled by
    # a person (no gold); RM gaps +1, +1, -1, 0, +1
    pairs = pd.DataFrame({"gold_chosen": [0.8, 0.4, 0.5, 0.9, float("nan")],
                          "gold_rejected": [0.5, 0.5, 0.5, 0.4, float("nan")],
                          "p_agree": [0.8, 0.6, 0.5, 0.9, float("nan")]})
    metrics = gold_metrics([2.0, 1.0, 0.0, 3.0, 1.0], [1.0, 0.0, 1.0, 3.0, 0.0], pairs)
    # ordered pairs 0, 1, 3: agrees, disagrees, an RM tie (half)
    assert metrics == {"label_ceiling": pytest.approx((0.8 + 0.6 + 0.5 + 0.9) / 4),
                       "gold_agreement": pytest.approx(1.5 / 3), "n_gold": 4, "n_gold_ordered": 3}
    assert gold_metrics([1.0], [0.0], pd.DataFrame({"gold_chosen": [1.0]})) == {}  # not the simulated rater's
    assert gold_metrics([1.0], [0.0], pairs.iloc[4:]) == {}  # no pair with gold scores
