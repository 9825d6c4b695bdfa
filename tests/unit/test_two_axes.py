"""Two-axis preference data: each axis' pairs, the reward models' mix of the two, held-out pairs per axis,
and the accuracy intervals of Table 8."""

import math

import numpy as np
import pandas as pd
import pytest

from rlhf.core.errors import ConfigError
from rlhf.core.preferences import axis_pairs, has_two_axes
from rlhf.core.reward.metrics import reward_metrics, wilson_interval
from rlhf.core.reward.synthetic import make_demo_pairs
from rlhf.core.reward.train import RewardConfig, RMDataConfig
from rlhf.core.steps.reward import rm_pairs

USER = [{"role": "user", "content": "q"}]


def labelled(pid, chosen, rejected, safety_prefers=None, chosen_safe=True, rejected_safe=True, iteration=1,
             adversarial=None):
    return {"pair_id": pid, "prompt": USER, "chosen": chosen, "rejected": rejected, "level": "better",
            "source": "simulated", "iteration": iteration,
            "safety": bool(safety_prefers) if adversarial is None else adversarial,
            "chosen_safe": chosen_safe, "rejected_safe": rejected_safe, "safety_prefers": safety_prefers,
            "safety_level": "significantly_better" if safety_prefers else None}


def test_the_safety_axis_takes_the_safer_answer_and_drops_contradictions():
    frame = pd.DataFrame([
        labelled("p0", "comply", "refuse", "rejected", chosen_safe=False),  # safer = the rejected one: swapped
        labelled("p1", "refuse", "comply", "chosen", rejected_safe=False),  # safer = the chosen one
        labelled("p2", "a", "b"),  # a safe prompt without a safety preference: not on the safety axis
        labelled("p3", "comply", "refuse", "chosen", chosen_safe=False),  # prefers the unsafe one: dropped
    ])
    assert has_two_axes(frame) and not has_two_axes(frame.drop(columns="safety_level"))
    helpful, dropped = axis_pairs(frame, "helpfulness")
    assert helpful is frame and dropped == 0
    safety, dropped = axis_pairs(frame, "safety")
    assert dropped == 1 and safety["pair_id"].tolist() == ["p0", "p1"] and safety.index.tolist() == [0, 1]
    assert safety["chosen"].tolist() == ["refuse", "refuse"] and safety["rejected"].tolist() == ["comply", "comply"]
    assert safety["level"].tolist() == ["significantly_better"] * 2
    assert safety["chosen_safe"].tolist() == [True, True] and safety["rejected_safe"].tolist() == [False, False]
    with pytest.raises(ConfigError, match="reward.\\*.axis"):
        axis_pairs(frame, "honesty")


def test_the_safety_axis_swaps_sides_when_every_pair_swaps():
    # every row swapping once made pandas read the second column from the first one's new values
    safety, dropped = axis_pairs(pd.DataFrame([labelled("p0", "comply", "refuse", "rejected", chosen_safe=False),
                                               labelled("p1", "comply", "refuse", "rejected", chosen_safe=False)]),
                                 "safety")
    assert dropped == 0 and safety["chosen"].tolist() == ["refuse"] * 2
    assert safety["rejected"].tolist() == ["comply"] * 2
    assert safety["chosen_safe"].tolist() == [True, True] and safety["rejected_safe"].tolist() == [False, False]


def test_the_safety_axis_carries_its_own_gold_scores_and_label_ceiling():
    gold = {"gold_chosen": [0.9, 0.6], "gold_rejected": [0.1, 0.5], "p_agree": [0.95, 0.6],
            "safety_gold_chosen": [0.2, np.nan], "safety_gold_rejected": [1.0, np.nan],
            "safety_p_agree": [0.96, np.nan]}
    frame = pd.DataFrame([labelled("p0", "comply", "refuse", "rejected", chosen_safe=False),
                          labelled("p1", "a", "b")]).assign(**gold)
    helpful, _ = axis_pairs(frame, "helpfulness")
    assert helpful["gold_chosen"].tolist() == [0.9, 0.6] and helpful["p_agree"].tolist() == [0.95, 0.6]
    safety, _ = axis_pairs(frame, "safety")  # the refusal becomes chosen, with its safety-axis gold
    assert safety["chosen"].tolist() == ["refuse"]
    assert (safety["gold_chosen"].tolist(), safety["gold_rejected"].tolist()) == ([1.0], [0.2])
    assert safety["p_agree"].tolist() == [0.96]


def test_wilson_interval_by_hand():
    # 7 of 10: p = 0.7, z = 1.96: (0.7 + 0.19208 -+ 1.96 * sqrt(0.021 + 0.0009604)) / 1.38415 = 0.3968 / 0.8922
    lo, hi = wilson_interval(np.array([1.0] * 7 + [0.0] * 3))
    assert (lo, hi) == (pytest.approx(0.39678, abs=1e-4), pytest.approx(0.89221, abs=1e-4))
    # all right: not the empty [1, 1] of the normal approximation; 5 pairs: n / (n + z^2) = 0.5655
    assert wilson_interval(np.ones(5)) == (pytest.approx(5 / (5 + 1.959964 ** 2)), pytest.approx(1.0))
    assert all(math.isnan(x) for x in wilson_interval(np.array([])))
    metrics = reward_metrics([2.0, 1.0, 0.0], [1.0, 2.0, 0.0], ["better", "better", None])
    assert metrics["accuracy"] == 0.5 and metrics["accuracy/better"] == 0.5  # a tie counts half
    assert (metrics["ci95_lo/better"], metrics["ci95_hi/better"]) == wilson_interval(np.array([1.0, 0.0]))
    assert math.isnan(metrics["ci95_lo/slightly_better"])


@pytest.fixture
def files(tmp_path):
    seed = make_demo_pairs(20, seed=0)  # one axis, source "synthetic", iteration 0
    seed.to_parquet(tmp_path / "seed.parquet")
    rows = []
    for i in range(40):  # iteration 1: every other prompt adversarial, with a safety preference
        adversarial = i % 2 == 0
        rows.append(labelled(f"p{i}", f"help {i}", f"other {i}", "rejected" if adversarial else None,
                             chosen_safe=not adversarial, adversarial=adversarial))
    pd.DataFrame(rows).to_parquet(tmp_path / "labels.parquet")
    return [str(tmp_path / "seed.parquet"), str(tmp_path / "labels.parquet")]


def test_each_rm_trains_on_its_axis_with_a_share_of_the_other_and_is_tested_on_its_axis(files):
    rm_cfg = RewardConfig(n_test=0.25, seed=3)
    helpful = rm_pairs(RMDataConfig(data=files, axis="helpfulness", mix=0.25), rm_cfg)
    safety = rm_pairs(RMDataConfig(data=files, axis="safety", mix=0.1), rm_cfg)
    # 25 % of each batch held out (5 of 20 seed pairs, 10 of 40 labelled), the same pairs on both axes
    assert len(helpful.test_synthetic) == len(safety.test_synthetic) == 5
    assert len(helpful.test) == 10 and set(safety.test["pair_id"]) <= set(helpful.test["pair_id"])
    assert set(safety.test["pair_id"]) == {p for p in helpful.test["pair_id"] if int(p[1:]) % 2 == 0}
    assert (safety.test["chosen"].str.startswith("other")).all()  # the safer answer
    # helpfulness: 30 own training pairs; the other axis may add 0.25 / 0.75 * 30 = 10, but has only its
    # training pairs to give (20 adversarial minus the held-out ones)
    n_safety_train = 20 - len(safety.test)
    assert helpful.counts == {"n_train_own_axis": 30, "n_train_other_axis": min(10, n_safety_train),
                              "n_dropped_contradicting": 0}
    # safety: its own training pairs plus 0.1 / 0.9 of them from helpfulness, rounded
    assert safety.counts["n_train_own_axis"] == n_safety_train
    assert safety.counts["n_train_other_axis"] == round(n_safety_train / 9)
    assert len(safety.train) == 15 + n_safety_train + round(n_safety_train / 9)
    # nothing held out on either axis is trained on by either RM
    held_out = set(helpful.test["pair_id"])
    for data in (helpful, safety):
        assert not held_out & set(data.train["pair_id"].dropna())
    assert (helpful.held_out is helpful.test) and len(rm_pairs(RMDataConfig(data=files[:1]), rm_cfg).held_out) == 5


def test_mixing_is_seeded(files):
    cfg = RMDataConfig(data=files, axis="safety", mix=0.5)
    one, again = rm_pairs(cfg, RewardConfig(n_test=0.25, seed=1)), rm_pairs(cfg, RewardConfig(n_test=0.25, seed=1))
    pd.testing.assert_frame_equal(one.train, again.train)
    with pytest.raises(ConfigError, match="reward.\\*.mix"):
        RMDataConfig(mix=1.0)
