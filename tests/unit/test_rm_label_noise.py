"""``benchmarks/rm_label_noise.relabel``: the campaign's pairs labelled again from their gold scores, as the
simulated rater would at another noise. By hand on three pairs."""

import pandas as pd
import pytest

from benchmarks.rm_label_noise import relabel
from rlhf.core.rater.levels import RaterConfig

PROMPT = [{"role": "user", "content": "Hi"}]


def pairs() -> pd.DataFrame:
    # gold gaps: 0.6 with chosen the worse answer, 0.1 the right way round, and a tie
    return pd.DataFrame({"prompt": [PROMPT] * 3, "chosen": ["a", "c", "e"], "rejected": ["b", "d", "f"],
                         "iteration": [1, 1, 2], "gold_chosen": [0.2, 0.5, 0.3], "gold_rejected": [0.8, 0.4, 0.3]})


def test_a_perfect_rater_picks_the_gold_winner_with_the_level_of_its_gap():
    out = relabel(pairs(), RaterConfig(noise=0.0), seed=0)
    assert list(out["chosen"][:2]) == ["b", "c"] and list(out["rejected"][:2]) == ["a", "d"]
    assert list(out["level"]) == ["significantly_better", "slightly_better", "negligibly_better"]
    assert list(out["gold_chosen"][:2]) == [0.8, 0.5]
    assert list(out["p_agree"]) == [1.0, 1.0, 0.5]  # a gold tie is a coin flip
    assert list(out["iteration"]) == [1, 1, 2]


def test_p_agree_is_one_minus_p_flip_and_the_flips_follow_it():
    rater = RaterConfig(noise=0.5, noise_scale=0.25)
    out = relabel(pairs(), rater, seed=0)
    # 1 - 0.5 exp(-0.6 / 0.25) and 1 - 0.5 exp(-0.1 / 0.25), by hand: 0.95464, 0.66484
    assert out["p_agree"][:2].tolist() == pytest.approx([0.954641, 0.664840], abs=1e-6)
    many = pd.concat([pairs().iloc[[1]]] * 2000, ignore_index=True)
    kept = (relabel(many, rater, seed=3)["chosen"] == "c").mean()
    assert kept == pytest.approx(0.66484, abs=0.03)  # one standard error of 2000 draws: 0.0106
